"""The gymnasium environment: API checks, agreement with the rollout, costs and errors."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import medsim.policies.env as penv
from medsim.policies.builtin import BasalBolus
from medsim.policies.env import core
from medsim.policies.env.behaviour import BehaviourNoise, behaviour_steps
from medsim.policies.evaluate import default_scenario
from medsim.policies.rollout import rollout


@pytest.fixture(scope="module")
def glucose():
    return gymnasium.make("medsim/Glucose-v0", pool_size=8, prior_draws=8)


@pytest.mark.parametrize("env_id", [f"medsim/{name}" for name in penv.TASKS])
def test_check_env_passes_for_every_registered_task(env_id):
    for intervals in ("continuous", "discrete"):
        env = gymnasium.make(env_id, pool_size=4, prior_draws=4, intervals=intervals)
        check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.slow
def test_make_works_without_importing_medsim_first():
    # gymnasium 1.x loads a package named before ':' in the id; a fresh interpreter proves the
    # registration does not depend on an earlier import.
    code = (
        "import gymnasium, sys; assert 'medsim.policies.env' not in sys.modules; "
        "e = gymnasium.make('medsim.policies.env:medsim/Theophylline-v0', pool_size=2, prior_draws=2); "
        "print(e.unwrapped.task.model)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "pk_oral_1cmt"


@pytest.mark.slow
def test_short_id_imports_medsim_and_finds_its_environments():
    # "medsim:" makes gymnasium import the top-level package, which registers the ids (string
    # entry points) because gymnasium is already imported; the environment code loads on make().
    code = (
        "import gymnasium, sys; "
        "e = gymnasium.make('medsim:medsim/Theophylline-v0', pool_size=2, prior_draws=2); "
        "v = gymnasium.make_vec('medsim:medsim/Theophylline-v0', num_envs=2, vectorization_mode='vector_entry_point',"
        " pool_size=2, prior_draws=2); "
        "print(e.unwrapped.task.model, type(v).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "pk_oral_1cmt MedsimVectorEnv"


def test_importing_medsim_neither_imports_gymnasium_nor_the_environments():
    code = (
        "import sys, medsim; "
        "print(sorted(m for m in ('gymnasium', 'jax', 'medsim.policies', 'medsim.policies.env') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_registered_ids_are_the_tasks():
    from medsim.env_ids import TASK_NAMES

    assert TASK_NAMES == tuple(penv.TASKS)
    for name in penv.TASKS:
        assert gymnasium.spec(f"medsim/{name}").kwargs == {"task": name}


def test_safety_six_tuple_and_gymnasium_five_tuple_agree():
    plain = gymnasium.make("medsim/Glucose-v0", pool_size=4, prior_draws=4)
    safe = penv.SafetyAPI(gymnasium.make("medsim/Glucose-v0", pool_size=4, prior_draws=4).unwrapped)
    o1, _ = plain.reset(seed=5)
    o2, _ = safe.reset(seed=5)
    np.testing.assert_array_equal(o1, o2)
    action = np.array([1.0, 0.02, 60.0], np.float32)
    for _ in range(3):
        obs, reward, terminated, truncated, info = plain.step(action)
        obs6, reward6, cost6, terminated6, truncated6, info6 = safe.step(action)
        np.testing.assert_array_equal(obs, obs6)  # same seed, same streams: identical, not close
        assert (reward, info["cost"], terminated, truncated) == (reward6, cost6, terminated6, truncated6)
        assert info6["cost"] == cost6


def test_env_reproduces_the_rollout_of_a_builtin_policy():
    # Episode i is patient i of the pool, with the rollout's counter-based streams: driving
    # basal_bolus through the environment must give the rollout's interval statistics.
    # Nine hours: the basal rate, a fingerstick every 4 h and breakfast (a meal bolus) are all covered.
    task = replace(penv.GLUCOSE, spec="glucose_mg_dL>=70,glucose_mg_dL<=250;horizon=9h;epsilon=0.05")
    params = core.make_params(task, seed=3, pool_size=3, prior_draws=4)
    policy = BasalBolus()
    steps = list(behaviour_steps(params, policy, np.arange(3)))
    res = rollout(
        params.model,
        params.pool,
        policy,
        bounds=params.spec.bounds,
        horizon=params.horizon,
        dt=params.task.dt,
        seed=3,
        scenario=default_scenario(params.model, "auto", 3),
        target=params.spec.target,
        n_paths_saved=0,
    )
    assert res.mask.shape[1] == len(steps)
    assert any((s.action[:, 0] > 0).any() for s in steps)  # a meal bolus was given: events are covered
    p_env = np.stack([s.outcome.p_cross for s in steps], axis=1)
    p_roll = -np.expm1(res.log_survival)
    # float32 simulation on both sides of one compiled kernel: equal up to float32 rounding of the
    # interval ends passed in (1e-6 relative; probabilities here are far from 0/1 edge effects).
    np.testing.assert_allclose(np.where(res.mask[..., None], p_env, 0.0), p_roll * res.mask[..., None], atol=1e-6)
    t_env = np.stack([s.outcome.t_end for s in steps], axis=1)
    np.testing.assert_allclose(np.where(res.mask, t_env, 0.0), np.where(res.mask, res.t_end, 0.0), rtol=1e-12)
    reward = np.stack([s.outcome.reward for s in steps], axis=1).sum(axis=1)
    # Return = time-in-range fraction: both sides sum the simulator's trapezoid time outside.
    np.testing.assert_allclose(reward, res.efficacy["time_in_range"], atol=1e-5)


def test_cost_variants_and_info(glucose):
    env = glucose.unwrapped
    env.reset(seed=1)
    # A huge insulin bolus drives glucose below 70 mg/dL within hours: every cost variant sees it.
    _, _, _, _, info = env.step(np.array([20.0, 0.1, 240.0], np.float32))
    costs = [info["cost_bridge"], info["cost_grid"], info["cost_end"]]
    for _ in range(3):
        if info["cost_grid"]:
            break
        _, _, _, _, info = env.step(np.array([20.0, 0.1, 240.0], np.float32))
        costs = [info["cost_bridge"], info["cost_grid"], info["cost_end"]]
    assert info["cost_grid"] == 1.0 and info["cost_bridge"] == 1.0  # a grid point outside: probability 1
    assert info["cost"] == info["cost_bridge"]
    assert set(info) >= {"interval", "p_cross", "grid", "seen", "time_outside", "margin", "slack"}
    assert info["p_cross"].shape == (len(env.bound_names),)
    assert info["interval"] > 0 and costs[0] >= costs[2]


def test_grid_cost_and_user_reward():
    calls = []

    def reward(outcome):
        calls.append(outcome.interval.copy())
        return -outcome.interval

    env = gymnasium.make("medsim/Glucose-v0", pool_size=2, prior_draws=2, cost="grid", reward=reward).unwrapped
    env.reset(seed=0)
    _, r, _, _, info = env.step(np.array([0.0, 0.02, 30.0], np.float32))
    assert r == -info["interval"] and len(calls) == 1
    assert info["cost"] == info["cost_grid"]


def test_actions_are_clipped_to_declared_bounds(glucose):
    env = glucose.unwrapped
    env.reset(seed=2)
    _, _, _, _, info = env.step(np.array([500.0, -1.0, 1e6], np.float64))
    assert info["clipped"]
    assert info["interval"] <= penv.GLUCOSE.interval[1]
    np.testing.assert_allclose(env.state.last[0], [20.0, 0.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"task": "Nope-v0"}, "unknown task"), ({"cost": "max"}, "cost must be"), ({"intervals": "some"}, "intervals")],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(penv.TaskError, match=match):
        penv.MedsimEnv(**{"task": "Glucose-v0", "pool_size": 2, "prior_draws": 2, **kwargs})


def test_bad_action_shape_names_the_action(glucose):
    env = glucose.unwrapped
    env.reset(seed=0)
    with pytest.raises(penv.TaskError, match=r"action: expected shape \(n, 3\)"):
        env.step(np.zeros(2))


def test_behaviour_noise_is_reproducible_and_mean_preserving():
    noise = BehaviourNoise(sd=0.3, interval_sd=0.2)
    action = np.ones((4000, 3))
    a = noise.apply(action, 0, np.arange(4000), np.zeros(4000, np.int64))
    np.testing.assert_array_equal(a, noise.apply(action, 0, np.arange(4000), np.zeros(4000, np.int64)))
    # Log-normal factor with mean 1: sample mean within 5 standard errors (sd of factor ~ 0.31).
    assert abs(a[:, 0].mean() - 1.0) < 5 * 0.31 / np.sqrt(4000)


def test_patients_from_draws_or_a_population_and_wrong_models_are_named():
    import medsim.models as registry
    from medsim.population import PosteriorDraws, sample_population

    draws = PosteriorDraws.from_prior(registry.get("pk_oral_1cmt"), 3, seed=1)
    params = core.make_params(penv.THEOPHYLLINE, posterior=draws, pool_size=5)
    assert params.pool.n_patients == 5 and params.pool.model.name == "pk_oral_1cmt"
    pop = sample_population(draws, 2, seed=4)
    assert core.make_params(penv.THEOPHYLLINE, population=pop).pool is pop
    with pytest.raises(penv.TaskError, match="draws are of model 'pk_oral_1cmt'"):
        core.make_params(penv.GLUCOSE, posterior=draws)
