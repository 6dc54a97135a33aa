"""Risk estimators on small hand-built rollouts: each number checked against its definition."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from risk_fixtures import bm_rollout
from scipy import stats

from medsim.policies.result import RolloutResult
from medsim.policies.risk import RiskReport, SpecMismatchError, patient_events, risk_report
from medsim.policies.risk.curve import risk_curves
from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.first_violation import first_violation
from medsim.policies.risk.intervals import clopper_pearson, quantile, quantile_ranks, standard_errors, wilson
from medsim.policies.risk.margin import tightening_margins
from medsim.policies.risk.probability import violation_probabilities
from medsim.policies.risk.support import support_flag
from medsim.policies.spec import parse_inline_spec
from medsim.simulate.types import Bound

UP = Bound("x", 1.0, "upper")


def tiny_rollout(**overrides) -> RolloutResult:
    """Three patients, two 1-h intervals, bound x <= 1.

    patient 0: stays inside; bridge log-survival -0.1 and -0.2 per interval
    patient 1: outside at t = 1 (end of interval 0, a measured interaction)
    patient 2: a grid point outside inside interval 0, both interaction values inside
    """
    ls = np.array([[[-0.1], [-0.2]], [[-np.inf], [-np.inf]], [[-np.inf], [-0.05]]])
    fields = dict(
        policy="tiny",
        bounds=(UP,),
        horizon=2.0,
        time_unit="h",
        draw=np.array([0, 0, 1]),
        subject=np.array(["", "", ""]),
        t_start=np.array([[0.0, 1.0]] * 3),
        t_end=np.array([[1.0, 2.0]] * 3),
        mask=np.ones((3, 2), bool),
        measured={"x": np.array([[0.0, 0.5], [0.0, 1.3], [0.1, 0.6]])},
        true_start={"x": np.array([[0.0, 0.5], [0.0, 1.2], [0.1, 0.6]])},
        obs_min={"x": np.array([[-0.2, 0.3], [0.0, 0.9], [0.1, 0.5]])},
        obs_max={"x": np.array([[0.6, 0.8], [1.2, 1.4], [1.5, 0.7]])},
        log_survival=ls,
        grid_violation=np.array([[[False], [False]], [[True], [True]], [[True], [False]]]),
        end_violation=np.array([[[False], [False]], [[True], [True]], [[False], [False]]]),
        time_outside=np.array([[[0.0], [0.0]], [[0.3], [1.0]], [[0.2], [0.0]]]),
        first_outside=np.array([[[np.inf], [np.inf]], [[0.8], [1.0]], [[0.4], [np.inf]]]),
        depth=np.array([[[0.0], [0.0]], [[0.2], [0.4]], [[0.5], [0.0]]]),
        out_of_support=np.array([[0.0, 0.5], [0.0, 0.0], [1.0, 1.0]]),
        seed=3,
    )
    fields.update(overrides)
    return RolloutResult(**fields)


SPEC = parse_inline_spec("x<=1;horizon=2h;epsilon=0.05;delta=0.05")


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (7, 40), (40, 40), (3, 1000)])
def test_binomial_intervals_match_scipy(k, n):
    # Independent implementation: scipy.stats.binomtest's exact (Clopper-Pearson) and Wilson
    # intervals; the tolerance is floating-point round-off of the beta quantiles.
    ref = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    lo, hi = clopper_pearson(k, n, 0.95)
    assert (float(lo), float(hi)) == pytest.approx((ref.low, ref.high), abs=1e-10)
    ref = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    lo, hi = wilson(k, n, 0.95)
    assert (float(lo), float(hi)) == pytest.approx((ref.low, ref.high), abs=1e-10)


def test_cluster_se_equals_se_of_cluster_means_for_equal_clusters():
    # Algebra: with G clusters of equal size m, the cluster-robust SE of the grand mean is exactly
    # the SE of the G cluster means; with singleton clusters it is exactly the naive SE.
    rng = np.random.default_rng(0)
    g, m = 30, 7
    x = rng.normal(size=(g, 1)) + rng.normal(size=(g, m))
    se = standard_errors(x.ravel(), np.repeat(np.arange(g), m))
    means = x.mean(axis=1)
    assert se.cluster == pytest.approx(means.std(ddof=1) / np.sqrt(g), rel=1e-12)
    assert se.design_effect > 2.0  # strong shared component: clusters carry the uncertainty
    single = standard_errors(x.ravel(), np.full(g * m, -1))
    assert single.cluster == pytest.approx(single.naive, rel=1e-12)


def test_patient_events_split_seen_and_between():
    ev = patient_events(tiny_rollout(), SPEC)
    assert ev.seen[:, 0].tolist() == [False, True, False]
    assert ev.grid[:, 0].tolist() == [False, True, True]
    assert ev.between_grid[:, 0].tolist() == [False, False, True]
    assert ev.bridge[:, 0] == pytest.approx([-np.expm1(-0.3), 1.0, 1.0])
    # bridge = seen + between, patient by patient
    assert ev.bridge[:, 0] == pytest.approx(ev.seen[:, 0] + ev.between_bridge[:, 0])
    assert ev.detected[:, 0].tolist() == [False, True, False]


def test_unmeasured_interaction_is_not_a_checkpoint():
    # Patient 1's only outside interaction value is at t = 1; without a measurement there,
    # and with the horizon end inside, a check at measurement times does not see it.
    r = tiny_rollout()
    measured = r.measured["x"].copy()
    measured[1, 1] = np.nan
    end = r.end_violation.copy()
    end[1, 1, 0] = False
    ev = patient_events(tiny_rollout(measured={"x": measured}, end_violation=end), SPEC)
    assert ev.seen[1, 0] == np.False_ and ev.grid[1, 0] == np.True_


def test_joint_event_uses_tightest_bound_then_union():
    b1, b2, lo = Bound("x", 1.0), Bound("x", 2.0), Bound("x", -1.0, "lower")
    r = bm_rollout(n=400, n_intervals=2, substeps=8, sigma=0.6, bounds=(b1, b2, lo), seed=1)
    nested = patient_events(r, parse_inline_spec("x<=1,x<=2;horizon=1h"))
    # crossing x = 2 implies crossing x = 1: the joint event is the x <= 1 event
    assert nested.joint_bridge == pytest.approx(nested.bridge[:, 0])
    window = patient_events(r, parse_inline_spec("x<=1,x>=-1;horizon=1h"))
    union = np.minimum(1.0, window.bridge.sum(axis=1))
    assert window.joint_bridge == pytest.approx(np.where(window.joint_grid, 1.0, union))
    assert np.all(window.joint_bridge >= window.bridge.max(axis=1) - 1e-12)


def test_spec_mismatch_errors_name_what_differs():
    with pytest.raises(SpecMismatchError, match=r"bound 'x<=3' was not monitored .* it monitored \['x<=1'\]"):
        patient_events(tiny_rollout(), parse_inline_spec("x<=3;horizon=2h"))
    with pytest.raises(SpecMismatchError, match=r"horizon 5h = 5 h, but policy 'tiny' was simulated over 2 h"):
        risk_report([tiny_rollout()], parse_inline_spec("x<=1;horizon=5h"))


def test_kaplan_meier_quantiles_with_censoring():
    # Hand computation: events at 1, 2, 4; censored at 3 and 5.
    # S(1) = 4/5, S(2) = 4/5 * 3/4 = 0.6, S(4) = 0.6 * 1/2 = 0.3 -> F reaches 0.5 at t = 4.
    fv = first_violation("x", np.array([1.0, 2.0, np.inf, 4.0, np.inf]), np.array([9, 9, 3, 9, 5.0]), level=0.9, seed=0)
    assert fv.n_events == 3
    assert fv.km_quantiles["q10"].value == 1.0
    assert fv.km_quantiles["q25"].value == 2.0
    assert fv.km_quantiles["q50"].value == 4.0
    # Without censoring Kaplan-Meier is the empirical distribution function.
    t = np.random.default_rng(1).exponential(size=201)
    fv = first_violation("x", t, np.full(201, np.inf), level=0.9, seed=0)
    assert fv.km_quantiles["q50"].value == pytest.approx(np.quantile(t, 0.5, method="inverted_cdf"))
    assert fv.km_quantiles["q50"].lower <= fv.km_quantiles["q50"].value <= fv.km_quantiles["q50"].upper


def test_quantile_interval_ranks_cover():
    # Order-statistic interval: P(X_(l) <= median <= X_(u)) >= level for any continuous law.
    rng = np.random.default_rng(2)
    xs = np.sort(rng.standard_normal((20000, 25)), axis=1)
    lo, hi = quantile_ranks(25, 0.5, 0.9)
    coverage = np.mean((xs[:, lo - 1] <= 0.0) & (0.0 <= xs[:, hi - 1]))
    # 20000 replicates: MC SE of the coverage 0.0021; the exact coverage is >= 0.9.
    assert coverage >= 0.9 - 3 * 0.0021
    est = quantile(xs[0], 0.5, level=0.9, seed=None)
    assert (est.lower, est.upper) == (xs[0, lo - 1], xs[0, hi - 1])


def test_tightening_margin_and_support_on_tiny_rollout():
    m = tightening_margins(tiny_rollout(), SPEC, seed=0)[0]
    # excursions obs_max - true_start over the 6 intervals
    moves = np.array([0.6, 0.3, 1.2, 0.2, 1.4, 0.1])
    assert m.margin.value == pytest.approx(np.quantile(moves, 0.95, method="inverted_cdf"))
    assert m.median_interval == 1.0
    s = support_flag(tiny_rollout(), threshold=0.05, level=0.95, seed=0)
    # patient shares 0.25, 0, 1 -> mean 5/12; two of three patients affected
    assert s.share_of_time.value == pytest.approx(5 / 12)
    assert s.patients_affected.value == pytest.approx(2 / 3)
    assert s.flagged
    unknown = support_flag(tiny_rollout(out_of_support=None), level=0.95, seed=0)
    assert not unknown.checked and unknown.share_of_time is None and not unknown.flagged


def test_curve_is_monotone_and_ends_at_the_horizon_estimate():
    r = bm_rollout(n=3000, n_intervals=4, substeps=4, sigma=1.0, seed=4, draw=np.repeat(np.arange(300), 10))
    spec = parse_inline_spec("x<=1;horizon=1h")
    curve, _ = risk_curves(r, spec, n_points=9, level=0.95, seed=4)
    values = np.array([e.value for e in curve.bridge])
    assert np.all(np.diff(values) >= -1e-12) and values[0] == 0.0
    ev = patient_events(r, spec)
    assert values[-1] == pytest.approx(ev.joint_bridge.mean(), rel=1e-12)
    assert curve.grid[-1].value == pytest.approx(ev.joint_grid.mean(), rel=1e-12)


def test_paired_comparison_uses_common_random_numbers():
    kw = dict(n=2000, n_intervals=4, substeps=4, sigma=1.0, draw=np.repeat(np.arange(200), 10))
    a = bm_rollout(x0=0.0, policy="a", seed=5, **kw)
    b = bm_rollout(x0=-0.1, policy="b", seed=5, **kw)
    c = bm_rollout(x0=-0.1, policy="c", seed=6, **kw)
    rep = risk_report([a, b, c], parse_inline_spec("x<=1;horizon=1h"))
    ab, ac, _ = rep.comparisons
    assert ab.paired and not ac.paired
    # Same Brownian paths, start shifted by 0.1: per-patient risks are strongly correlated and the
    # SE ratio is about 0.2 (0.19-0.21 over seeds 1-5); 0.4 leaves a wide margin.
    assert ab.se_paired < 0.4 * ab.se_unpaired
    assert ab.risk_difference.value > 0
    assert np.isnan(ac.se_paired)


def test_report_json_round_trip_keeps_types_and_numbers():
    r = bm_rollout(n=600, n_intervals=3, substeps=4, seed=7, draw=np.repeat(np.arange(60), 10))
    rep = risk_report([r], parse_inline_spec("x<=1;horizon=1h"), provenance={"data_hash": "abc"})
    text = rep.to_json()
    back = RiskReport.from_json(text)
    assert back.to_json() == text
    p = back.policies[0]
    assert isinstance(p.joint.bridge, Estimate) and isinstance(p.curve.bridge, tuple)
    assert isinstance(back.spec.bounds[0], Bound)
    assert (
        p.first_violation[0].km_quantiles["q50"].value == rep.policies[0].first_violation[0].km_quantiles["q50"].value
    )
    assert back.provenance.data_hash == "abc" and "numpy" in back.provenance.versions
    assert '"inf"' in text or "Infinity" not in text  # strict JSON: no bare Infinity/NaN


def test_failed_fit_gives_a_loud_warning_first():
    r = bm_rollout(n=100, n_intervals=2, substeps=2, seed=8)
    fit = {"ok": False, "problems": ["R-hat 1.08 for CL"], "max_rhat": 1.08}
    rep = risk_report([r], parse_inline_spec("x<=1;horizon=1h"), provenance={"fit_diagnostics": fit})
    assert rep.warnings[0].startswith("FIT DIAGNOSTICS FAILED") and "R-hat 1.08 for CL" in rep.warnings[0]
    assert rep.provenance.fit.summary["max_rhat"] == 1.08


def test_undefined_bridge_counts_as_crossing_and_warns():
    ls = tiny_rollout().log_survival.copy()
    ls[0, 0, 0] = np.nan  # e.g. a log-scale observable at exactly 0
    r = tiny_rollout(log_survival=ls)
    ev = patient_events(r, SPEC)
    assert ev.undefined_bridge == 1 and ev.bridge[0, 0] == 1.0
    p = risk_report([r], SPEC).policies[0]
    assert any("undefined bridge crossing probability" in w for w in p.warnings)
    curve = p.curve.bridge
    assert all(np.isfinite(e.value) for e in curve)


def test_same_rollout_gives_the_same_report():
    r = bm_rollout(n=500, n_intervals=2, substeps=4, seed=9, draw=np.repeat(np.arange(50), 10))
    spec = parse_inline_spec("x<=1;horizon=1h")
    a, b = (risk_report([r], spec).to_dict() for _ in range(2))
    for d in (a, b):
        d["provenance"].pop("created")
    assert a == b  # bootstrap and every other resampling is seeded from the rollout's seed


def test_monitoring_window_ignores_intervals_before_it():
    """A path started outside the bound violates at t = 0; with monitoring from the second
    interval on, only what happens after counts (and the estimate can only go down)."""
    from medsim.policies.risk.report import monitored

    result = bm_rollout(n=200, n_intervals=4, substeps=8, x0=1.5, mu=-8.0, sigma=0.2, seed=3)
    spec = parse_inline_spec("x<=1;horizon=1;from=0.25")
    full = risk_report([result], replace(spec, monitor_from=0.0)).policies[0].joint.bridge.value
    later = risk_report([result], spec).policies[0].joint.bridge.value
    assert full == 1.0 and later < 0.05
    assert monitored(result, 0.25).mask[:, 0].sum() == 0


def test_alarms_split_into_true_and_false():
    """A noisy measurement outside the bound is a true alarm when the noise-free value at that
    time is outside too; patient 2's measurement 1.05 of a true 0.6 is a false alarm only."""
    r = tiny_rollout()
    measured = r.measured["x"].copy()
    measured[2, 1] = 1.05
    ev = patient_events(replace(r, measured={"x": measured}), SPEC)
    assert ev.detected[:, 0].tolist() == [False, True, True]
    assert ev.detected_true[:, 0].tolist() == [False, True, False]
    joint, _ = violation_probabilities(ev, level=0.95, seed=0)
    assert joint.detected.value == pytest.approx(2 / 3)
    assert joint.detected_true.value == pytest.approx(1 / 3) and joint.false_alarm.value == pytest.approx(1 / 3)
