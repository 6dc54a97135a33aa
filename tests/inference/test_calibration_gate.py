"""The calibration gate: its rule on constructed forecasts, the held-out split, and the held-out check."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from inference_synthetic import oral_cohort

import medsim.models as registry
from medsim.inference.checks.calibration_gate import heldout_check, interval_figures, misses, unsafe_side_figures
from medsim.inference.checks.heldout import heldout_mask, split_after, split_last, window_mask
from medsim.inference.checks.predictive import PredictiveError
from medsim.models.gate import CalibrationGate, coverage_tolerance, exact_coverage_range, judge
from medsim.population import PosteriorDraws
from medsim.simulate.types import Bound


def _forecast(kind: str, *, n_subjects: int = 30, per_subject: int = 8, r: int = 400, seed: int = 0):
    """Held-out measurements ``y = mu_s + e`` (subject means spread with SD 3, noise SD 1) and
    predictive draws of one kind: ``calibrated`` (the true predictive N(mu_s, 1)),
    ``overconfident`` (N(mu_s, 0.3^2)), ``climatological`` (N(0, 1 + 3^2) for everyone:
    calibrated, but no sharper than the cohort's spread)."""
    rng = np.random.default_rng(seed)
    mu = 3.0 * rng.standard_normal(n_subjects)
    subject = np.repeat(np.arange(n_subjects), per_subject)
    y = mu[subject] + rng.standard_normal(subject.size)
    z = rng.standard_normal((r, subject.size))
    draws = {
        "calibrated": mu[subject] + z,
        "overconfident": mu[subject] + 0.3 * z,
        "climatological": np.sqrt(10.0) * z,
    }[kind]
    return interval_figures(draws, y, subject), subject.size, n_subjects


def _status(gate: CalibrationGate) -> dict[str, str]:
    return {c.name: c.status for c in gate.criteria}


def test_a_calibrated_sharp_forecast_passes():
    figures, n, s = _forecast("calibrated")
    gate = judge(figures, n_points=n, n_subjects=s)
    assert gate.status == "passed", gate.summary()
    assert _status(gate)["brier_skill"] == "not_checked"  # no bounds, no event forecasts: said, not passed


def test_an_overconfident_forecast_fails_on_coverage():
    figures, n, s = _forecast("overconfident")
    gate = judge(figures, n_points=n, n_subjects=s)
    assert gate.status == "failed"
    assert _status(gate)["coverage_0.9"] == "failed" and _status(gate)["relative_width_0.9"] == "passed"
    assert gate.summary().startswith("MISCALIBRATED on 240 held-out measurements of 30 subjects: 90% intervals")


def test_a_calibrated_but_useless_forecast_fails_on_sharpness():
    # the case of a fit whose 90 % intervals covered everything at the width of the cohort's spread
    figures, n, s = _forecast("climatological")
    gate = judge(figures, n_points=n, n_subjects=s)
    status = _status(gate)
    assert status["coverage_0.9"] == "passed" and status["relative_width_0.9"] == "failed", gate.summary()
    assert gate.status == "failed" and figures["relative_width_0.9"] > 0.9
    assert "x the held-out 5-95% range" in gate.summary()


def test_too_little_data_is_not_checked_never_passed():
    figures, n, s = _forecast("calibrated", n_subjects=3, per_subject=3)
    gate = judge(figures, n_points=n, n_subjects=s)
    assert gate.status == "not_checked" and set(_status(gate).values()) == {"not_checked"}
    assert judge({}, n_points=0, n_subjects=0).status == "not_checked"
    assert CalibrationGate.unchecked("never run").summary().startswith("CALIBRATION NOT CHECKED")


def test_coverage_tolerance_is_the_binomial_half_width_or_the_practical_band():
    # z_0.995 sqrt(0.9 x 0.1 / 100) = 2.576 x 0.03 = 0.077; at n = 10000 the 0.05 band applies
    assert coverage_tolerance(0.9, 100) == pytest.approx((0.0773, 0.0773), abs=1e-4)
    assert coverage_tolerance(0.9, 10_000)[1] == 0.05
    # misses clustered within subjects widen it by the square root of the design effect
    assert coverage_tolerance(0.9, 100, 4.0)[0] == pytest.approx(2 * 0.0773, abs=1e-4)


def test_the_exact_range_agrees_with_the_binomial_counts():
    """At integer counts the continued CDF is the binomial one: counts beyond the range have tail
    probability below 0.005, counts inside it above (scipy's binomial as the reference)."""
    from scipy.stats import binom

    for level in (0.5, 0.8, 0.9, 0.95):
        for n in (1, 2, 6, 13, 27, 60):
            lo, hi = exact_coverage_range(level, n)
            for k in range(n + 1):
                below, above = binom.cdf(k, n, level), binom.sf(k - 1, n, level)
                if k / n < lo:
                    assert below < 0.005, (level, n, k)
                if k / n > hi:
                    assert above < 0.005, (level, n, k)
                if below < 0.005 and k + 1 <= n and binom.cdf(k + 1, n, level) < 0.005:
                    assert k / n < lo, (level, n, k)  # a count well inside the lower tail is outside the range
    # the design effect divides the count: 24 points at design effect 4 are 6 effective points
    assert exact_coverage_range(0.9, 24, 4.0) == pytest.approx(exact_coverage_range(0.9, 6))


def test_few_points_cannot_confirm_a_coverage_but_can_refute_one():
    """With too few points for the tolerance (binomial term > 0.15) the coverage is not checked,
    unless it lies outside the exact binomial range of those points."""
    figures, n, s = _forecast("calibrated", n_subjects=3, per_subject=3)
    one = {**figures, "coverage_0.9": 0.0, "design_effect_0.9": 1.0}
    # one point missed by a 90 % interval happens one time in ten: no refutation
    assert _status(judge(one, n_points=1, n_subjects=1))["coverage_0.9"] == "not_checked"
    # 9 points of which 2 were covered: P(X <= 2 | 9, 0.9) = 4e-6, refuted
    gross = {**figures, "coverage_0.9": 2 / 9, "design_effect_0.9": 1.0}
    gate = judge(gross, n_points=9, n_subjects=3)
    crit = {c.name: c for c in gate.criteria}["coverage_0.9"]
    assert crit.status == "failed" and gate.status == "failed" and "exact binomial range" in crit.why
    assert crit.lower == pytest.approx(exact_coverage_range(0.9, 9)[0])
    # the same shortfall over 3 subjects whose misses cluster completely (design effect 3) is 3 effective points
    clustered = {**gross, "design_effect_0.9": 3.0}
    assert _status(judge(clustered, n_points=9, n_subjects=3))["coverage_0.9"] == "not_checked"
    # 50 % intervals covering 10 of 10 points: P = 0.5^10 = 0.001, too wide, refuted
    wide = {**figures, "coverage_0.5": 1.0, "design_effect_0.5": 1.0}
    assert _status(judge(wide, n_points=10, n_subjects=10))["coverage_0.5"] == "failed"
    # an overconfident forecast on few subjects is refuted, not merely unjudged
    over, n, s = _forecast("overconfident", n_subjects=3, per_subject=4)
    assert over["coverage_0.9"] < 0.5
    assert judge(over, n_points=n, n_subjects=s).status == "failed"


def test_events_need_both_outcomes_to_be_judged():
    figures, n, s = _forecast("calibrated")
    some = {**figures, "n_events": 1.0, "n_no_events": 29.0, "brier_skill": 0.4}
    assert _status(judge(some, n_points=n, n_subjects=s))["brier_skill"] == "not_checked"
    worse = {**figures, "n_events": 8.0, "n_no_events": 22.0, "brier_skill": -0.2}
    gate = judge(worse, n_points=n, n_subjects=s)
    assert gate.status == "failed" and _status(gate)["brier_skill"] == "failed"


def test_a_forecast_that_misses_the_excursions_fails_where_the_risk_is_decided():
    """Calibrated in the bulk, but the points beyond the safe limit fall below their intervals."""
    figures, n, s = _forecast("calibrated")
    rng = np.random.default_rng(1)
    subject = np.repeat(np.arange(30), 8)
    # 240 points outside the safe range, spread over 30 subjects; truth N(-3, 1) against draws N(-1, 1):
    # 90 % intervals [-2.64, 0.64] cover P(y >= -2.64) = 0.36 of them, every miss below
    y = -3.0 + rng.standard_normal(240)
    deep = unsafe_side_figures(-1.0 + rng.standard_normal((400, 240)), y, subject)
    assert deep["coverage_0.9_unsafe"] == pytest.approx(0.36, abs=0.08)  # binomial SE 0.03 at 240 points
    assert deep["above_0.9_unsafe"] == 0.0 and deep["n_unsafe"] == 240.0
    gate = judge({**figures, **deep}, n_points=n, n_subjects=s)
    assert _status(gate)["coverage_0.9"] == "passed" and _status(gate)["coverage_0.9_unsafe"] == "failed"
    assert gate.status == "failed" and "outside the safe range" in gate.summary()
    # the same points predicted by the truth's own distribution pass (one-sided: too wide there is safe)
    right = unsafe_side_figures(-3.0 + rng.standard_normal((400, 240)), y, subject)
    assert _status(judge({**figures, **right}, n_points=n, n_subjects=s))["coverage_0.9_unsafe"] == "passed"
    wide = unsafe_side_figures(-3.0 + 5.0 * rng.standard_normal((400, 240)), y, subject)
    assert _status(judge({**figures, **wide}, n_points=n, n_subjects=s))["coverage_0.9_unsafe"] == "passed"

    # few excursions: a coverage inside the wide tolerance is reported, not judged; a shortfall
    # beyond the exact binomial range fails all the same (6 points: binomial term 2.576 sqrt(0.09 / 6)
    # = 0.32, too wide to confirm; P(X <= 2 | 6, 0.9) = 0.0013, P(X <= 3) = 0.016: floor 0.42)
    def unsafe(draws, truth):
        gate = judge({**figures, **unsafe_side_figures(draws, truth, subject[:6])}, n_points=n, n_subjects=s)
        return {c.name: c for c in gate.criteria}["coverage_0.9_unsafe"]

    crit = unsafe(-3.0 + rng.standard_normal((400, 6)), np.full(6, -3.0))  # every point inside
    assert crit.status == "not_checked" and crit.value == 1.0 and "too few to judge" in crit.why
    crit = unsafe(-1.0 + 0.1 * rng.standard_normal((400, 6)), np.array([-3.0] * 5 + [-1.0]))  # 1 of 6 inside
    assert (
        crit.status == "failed" and crit.value == pytest.approx(1 / 6) and crit.lower == pytest.approx(0.42, abs=0.01)
    )
    none = unsafe_side_figures(np.zeros((400, 0)), np.zeros(0), np.zeros(0, int))
    crit = {c.name: c for c in judge({**figures, **none}, n_points=n, n_subjects=s).criteria}["coverage_0.9_unsafe"]
    assert crit.status == "not_checked" and crit.value is None
    # without event bounds there is no such criterion at all
    assert "coverage_0.9_unsafe" not in _status(judge(figures, n_points=n, n_subjects=s))


def test_a_censored_reading_is_covered_when_its_interval_reaches_its_side_of_the_limit():
    lo, hi = np.array([30.0, 45.0, 20.0, 100.0, 380.0, 420.0]), np.array([60.0, 80.0, 35.0, 300.0, 410.0, 500.0])
    y = np.array([39.0, 39.0, 39.0, 400.0, 400.0, 400.0])
    cens = np.array([1, 1, 1, -1, -1, -1])  # a CGM floor of 39 and a ceiling of 400 mg/dL
    below, above = misses(lo, hi, y, cens)
    # floor: [30, 60] holds 39 (covered); [45, 80] starts above it (a miss below: the truth is <= 39);
    # [20, 35] lies below 39, which a true value <= 39 can be (covered, not a miss above)
    assert below.tolist() == [False, True, False, False, False, False]
    # ceiling: [100, 300] ends under 400 (a miss above: the truth is at least 400); [380, 410] holds it,
    # and [420, 500] lies above 400, which a true value >= 400 can be
    assert above.tolist() == [False, False, False, True, False, False]
    assert misses(lo, hi, y)[1].tolist() == [False, False, True, True, False, False]  # read as exact values
    subject = np.arange(6)
    draws = np.linspace(lo, hi, 101)  # central 90 % interval of these draws: inside [lo, hi]
    figures = interval_figures(draws, y, subject, cens)
    exact = interval_figures(draws, y, subject)
    assert figures["coverage_0.9"] > exact["coverage_0.9"]
    unsafe = unsafe_side_figures(draws[:, :3], y[:3], subject[:3], cens[:3])
    assert unsafe["coverage_0.9_unsafe"] == pytest.approx(2 / 3) and unsafe["above_0.9_unsafe"] == 0.0


def test_the_record_round_trips_through_json():
    figures, n, s = _forecast("overconfident")
    gate = judge({**figures, "auc": None, "odd": float("nan")}, n_points=n, n_subjects=s, heldout="last 8")
    back = CalibrationGate.from_json(gate.to_json())
    assert back.criteria == gate.criteria and back.status == "failed" and back.heldout == "last 8"
    assert back.figures["odd"] is None and back.figure("coverage_0.9") == pytest.approx(figures["coverage_0.9"])
    with pytest.raises(ValueError, match="not a calibration gate record"):
        CalibrationGate.from_json('{"criteria": 3}')


def test_time_window_split():
    cohort = oral_cohort(3)
    held = window_mask(cohort, after=9.0)
    assert held.sum(axis=1).tolist() == [2, 2, 2]  # the 12 h and 24 h samples
    training, mask = split_after(cohort, fraction=0.25)  # the last quarter of 0..24 h: after 18 h
    assert mask.sum() == 3 and training.padded().obs_mask.sum() == 30
    assert (heldout_mask(cohort, 2) == held).all()
    assert split_last(cohort, 2).padded().obs_mask.sum() == 27
    with pytest.raises(PredictiveError, match="exactly one"):
        window_mask(cohort)
    with pytest.raises(PredictiveError, match="leaves nothing to fit"):
        window_mask(cohort, after=-1.0)
    with pytest.raises(PredictiveError, match="no measurement"):
        window_mask(cohort, after=100.0)
    with pytest.raises(PredictiveError, match=r"\(0, 1\)"):
        window_mask(cohort, fraction=1.0)


@pytest.fixture(scope="module")
def truth():
    """A synthetic oral-PK cohort (24 subjects, ODE truth, additive error SD 0.5 mg/L) and
    posterior draws that put all mass on the true subject parameters, with a chosen residual SD."""
    model = registry.get("pk_oral_1cmt")
    cohort = oral_cohort(24, seed=3)
    r = 100
    population = {"ka": np.full(r, 1.6), "CL": np.full(r, 2.75), "V": np.full(r, 31.9), "sigma_central": np.zeros(r)}
    eta = {k: np.tile(np.log(cohort.truth[k] / population[k][0]), (r, 1)) for k in ("ka", "CL", "V")}

    def draws(residual_sd: float) -> PosteriorDraws:
        return PosteriorDraws(
            model=model,
            population=population,
            omega={k: np.full(r, 0.3) for k in eta},
            eta=eta,
            residual={"conc_add": np.full(r, residual_sd)},
            subject_ids=cohort.padded().ids,
        )

    return cohort, draws


@pytest.mark.slow
def test_heldout_check_passes_the_truth_and_fails_wrong_noise(truth):
    cohort, draws = truth
    held = window_mask(cohort, after=6.0)  # 4 held-out samples (7-24 h) of 24 subjects: 96 points
    bounds = [Bound("conc", 3.0, "lower")]

    def check(sd: float) -> CalibrationGate:
        return heldout_check(draws(sd), cohort, held, key=jax.random.key(0), bounds=bounds, dt=0.1)

    right = check(0.5)
    assert right.status == "passed", right.summary()
    assert right.n_points == 96 and right.n_subjects == 24 and sum(right.pit_counts) == 96
    assert right.figure("brier_skill") > 0 and right.figure("auc") > 0.8
    assert sum(b.n for b in right.reliability) == 24
    # true residual SD 0.5: the log score is near the normal entropy -0.5 log(2 pi e 0.25) = -0.73; a point's
    # log density has SD sqrt(1/2) = 0.71, so the mean of 96 has SE 0.072 and 0.2 is 2.8 SE
    assert right.figure("log_score") == pytest.approx(-0.73, abs=0.2)
    narrow = check(0.1)  # overconfident: intervals a fifth of the truth's
    assert narrow.status == "failed" and _status(narrow)["coverage_0.9"] == "failed"
    assert narrow.figure("log_score") < right.figure("log_score")
    wide = check(3.0)  # six times the truth's noise: covers everything, tells nothing
    assert wide.status == "failed" and _status(wide)["relative_width_0.9"] == "failed"
    assert wide.figure("coverage_0.9") > 0.98


def test_the_neural_gate_is_the_same_rule_with_a_floor():
    from medsim.models.neural.gate import MiscalibratedModelError, gate_of, gate_summary, require_calibrated

    record = {"coverage": {"0.9": 0.93, "0.5": 0.55}, "width": {"0.9": 12.0}, "n_predictions": 100, "n_subjects": 5}
    assert gate_of(record).status == "passed" and gate_summary(record)["calibration_passed"] is True
    # the same record with the sharpness figures calibrate() now stores: too wide to be useful
    wide = {**record, "sharpness": {"relative_width_0.9": 1.2, "spread_5_95": 10.0, "crps_skill": 0.1}}
    gate = gate_of(wide)
    assert gate.status == "failed" and _status(gate)["relative_width_0.9"] == "failed"
    with pytest.raises(MiscalibratedModelError, match="failed its calibration gate: MISCALIBRATED"):
        require_calibrated(wide)
    assert require_calibrated(wide, force=True) == wide
    assert gate_of({}).status == "not_checked"


@pytest.mark.parametrize("design_effect", [1.0, 20.0])
def test_the_reported_wide_glucose_fit_fails(design_effect):
    # The fit that the old check passed ("coverage 1.00"): 12 patients, CGM every 15 min over a
    # held-out day (1152 points), 90 % intervals covering 0.98 at 240 mg/dL against a held-out
    # glucose range of about 230 mg/dL. With strongly autocorrelated CGM misses (design effect
    # 20) the coverage tolerance reaches 0.98, so sharpness alone must fail it.
    figures = {
        "coverage_0.9": 0.98,
        "coverage_0.5": 0.7,
        "design_effect_0.9": design_effect,
        "design_effect_0.5": design_effect,
        "width_0.9": 240.0,
        "spread_5_95": 230.0,
        "relative_width_0.9": 240.0 / 230.0,
    }
    gate = judge(figures, n_points=1152, n_subjects=12, unit="mg/dL")
    assert gate.status == "failed" and _status(gate)["relative_width_0.9"] == "failed"
    if design_effect > 1:
        assert _status(gate)["coverage_0.9"] == "passed"  # tolerance 2.576 sqrt(0.09 x 20 / 1152) = 0.10
    assert "mean 90% width 240 mg/dL = 1.04 x the held-out 5-95% range 230 mg/dL" in gate.summary()


def test_the_training_record_ends_where_the_held_out_window_starts():
    """Inputs from a subject's first held-out measurement on belong to the window: boluses there
    and later are dropped, an infusion running across it is cut to what it delivered before."""
    from medsim.data import Cohort
    from medsim.inference.checks.heldout import without

    cohort = Cohort.from_arrays(
        ("a", "b"),
        [np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0])],
        [np.ones(4), np.ones(2)],
        [np.full(4, 2), np.full(2, 2)],
        dose_time=[np.array([0.0, 2.5, 3.0, 3.5]), np.array([0.0, 1.5])],
        dose_amount=[np.array([100.0, 10.0, 20.0, 30.0]), np.array([50.0, 60.0])],
        dose_cmt=[np.ones(4, int), np.ones(2, int)],
        dose_rate=[np.array([0.0, 4.0, 0.0, 0.0]), np.array([0.0, 0.0])],
        obs_cens=[np.array([1, 0, -1, 0]), np.array([0, -1])],
    )
    held = np.zeros((2, 4), bool)
    held[0, 2:] = True  # subject a: 3 h and 4 h held out; subject b keeps everything
    training = without(cohort, held, "test").padded()
    # readings at a limit stay censored in the training record (they were read as exact values before)
    assert training.obs_cens[0][training.obs_mask[0]].tolist() == [1, 0]
    assert training.obs_cens[1][training.obs_mask[1]].tolist() == [0, -1]
    a = training.dose_mask[0]
    assert training.dose_time[0][a].tolist() == [0.0, 2.5]  # the bolus at 3 h is the window's
    # the infusion at 4 units/h from 2.5 h ran 0.5 h before the window: 2 of its 10 units
    assert training.dose_amount[0][a].tolist() == [100.0, 2.0]
    assert training.dose_amount[1][training.dose_mask[1]].tolist() == [50.0, 60.0]
    assert training.obs_mask.sum(axis=1).tolist() == [2, 2]
