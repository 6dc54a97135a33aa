"""Rare-event estimators against exact exit probabilities (policies.risk.rare).

Reference answers: the closed form for Brownian motion with drift leaving a half-line (exact on
any grid with the bridge correction, see policies.risk.rare.references) and a Crank–Nicolson
solution of the OU backward equation, itself checked here against the closed form.

Tolerances: an estimate with standard error ``se`` must lie within ``4 se`` of the exact value
(a false-alarm rate of ~1e-3 per check for a t statistic with 7 degrees of freedom, ~6e-5 for a
normal one); seeds are fixed, so the tests are deterministic. Every problem shares one compiled
estimator per shape (problems differ only in their runtime ``params``).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from medsim.policies.risk.rare import PathProblem, ams, importance_sampling, subset_simulation
from medsim.policies.risk.rare.references import (
    drifted_bm_exit,
    drifted_bm_problem,
    exit_probability_pde,
    ou_problem,
)

MU, SIGMA, T, STEPS = -1.0, 1.0, 1.0, 16
# Distances whose exit probabilities are ~1e-3, ~1e-5 and ~1e-7 (closed form).
DISTANCES = {1e-3: 2.45, 1e-5: 3.45, 1e-7: 4.3}


def _within(r, exact: float, k: float = 4.0) -> None:
    se = r.probability.se
    assert abs(r.value - exact) <= k * se, f"{r.estimator}: {r.value:.4g} vs exact {exact:.4g} (se {se:.2g})"


def test_closed_form_targets():
    for p, b in DISTANCES.items():
        assert p / 3 < drifted_bm_exit(MU, SIGMA, b, T) < 3 * p


def test_pde_matches_closed_form():
    """The OU reference solver at theta = 0 against the closed form: O(dx^2) error, measured 2e-3."""
    b = DISTANCES[1e-7]
    pde = exit_probability_pde(0.0, SIGMA, None, b, T, mu=MU, n_space=1500, n_time=1500)
    assert pde == pytest.approx(drifted_bm_exit(MU, SIGMA, b, T), rel=1e-2)


@pytest.mark.parametrize("p", sorted(DISTANCES))
def test_ams_exact_drifted_bm(p):
    exact = drifted_bm_exit(MU, SIGMA, DISTANCES[p], T)
    r = ams(drifted_bm_problem(MU, SIGMA, DISTANCES[p], T, STEPS), seed=3, n_paths=100, replicas=8)
    _within(r, exact)
    assert r.probability.contains(exact) or abs(r.value - exact) <= 4 * r.probability.se
    assert r.relative_error < 0.5
    # Each iteration kills ~10 % of the paths: about log(p) / log(0.9) levels, increasing.
    assert np.all(np.diff(r.levels) >= 0)
    assert r.iterations == pytest.approx(np.log(exact) / np.log(0.9), rel=0.35)


def test_ams_agrees_with_plain_monte_carlo():
    """At p ~ 1e-3 splitting and 2e5 plain paths agree within 4 combined standard errors."""
    problem = drifted_bm_problem(MU, SIGMA, DISTANCES[1e-3], T, STEPS)
    inc = jax.random.normal(jax.random.key(11), (200_000, STEPS, 1))
    q = np.asarray(problem.evaluate(inc)[1], dtype=float)
    plain, plain_se = q.mean(), q.std(ddof=1) / np.sqrt(q.size)
    assert abs(plain - drifted_bm_exit(MU, SIGMA, DISTANCES[1e-3], T)) <= 4 * plain_se
    r = ams(problem, seed=5, n_paths=100, replicas=8)
    assert abs(r.value - plain) <= 4 * np.hypot(r.probability.se, plain_se)


def test_ams_reproducible_and_batch_independent():
    problem = drifted_bm_problem(MU, SIGMA, DISTANCES[1e-5], T, STEPS)
    a = ams(problem, seed=9, n_paths=100, replicas=8)
    b = ams(problem, seed=9, n_paths=100, replicas=8, first_replica=4)
    assert a.replicas == ams(problem, seed=9, n_paths=100, replicas=8).replicas
    # Replica r depends on (seed, r) only, not on which replicas run beside it.
    assert a.replicas[4:] == b.replicas[:4]


def test_ams_ou_half_line_against_pde():
    """OU (theta = 1) at p ~ 1e-5; the bridge's bias on 16 exact OU steps measured < 2 %."""
    b = 3.0
    exact = exit_probability_pde(1.0, 1.0, None, b, T, n_space=1500, n_time=1500)
    assert 1e-6 < exact < 1e-4
    _within(ams(ou_problem(1.0, 1.0, None, b, T, STEPS), seed=4, n_paths=100, replicas=8), exact)


def test_subset_simulation_exact_drifted_bm():
    exact = drifted_bm_exit(MU, SIGMA, DISTANCES[1e-5], T)
    r = subset_simulation(drifted_bm_problem(MU, SIGMA, DISTANCES[1e-5], T, STEPS), seed=2, n_paths=200, replicas=8)
    _within(r, exact)
    # Levels rise to the event level 0; p0 = 0.1 per level: about log10(1/p) levels.
    assert np.all(np.diff(r.levels) > 0) and r.levels[-1] == 0.0
    assert abs(len(r.levels) - np.log10(1 / exact)) <= 2


def test_importance_sampling_exact_drifted_bm():
    exact = drifted_bm_exit(MU, SIGMA, DISTANCES[1e-7], T)
    r = importance_sampling(drifted_bm_problem(MU, SIGMA, DISTANCES[1e-7], T, STEPS), seed=1, n_paths=4000)
    _within(r, exact)
    assert r.relative_error < 0.1 and r.ess > 100
    # The optimal change of measure for a Brownian exit tilts the increments upwards.
    assert r.control[0] > 0


def test_path_problem_rejects_bad_shapes():
    def paths(inc, params):
        return inc[..., 0], inc[:, 0, 0]

    with pytest.raises(ValueError, match="n_steps"):
        PathProblem(paths, 0)
    bad = PathProblem(paths, 4, name="bad")
    with pytest.raises(ValueError, match="bad"):
        bad.evaluate(jax.numpy.zeros((3, 5, 1)))


def test_ams_reports_a_path_that_could_not_be_simulated():
    # The compiled closed loop gives a NaN crossing probability where the rollout would refuse
    # the path; splitting must say so rather than return a number.
    from medsim.policies.risk.rare import PathFailure

    def paths(inc, params):
        score = jax.numpy.cumsum(inc[..., 0], axis=1) - 3.0
        crossing = jax.numpy.where(score.max(axis=1) > -1.0, jax.numpy.nan, 0.0)
        return score, crossing

    with pytest.raises(PathFailure, match="could not be simulated"):
        ams(PathProblem(paths, 4, name="refusing"), seed=0, n_paths=4, replicas=1, max_iterations=2)


def test_epistemic_outer_loop_over_drift_draws():
    """Draws of the drift: the overall probability is the mean of the exact per-draw ones."""
    from medsim.policies.risk.rare.epistemic import rare_epistemic

    base = drifted_bm_problem(MU, SIGMA, DISTANCES[1e-5], T, STEPS)
    mus = (-1.2, -1.0, -0.8)
    draws = [{**base.params, "mu": np.float32(m)} for m in mus]
    r = rare_epistemic(base, draws, importance_sampling, epsilon=1e-5, seed=0, n_paths=4000)
    exact = np.array([drifted_bm_exit(m, SIGMA, DISTANCES[1e-5], T) for m in mus])
    # The per-draw estimates carry ~2 % error; their mean is within 10 % of the exact mean.
    assert r.probability.value == pytest.approx(exact.mean(), rel=0.1)
    # The drift draws spread p over an order of magnitude: nearly all variance of p_d is epistemic.
    assert r.epistemic_variance > 0
    assert r.p_exceeds_epsilon.value == np.mean(exact > 1e-5)
    assert len(r.per_draw) == 3


def test_replica_interval_is_log_symmetric():
    from medsim.policies.risk.rare.result import replica_interval

    est, rel = replica_interval(np.array([1e-6, 2e-6, 3e-6]), level=0.95, seed=0, method="m")
    assert est.lower > 0 and est.value / est.lower == pytest.approx(est.upper / est.value)
    assert rel == pytest.approx(est.se / est.value)
    assert not replica_interval(np.array([1e-6, 1e-6]), level=0.95, seed=0, method="m")[0].has_interval
