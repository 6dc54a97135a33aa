"""The compiled functional environment: jit+vmap agrees with the host environment, autoresets, chunk independence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medsim.policies.env import GLUCOSE, THEOPHYLLINE, TaskError, core
from medsim.policies.env.functional import FunctionalEnv
from medsim.policies.env.gym_env import MedsimEnv

KW = {"pool_size": 4, "prior_draws": 4}
STRIDE = 64


def _actions(n: int) -> np.ndarray:
    # Theophylline: 100-300 mg and the next look after 12 or 24 h, so rows end their 72 h episodes
    # after 6 or 3 steps and autoreset at different steps.
    i = np.arange(n)
    return np.stack([100.0 * (i % 3 + 1), np.where(i % 2, 12.0, 24.0)], axis=1)


@pytest.fixture(scope="module")
def theo():
    fenv = FunctionalEnv(core.make_params(THEOPHYLLINE, seed=1, **KW))
    with jax.enable_x64(True):
        params = fenv.arrays(stride=STRIDE)
    reset = jax.jit(jax.vmap(fenv.reset_to, in_axes=(0, None)))
    step = jax.jit(jax.vmap(fenv.step, in_axes=(0, 0, 0, None)))
    return fenv, params, reset, step


@pytest.fixture(scope="module")
def runs(theo):
    """Seven steps of batches of 2 and 64 rows (one compilation each, shared by the tests)."""
    return {n: _run(theo, n, 7) for n in (2, 64)}


def _run(theo, n: int, steps: int) -> list[tuple]:
    _, params, reset, step = theo
    keys = jax.random.split(jax.random.key(0), n)
    actions = jnp.asarray(_actions(n))
    with jax.enable_x64(True):
        obs, state = reset(jnp.arange(n), params)
        out = [(np.asarray(obs),)]
        for _ in range(steps):
            obs, state, reward, cost, done, info = step(keys, state, actions, params)
            out.append(jax.device_get((obs, reward, cost, done, info["episode"], info["p_cross"])))
    return out


def test_jit_vmap_core_reproduces_the_host_environment_and_autoresets(runs):
    # Same episode id, same counter-based streams (seed, stream, episode, k) and the same compiled
    # interval function: the rows are the host environment's numbers. Observations are float32 and
    # equal; reward and cost are float64 and may differ in the last bits (XLA's division and expm1
    # against numpy's), hence rtol = 1e-12, far below any modelling tolerance.
    batch = runs[2]
    for row in range(2):
        env = MedsimEnv(THEOPHYLLINE, seed=1, **KW)
        obs, _ = env.reset(options={"episode": row})
        np.testing.assert_array_equal(batch[0][0][row], obs)
        action = _actions(2)[row]
        ended_at = None
        for i, (o, r, c, d, episode, p_cross) in enumerate(batch[1:]):
            if ended_at is not None:  # NEXT_STEP: the step after the end starts episode row + stride
                assert episode[row] == row + STRIDE and r[row] == 0 and c[row] == 0 and not d[row]
                fresh, _ = env.reset(options={"episode": row + STRIDE})
                np.testing.assert_array_equal(o[row], fresh)
                break
            obs, reward, _, truncated, info = env.step(action)
            np.testing.assert_array_equal(o[row], obs)
            np.testing.assert_allclose([r[row], c[row]], [reward, info["cost"]], rtol=1e-12, atol=1e-300)
            np.testing.assert_allclose(p_cross[row], info["p_cross"], rtol=1e-12, atol=1e-300)
            assert d[row] == truncated and episode[row] == row
            if truncated:
                ended_at = i
        assert ended_at == (5 if row % 2 else 2)  # 6 steps of 12 h, 3 steps of 24 h


def test_a_row_does_not_depend_on_the_batch_it_runs_in(runs):
    # Rows are independent (per-row clocks, counter-based streams, episode + stride at autoreset):
    # the first two rows of a batch of 64 are those of a batch of 2, bit for bit.
    small, large = runs[2], runs[64]
    for a, b in zip(small, large, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y[:2])


def test_glucose_episode_start_has_the_host_meals_and_observation():
    # The meals of a new episode are drawn inside the compiled reset (MealScenario.meal_table with
    # jax.numpy): same times (float32) and observation as the host core for the same episodes.
    params = core.make_params(GLUCOSE, seed=2, pool_size=2, prior_draws=2)
    fenv = FunctionalEnv(params)
    episodes = np.array([0, 5, 2**31 + 7])
    with jax.enable_x64(True):
        obs, state = jax.jit(jax.vmap(fenv.reset_to, in_axes=(0, None)))(jnp.asarray(episodes), fenv.arrays())
    host_obs, host = core.reset(params, episodes)
    np.testing.assert_array_equal(np.asarray(obs), host_obs)
    host_time = np.asarray(host.events.time)
    finite = np.isfinite(host_time)
    used = int(finite.sum(axis=1).max())
    np.testing.assert_array_equal(np.asarray(state.ev_time)[:, :used], host_time[:, :used])
    assert not np.isfinite(np.asarray(state.ev_time)[:, used:]).any()


def test_tracing_outside_float64_is_refused(theo):
    fenv, *_ = theo
    with jax.enable_x64(False), pytest.raises(TaskError, match="enable_x64"):
        fenv.reset_to(0, None)


def test_unknown_vector_engine_is_refused():
    from medsim.policies.env.vector import MedsimVectorEnv

    with pytest.raises(TaskError, match="engine must be one of"):
        MedsimVectorEnv("Theophylline-v0", num_envs=2, engine="numpy", **KW)
