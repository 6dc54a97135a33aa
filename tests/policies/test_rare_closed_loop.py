"""The closed loop as a rare-event path problem: noise replay through rollout's noise_index.

Splitting is only valid if a clone that shares its donor's increments up to interaction k
reproduces the donor's path (measurements, the policy's doses, the state) up to k exactly and
draws fresh noise after it; these tests check exactly that on the real option loop. The path
function of an array-step policy is compiled with the estimator (closed_loop_compiled); it must
give the host rollout's numbers on the same increments, and splitting on it the host estimate.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import medsim.models as registry
from medsim.policies.builtin import PID
from medsim.policies.risk.rare.closed_loop import closed_loop_problem, noise_ids
from medsim.population import PosteriorDraws, sample_population
from medsim.simulate.types import Bound

GLUCOSE = registry.get("glucose_insulin")
K = 6


def typical_patient(model, n: int = 1):
    """``n`` copies of the typical patient (no between-subject spread)."""
    pop = {p.name: np.array([p.typical]) for p in model.parameters}
    omega = {p.name: np.array([0.0]) for p in model.structural if p.bsv > 0}
    residual = {}
    for obs, err in model.residual.items():
        if err.kind in ("additive", "combined"):
            residual[f"{obs}_add"] = np.array([err.add])
        if err.kind in ("proportional", "combined"):
            residual[f"{obs}_prop"] = np.array([err.prop])
    draws = PosteriorDraws(model=model, population=pop, omega=omega, residual=residual)
    return sample_population(draws, n, seed=0, covariates={"BASAL": 1.2})


def two_patients():
    """Two patients that differ in insulin sensitivity; each path's first increment picks one."""
    two = typical_patient(GLUCOSE, 2)
    return dataclasses.replace(two, params={**two.params, "S_I": two.params["S_I"] * np.array([1.0, 1.5])})


SETTINGS = dict(bound=Bound("glucose_mg_dL", 90.0, "lower"), horizon=5 * 60.0, dt=2.0, seed=3, interactions=K)


@pytest.fixture(scope="module")
def evaluated():
    problem = closed_loop_problem(GLUCOSE, two_patients(), PID(every=60.0), **SETTINGS)
    assert problem.params is not None  # an array-step policy: the compiled path function
    rng = np.random.default_rng(0)
    inc = rng.standard_normal((4, K, 2)).astype(np.float32)
    inc[1] = inc[0]  # an exact copy
    inc[2, :2] = inc[0, :2]  # shares the first two interactions' noise, fresh after
    inc[3, 0, 0] = -inc[0, 0, 0]  # the other patient: Phi(-z) = 1 - Phi(z)
    score, crossing = (np.asarray(a) for a in problem.evaluate(inc))
    return problem, score, crossing, inc


def test_copied_noise_replays_the_path(evaluated):
    _, score, crossing, inc = evaluated
    np.testing.assert_array_equal(score[1], score[0])
    assert crossing[1] == crossing[0]
    # Same noise up to interaction 1: same path (policy included) up to there, different after.
    np.testing.assert_array_equal(score[2, :2], score[0, :2])
    assert np.any(score[2, 2:5] != score[0, 2:5])
    # Rows 0 and 3 are the two patients; the one with 1.5x the insulin sensitivity (the row whose
    # first draw is positive: Phi > 1/2 picks index 1) comes closer to the lower bound.
    sensitive, other = (3, 0) if inc[3, 0, 0] > 0 else (0, 3)
    assert score[sensitive, :5].max() > score[other, :5].max()


def test_scores_and_crossing_are_consistent(evaluated):
    problem, score, crossing, _ = evaluated
    assert score.shape == (4, problem.n_steps) and problem.n_channels == 2
    assert np.all((crossing >= 0) & (crossing <= 1))
    # A grid violation (score >= 0) means a certain crossing.
    assert np.all(crossing[(score >= 0).any(axis=1)] == 1.0)
    # 5 h at one look an hour: interactions 0..4 happen, the sixth slot is unused.
    assert np.all(np.isfinite(score[:, :5])) and np.all(score[:, 5] == -np.inf)


def assert_same_paths(compiled, host):
    """Scores and crossing probabilities of the two path functions on the same increments.

    Both compute the same float64/float32 expressions with the same kernel (the compiled loop's
    pieces are isolated as the host loop's jitted steps are), so they agree to float32 rounding of
    the scores: 2 ulp of float32 relative (the scores are cast to float32 at the end), and the
    crossing probabilities to 2 ulp relative as well.
    """
    (sc, cc), (sh, ch) = compiled, host
    np.testing.assert_array_equal(np.isfinite(sc), np.isfinite(sh))
    fin = np.isfinite(sh)
    np.testing.assert_allclose(sc[fin], sh[fin], rtol=2 * np.finfo(np.float32).eps, atol=0)
    np.testing.assert_allclose(cc, ch, rtol=2 * np.finfo(np.float32).eps, atol=1e-30)


def test_compiled_path_function_matches_the_host_rollout(evaluated):
    _, score, crossing, inc = evaluated
    host = closed_loop_problem(GLUCOSE, two_patients(), PID(every=60.0), loop="host", **SETTINGS)
    assert host.params is None  # the pure_callback fallback
    assert_same_paths((score, crossing), tuple(np.asarray(a) for a in host.evaluate(inc)))


@pytest.mark.slow
def test_compiled_basal_bolus_with_meals_matches_the_host_rollout():
    from medsim.policies.builtin import BasalBolus
    from medsim.policies.scenarios import MealScenario

    meals = MealScenario(time_sd_h=0.0, size_cv=0.0, start_clock_h=11.0)  # announced, one meal in 5 h
    kw = dict(SETTINGS, interactions=8, scenario=meals)
    compiled = closed_loop_problem(GLUCOSE, two_patients(), BasalBolus(every=60.0), **kw)
    host = closed_loop_problem(GLUCOSE, two_patients(), BasalBolus(every=60.0), loop="host", **kw)
    assert compiled.params is not None and host.params is None
    inc = np.random.default_rng(1).standard_normal((8, 8, 2)).astype(np.float32)
    assert_same_paths(*(tuple(np.asarray(a) for a in p.evaluate(inc)) for p in (compiled, host)))


@pytest.mark.slow
def test_splitting_on_the_compiled_loop_gives_the_host_estimate():
    # A small case (p ~ 0.5 at 95 mg/dL over 3 h): identical path outputs make splitting's
    # random choices, levels and estimate identical, so equality is exact.
    from medsim.policies.risk.rare import ams

    kw = dict(SETTINGS, bound=Bound("glucose_mg_dL", 95.0, "lower"), horizon=3 * 60.0, interactions=4)
    problems = [closed_loop_problem(GLUCOSE, two_patients(), PID(every=60.0), loop=lp, **kw) for lp in ("auto", "host")]
    runs = [ams(p, seed=1, n_paths=10, replicas=1) for p in problems]
    assert runs[0].value > 0 and runs[0].levels[-1] >= 0
    assert runs[0].value == runs[1].value and runs[0].levels == runs[1].levels
    assert runs[0].path_equivalents == runs[1].path_equivalents


def test_noise_ids_depend_on_both_draws():
    a = np.zeros((1, 1, 2), np.float32)
    b = a.copy()
    b[..., 1] = 1.0
    assert noise_ids(a)[0, 0] != noise_ids(b)[0, 0]
    # The device hash is the host one, bit for bit.
    from medsim.policies.risk.rare.closed_loop_compiled import device_noise_ids

    inc = np.random.default_rng(2).standard_normal((5, 3, 2)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(device_noise_ids(inc)), noise_ids(inc))


def test_switch_to_rare_estimator():
    from medsim.policies.risk.rare.auto import RareMethodError, needs_rare, rare_followup

    assert needs_rare(3) and not needs_rare(10) and needs_rare(50, method="ams")
    with pytest.raises(RareMethodError, match="rare"):
        needs_rare(0, method="splitting")
    # Enough violations: no rare-event run (returns before simulating anything).
    kwargs = dict(bound=Bound("glucose_mg_dL", 54.0, "lower"), horizon=60.0, dt=1.0, seed=0, interactions=4)
    assert rare_followup(GLUCOSE, typical_patient(GLUCOSE), PID(), n_violations=20, **kwargs) is None
    with pytest.raises(RareMethodError, match="rare=ams"):
        rare_followup(GLUCOSE, typical_patient(GLUCOSE), PID(), n_violations=0, method="subset", **kwargs)


@pytest.mark.slow
def test_segments_split_the_interval_without_changing_the_path():
    # Without process or measurement noise the path does not depend on the noise, so advancing
    # each interval in pieces must give the same path: each interaction's score is the largest of
    # its pieces' scores and the crossing probabilities agree (same sub-step grid, same doses;
    # float32 rounding of the pieces' start times allowed: 2 ulp).
    from medsim.policies.builtin import BasalBolus
    from medsim.policies.scenarios import MealScenario

    quiet = two_patients()
    quiet = dataclasses.replace(quiet, params={**quiet.params, "sigma_glucose": np.zeros(2)})
    kw = dict(SETTINGS, interactions=8, scenario=MealScenario(time_sd_h=0.0, size_cv=0.0, start_clock_h=11.0))
    kw.update(measurement_noise=False)
    whole = closed_loop_problem(GLUCOSE, quiet, BasalBolus(every=60.0), **kw)
    pieces = closed_loop_problem(GLUCOSE, quiet, BasalBolus(every=60.0), segments=3, **kw)
    assert pieces.n_steps == 3 * whole.n_steps
    inc = np.random.default_rng(3).standard_normal((4, 24, 2)).astype(np.float32)
    s1, c1 = (np.asarray(a) for a in whole.evaluate(inc[:, :8]))
    s3, c3 = (np.asarray(a) for a in pieces.evaluate(inc))
    np.testing.assert_allclose(s3.reshape(4, 8, 3).max(axis=2), s1, rtol=2 * np.finfo(np.float32).eps)
    np.testing.assert_allclose(c3, c1, rtol=2 * np.finfo(np.float32).eps, atol=1e-30)
    with pytest.raises(ValueError, match="segments"):
        closed_loop_problem(GLUCOSE, quiet, BasalBolus(every=60.0), segments=2, loop="host", **kw)
