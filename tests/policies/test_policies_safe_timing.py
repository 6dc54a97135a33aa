"""The posterior-aware safe-timing policy: timing follows predicted risk, particles follow the data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import medsim.models as registry
from medsim.policies.builtin import FixedDose, SafeTiming
from medsim.policies.loading import parse_policy
from medsim.policies.protocol import PolicyContext
from medsim.policies.rollout import rollout
from medsim.population import PosteriorDraws, sample_population
from medsim.simulate.types import Bound

PK = registry.get("pk_oral_1cmt")
GRID = (1.0, 2.0, 4.0, 8.0, 12.0)
BOUND = (Bound("conc", 9.0),)


@pytest.fixture(scope="module")
def draws(pk_draws) -> PosteriorDraws:
    return pk_draws


def policy(draws, dose: float = 250.0, eps: float = 0.1, particles: int = 32) -> SafeTiming:
    base = FixedDose(dose=dose, every=12.0)
    return SafeTiming(base=base, model=PK, draws=draws, bounds=BOUND, eps=eps, grid=GRID, particles=particles, dt=0.25)


def first_interval(p: SafeTiming, make_obs, n: int = 4) -> np.ndarray:
    state = p.init(n, seed=3)
    _, option = p.act(state, make_obs(np.zeros(n), {"conc": 0.0}), rng=np.random.default_rng(0))
    return np.asarray(option.interval)


def test_timing_follows_predicted_risk(draws, make_obs):
    # No drug, no risk: look again only when the base policy comes back (12 h).
    np.testing.assert_array_equal(first_interval(policy(draws, dose=0.0), make_obs), 12.0)
    # 4000 mg (peak ~100 mg/L) against a 9 mg/L bound: every particle crosses within the hour, so
    # the earliest candidate.
    np.testing.assert_array_equal(first_interval(policy(draws, dose=4000.0), make_obs), 1.0)
    # Same seed, same particles and forecasts: a larger eps can only allow a later look.
    tight = first_interval(policy(draws, eps=0.02), make_obs)
    loose = first_interval(policy(draws, eps=0.5), make_obs)
    assert (loose >= tight).all() and (loose > tight).any()
    assert set(np.unique(np.concatenate([tight, loose]))) <= set(GRID)


def test_particles_are_conditioned_on_the_measurement(draws, make_obs):
    p = policy(draws)
    n = 2
    state = p.init(n, seed=1)
    state, _ = p.act(state, make_obs(np.zeros(n), {"conc": 0.0}), rng=np.random.default_rng(0))
    prior = state["particles"]
    # Two patients measured at 12 h with a low and a high concentration.
    state, _ = p.act(state, make_obs(np.full(n, 12.0), {"conc": [2.0, 9.0]}, index=1), rng=np.random.default_rng(0))
    conc = np.asarray(state["particles"]["x"]["central"]) / np.asarray(state["particles"]["theta"]["V"])
    conc = conc.reshape(n, p.particles)
    # After resampling, each patient's particles sit closer to its own reading than to the other's.
    assert abs(np.median(conc[0]) - 2.0) < abs(np.median(conc[0]) - 9.0)
    assert abs(np.median(conc[1]) - 9.0) < abs(np.median(conc[1]) - 2.0)
    assert prior["x"]["central"].shape == (n * p.particles,)


def test_spec_and_rollout(draws):
    context = PolicyContext(model=PK, bounds=BOUND, draws=draws, dt=0.25)
    spec = "safe_timing:eps=0.1,grid=1;4;12,particles=8,base=fixed,base.dose=250,base.every=12"
    p = parse_policy(spec, context=context)
    assert isinstance(p, SafeTiming) and p.base == FixedDose(dose=250.0, every=12.0) and p.particles == 8
    pop = sample_population(draws, 4, seed=0)
    settings = {"bounds": BOUND, "horizon": 24.0, "dt": 0.25, "seed": 2, "n_paths_saved": 0}
    a = rollout(PK, pop, p, **settings)
    b = rollout(PK, pop, p, chunk_size=2, **settings)
    np.testing.assert_array_equal(a.t_start, b.t_start)
    np.testing.assert_array_equal(a.measured["conc"], b.measured["conc"])
    # Every look is a grid candidate after the last one, or the base policy's next dose time.
    steps = (a.t_end - a.t_start)[a.mask]
    on_grid = np.isin(np.round(steps, 6), (1.0, 4.0, 12.0))
    at_dose = np.isin(np.round(a.t_end[a.mask], 6), (12.0, 24.0))
    assert (on_grid | at_dose).all()
    dose_times = a.t_start[a.treatment["bolus_cmt1"] > 0]
    np.testing.assert_allclose(np.sort(np.unique(dose_times)), [0.0, 12.0])


def test_twins_draw_particles_from_their_subject(draws, make_obs):
    # The same posterior with two fitted subjects: a patient that twins "s2" gets that subject's
    # random effects under each particle's draw; a new patient gets fresh ones.
    d = draws.n_draws
    eta = {name: np.tile([[-0.5, 0.5]], (d, 1)) for name in draws.omega}
    fitted = PosteriorDraws(
        model=PK,
        population=draws.population,
        omega=draws.omega,
        eta=eta,
        residual=draws.residual,
        subject_ids=("s1", "s2"),
    )
    p = SafeTiming(base=FixedDose(dose=0.0), model=PK, draws=fitted, bounds=BOUND, grid=GRID, particles=16, dt=0.25)
    obs = make_obs(np.zeros(2), {"conc": 0.0})
    obs = dataclasses.replace(obs, subject=np.array(["s2", ""], dtype=object))
    state, _ = p.act(p.init(2, seed=0), obs, rng=np.random.default_rng(0))
    cl = np.asarray(state["particles"]["theta"]["CL"]).reshape(2, 16)
    typical = np.asarray(draws.population["CL"])
    ratio = cl[0][:, None] / typical[None, :]
    # Every twin particle is some draw's typical CL x exp(0.5) (float32 model evaluation).
    assert np.isclose(ratio, np.exp(0.5), rtol=1e-5).any(axis=1).all()
    assert not np.isclose(cl[1][:, None] / typical[None, :], np.exp(0.5), rtol=1e-5).any(axis=1).all()


def test_a_base_without_array_step_runs_on_the_host(draws, make_obs):
    from medsim.policies.loading import FunctionPolicy
    from medsim.policies.protocol import Option
    from medsim.policies.rollout_device import choose_loop

    def heavy(obs, *, rng):  # fixed:dose=4000,every=12 as a Python function
        return Option(interval=np.full(obs.n, 12.0), bolus={1: np.where(obs.time % 12.0 == 0, 4000.0, 0.0)})

    p = SafeTiming(base=FunctionPolicy(heavy, "heavy"), model=PK, draws=draws, bounds=BOUND, grid=GRID, particles=8)
    assert choose_loop("auto", p) == "host" and choose_loop("auto", policy(draws)) == "device"
    # The same choice as with the array-step base (test_timing_follows_predicted_risk): every particle crosses.
    np.testing.assert_array_equal(first_interval(p, make_obs), 1.0)


def test_flip_prepares_a_safe_timing_component(draws):
    from medsim.policies.builtin import Flip

    p = Flip(a=policy(draws, particles=4), b=FixedDose(dose=0.0), q=0.5)
    state = p.prepare(p.init(2, seed=0), np.arange(2), {}, np.array(["", ""]))
    assert state.a["particles"]["x"]["central"].shape == (2 * 4,)
    assert p.prepare(state, np.arange(2), {}, np.array(["", ""])).a is state.a  # prepared once
