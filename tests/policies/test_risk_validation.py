"""Validation against closed-form answers and by simulation (tolerances from Monte Carlo error).

Reference model: Brownian motion with drift, x(t) = x0 + mu t + sigma W(t), upper bound b; its
first-passage probability over [0, H] is known exactly (see ``risk_fixtures``). The rollouts
are built in numpy with the simulator contract's per-interval statistics.

A tolerance of 4 standard errors has a false-failure probability of 6e-5 per check (normal
tails), so these tests fail for bugs, not for bad luck.
"""

from __future__ import annotations

import numpy as np
import pytest
from risk_fixtures import bm_passage_probability, bm_paths, bm_rollout, rollout_from_paths
from scipy import stats

from medsim.policies.risk import patient_events, risk_report
from medsim.policies.risk.curve import risk_curves
from medsim.policies.risk.epistemic import epistemic_split
from medsim.policies.risk.intervals import clopper_pearson, mean_bounds
from medsim.policies.risk.margin import tightening_margins
from medsim.policies.risk.sequential import first_crossing
from medsim.policies.spec import parse_inline_spec
from medsim.simulate.types import Bound

Z = 4.0  # standard errors allowed (two-sided false-failure probability 6.3e-5)
X0, B, MU, SIGMA, H = 0.0, 1.0, 0.5, 1.0, 1.0
EXACT = bm_passage_probability(X0, B, MU, SIGMA, H)  # 0.4901
SPEC = parse_inline_spec("x<=1;horizon=1h;epsilon=0.05;delta=0.05")


@pytest.fixture(scope="module")
def fine_and_coarse():
    """The same 20000 paths on a fine grid (512 steps) and subsampled to a coarse one (16 steps)."""
    rng = np.random.default_rng(11)
    t, x = bm_paths(20000, 512, H, x0=X0, mu=MU, sigma=SIGMA, rng=rng)
    kw = dict(sigma=SIGMA, bounds=(Bound("x", B),), n_intervals=4, seed=11)
    fine = rollout_from_paths(t, x, **kw)
    coarse = rollout_from_paths(t[::32], x[:, ::32], **kw)
    return patient_events(fine, SPEC), patient_events(coarse, SPEC)


def test_bridge_estimator_is_unbiased_within_its_error(fine_and_coarse):
    _, coarse = fine_and_coarse
    p = coarse.joint_bridge
    se = p.std(ddof=1) / np.sqrt(p.size)
    assert abs(p.mean() - EXACT) < Z * se


def test_bridge_at_coarse_step_agrees_with_fine_step(fine_and_coarse):
    fine, coarse = fine_and_coarse
    # Same Brownian paths (common random numbers): the paired difference has a small SE.
    d = coarse.joint_bridge - fine.joint_bridge
    assert abs(d.mean()) < Z * d.std(ddof=1) / np.sqrt(d.size)
    assert abs(fine.joint_bridge.mean() - EXACT) < Z * fine.joint_bridge.std(ddof=1) / np.sqrt(d.size)


def test_grid_estimate_at_coarse_step_is_biased_low(fine_and_coarse):
    _, coarse = fine_and_coarse
    grid = coarse.joint_grid.mean()
    se = np.sqrt(grid * (1 - grid) / coarse.n_patients)
    # 16 grid points miss about a fifth of the crossings: the bias is tens of standard errors.
    assert EXACT - grid > 10 * se
    assert EXACT - grid > 0.05
    # the bridge variance is below the 0/1 indicator's (Rao-Blackwellisation)
    assert coarse.joint_bridge.var() < coarse.joint_grid.var()


def test_bridge_curve_matches_first_passage_distribution():
    r = bm_rollout(n=20000, n_intervals=4, substeps=4, x0=X0, mu=MU, sigma=SIGMA, seed=12)
    curve, _ = risk_curves(r, SPEC, n_points=5, level=0.95, seed=12)  # grid = interval ends
    for t, est in zip(curve.time[1:], curve.bridge[1:], strict=True):
        assert abs(est.value - bm_passage_probability(X0, B, MU, SIGMA, t)) < Z * est.se


def test_checks_at_measurements_would_pass_an_unsafe_policy():
    # Measurements every half hour, bound 1.5: a check at the measurements sees ~7% of patients
    # outside (CP upper bound ~7.9%) and would certify P <= 10%, but the continuous-time risk is
    # 13.4% (one-sided lower bound ~12.4%, ~6 SE above 10%) and the verdict fails; ~47% is between.
    r = bm_rollout(n=4000, n_intervals=2, substeps=32, x0=0.0, sigma=1.0, bounds=(Bound("x", 1.5),), seed=3)
    spec = parse_inline_spec("x<=1.5;horizon=1h;epsilon=0.1;delta=0.05")
    p = risk_report([r], spec).policies[0]
    assert p.joint.seen.upper < spec.epsilon
    assert p.verdict.decision == "FAIL"
    assert p.joint.share_between.value > 0.3


def test_safe_policy_passes_and_unsafe_policy_fails():
    kw = dict(n=4000, n_intervals=4, substeps=8, sigma=SIGMA, draw=np.repeat(np.arange(400), 10), seed=13)
    safe = bm_rollout(x0=-2.0, policy="safe", **kw)  # exact risk 2 Phi(-3) = 0.27%
    unsafe = bm_rollout(x0=0.0, policy="unsafe", **kw)  # exact risk 2 Phi(-1) = 31.7%
    rep = risk_report([safe, unsafe], SPEC)
    assert rep.policy("safe").verdict.decision == "PASS"
    assert rep.policy("safe").verdict.statement.startswith("PASS: P(violation) <= 5% with 95% confidence")
    assert rep.policy("unsafe").verdict.decision == "FAIL"
    assert rep.policy("unsafe").sequential.decision == "FAIL"
    assert rep.policy("unsafe").sequential.stopped_at < rep.policy("unsafe").sequential.n_units


def test_undecided_verdict_estimates_the_patients_needed():
    # Exact risk 2 Phi(-1.96) = 5.0% = epsilon. With delta = 0.001 the one-sided bounds sit
    # 3.1 SE from the estimate, so the verdict is UNDECIDED with probability ~0.998.
    r = bm_rollout(n=2000, n_intervals=4, substeps=8, x0=0.0, sigma=1.0, bounds=(Bound("x", 1.96),), seed=14)
    v = risk_report([r], parse_inline_spec("x<=1.96;horizon=1h;epsilon=0.05;delta=0.001")).policies[0].verdict
    assert v.decision == "UNDECIDED"
    assert v.additional_patients is not None and v.additional_patients > 1000
    assert "more patients needed" in v.statement


def test_clopper_pearson_coverage_by_simulation():
    # 20000 binomial samples: MC SE of a coverage near 0.95 is 0.0016; CP is exact, i.e. >= 0.95.
    rng = np.random.default_rng(15)
    for p, n in [(0.03, 200), (0.2, 50)]:
        k = rng.binomial(n, p, size=20000)
        lo, hi = clopper_pearson(k, n, 0.95)
        coverage = np.mean((lo <= p) & (p <= hi))
        assert coverage >= 0.95 - 3 * 0.0016


def test_cluster_interval_keeps_coverage_when_draws_are_shared():
    # 200 replicates of 1000 patients (50 draws x 20), drift varying by draw (epistemic).
    # Truth: E over mu ~ N(0, 0.7^2) of the first-passage probability (Gauss-Hermite, 40 nodes).
    reps, draws, per = 200, 50, 20
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    truth = sum(w * bm_passage_probability(0.0, 1.0, 0.7 * z, 1.0, 1.0) for z, w in zip(nodes, weights, strict=True))
    truth /= np.sqrt(2 * np.pi)
    rng = np.random.default_rng(16)
    label = np.repeat(np.arange(reps * draws), per)
    mu = 0.7 * rng.standard_normal(reps * draws)[label]
    t, x = bm_paths(label.size, 8, 1.0, x0=0.0, mu=mu, sigma=1.0, rng=rng)
    r = rollout_from_paths(t, x, sigma=1.0, bounds=(Bound("x", 1.0),), n_intervals=2, draw=label)
    p = patient_events(r, SPEC).joint_bridge.reshape(reps, draws * per)
    cluster = np.repeat(np.arange(draws), per)
    covered_cluster = covered_naive = 0
    for row in p:
        _, lo, hi = mean_bounds(row, cluster, level=0.95, unit_interval=True)
        covered_cluster += lo <= truth <= hi
        _, lo, hi = mean_bounds(row, None, level=0.95, unit_interval=True)
        covered_naive += lo <= truth <= hi
    # 200 replicates: MC SE of a 0.95 coverage is 0.015 -> allow 3 SE; the naive interval,
    # ignoring shared draws, is too narrow and must cover visibly less.
    assert covered_cluster / reps >= 0.95 - 3 * 0.015
    assert covered_naive < covered_cluster - 10


def test_sequential_test_false_alarm_rate():
    # 2000 runs of 1000 observations exactly at the boundary mean epsilon (the worst case for
    # both nulls). Ville: each wrong decision has probability <= delta; MC SE at 0.05 is 0.0049.
    eps, delta = 0.05, 0.05
    rng = np.random.default_rng(17)
    bernoulli = (rng.random((2000, 1000)) < eps).astype(float)
    decision, _ = first_crossing(bernoulli, epsilon=eps, delta=delta)
    assert np.mean(decision == 1) <= delta + 3 * 0.0049
    assert np.mean(decision == -1) <= delta + 3 * 0.0049
    graded = rng.beta(0.5, 0.5 * (1 - eps) / eps, size=(2000, 1000))  # values in [0,1], mean eps
    decision, _ = first_crossing(graded, epsilon=eps, delta=delta)
    assert np.mean(decision == 1) <= delta + 3 * 0.0049


def test_sequential_test_stops_early_when_clear():
    rng = np.random.default_rng(18)
    decision, stop = first_crossing((rng.random((500, 2000)) < 0.01).astype(float), epsilon=0.05, delta=0.05)
    assert np.mean(decision == 1) > 0.95
    assert np.median(stop) < 300  # the zero-event bound alone needs ~60; far below the 2000 available
    decision, stop = first_crossing((rng.random((500, 2000)) < 0.15).astype(float), epsilon=0.05, delta=0.05)
    assert np.mean(decision == -1) > 0.95


def test_epistemic_decomposition_recovers_known_components():
    # 400 draws x 10 patients; draw risk mu_d ~ Beta(2, 18) (Var = 0.00429), patient outcome
    # Bernoulli(mu_d). The noise-corrected epistemic variance must match within 4 bootstrap SE;
    # the raw variance of per-draw means over-states it by E[mu (1 - mu)] / 10 = 0.0086.
    rng = np.random.default_rng(19)
    a, b = 2.0, 18.0
    var_true = a * b / ((a + b) ** 2 * (a + b + 1))
    mu = rng.beta(a, b, size=400)
    draw = np.repeat(np.arange(400), 10)
    y = (rng.random(4000) < mu[draw]).astype(float)
    split = epistemic_split(y, draw, epsilon=0.1, level=0.95, seed=0)
    est = split.epistemic_variance
    assert abs(est.value - var_true) < Z * est.se
    raw = np.var(y.reshape(400, 10).mean(axis=1), ddof=1)
    assert raw - var_true > Z * est.se
    mean = a / (a + b)
    assert split.total_variance.value == pytest.approx(mean * (1 - mean), abs=Z * np.sqrt(mean * (1 - mean) / 4000))


def test_tightening_margin_matches_brownian_maximum():
    # Excursion of a driftless Brownian motion over an interval D: P(max > m) = 2 Phi(-m / (sigma sqrt D)).
    # On a 64-step grid the discrete maximum is lower by 0.5826 sigma sqrt(dt) to first order
    # (Broadie, Glasserman & Kou 1997, Math. Finance 7:325); the order-statistic interval
    # (one-sided 95% at each end) must contain that value.
    r = bm_rollout(n=4000, n_intervals=8, substeps=64, sigma=1.0, bounds=(Bound("x", 100.0),), seed=20)
    m = tightening_margins(r, parse_inline_spec("x<=100;horizon=1h;delta=0.05"), seed=20)[0].margin
    d = 1.0 / 8
    expected = np.sqrt(d) * (stats.norm.ppf(1 - 0.05 / 2) - 0.5826 / np.sqrt(64))
    assert m.lower <= expected <= m.upper
