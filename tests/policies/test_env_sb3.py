"""The stable-baselines3 adapter: the compiled engine plays the host engine's episodes, number for number."""

from __future__ import annotations

import numpy as np
import pytest

from medsim.policies.env import GLUCOSE, TaskError, core
from medsim.policies.env.sb3 import SB3VecEnv


@pytest.fixture(scope="module")
def params():
    return core.make_params(GLUCOSE, seed=2, pool_size=4, prior_draws=4)


def _play(params, engine: str, actions: np.ndarray):
    scale = np.ones(len(params.observation_names))
    venv = SB3VecEnv(params, actions.shape[1], scale=scale, first_episode=7, engine=engine)
    venv.lam = 0.5
    obs, rows = [venv.reset()], []
    for a in actions:
        venv.step_async(a)
        o, r, d, infos = venv.step_wait()
        obs.append(o)
        terminal = [i.get("terminal_observation") for i in infos]
        rows.append((r, d, [t for t in terminal if t is not None], np.asarray(venv._state.episode).copy()))
    return np.array(obs), rows, venv.finished


@pytest.mark.slow  # two engines' compilations: ~15 s of CPU
@pytest.mark.filterwarnings("ignore::UserWarning")  # stable-baselines3: no render_mode declared
def test_jit_engine_restarts_rows_in_the_same_step_as_the_host_engine(params):
    # Long looks (up to 240 min; meals cut them) end every row's 24 h episode within the 14 steps,
    # so rows restart on the next episode ids (7, 8, then 9, 10) in both engines.
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, (14, 2, 3)).astype(np.float32)
    actions[:, :, 2] = 1.0
    host_obs, host_rows, host_done = _play(params, "host", actions)
    jit_obs, jit_rows, jit_done = _play(params, "jit", actions)
    assert len(host_done) >= 2 and any(d.any() for _, d, _, _ in host_rows)
    # Tolerance: the compiled core matches the host core up to float64 last-bit differences of
    # XLA's exp/expm1 (policies/env/functional.py), far below float32 observations' resolution.
    np.testing.assert_allclose(jit_obs, host_obs, rtol=1e-6, atol=1e-6)
    for (r1, d1, t1, e1), (r2, d2, t2, e2) in zip(host_rows, jit_rows, strict=True):
        np.testing.assert_allclose(r2, r1, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(d2, d1)
        np.testing.assert_array_equal(e2, e1)
        for a, b in zip(t1, t2, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.array(jit_done), np.array(host_done), rtol=1e-9, atol=1e-12)
    assert sorted(set(np.concatenate([e for *_, e in jit_rows]).tolist())) == [7, 8, 9, 10]


def test_unknown_engine_is_refused(params):
    with pytest.raises(TaskError, match="engine"):
        SB3VecEnv(params, 2, scale=np.ones(len(params.observation_names)), engine="gpu")
