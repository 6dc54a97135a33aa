"""The vector environment: gymnasium's vector API, NEXT_STEP autoreset, agreement with single envs."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import medsim.policies.env  # noqa: F401  (registers the environments)
from medsim.policies.env import TaskError
from medsim.policies.env.vector import MedsimVectorEnv

KW = {"pool_size": 4, "prior_draws": 4}
DOSE = np.array([300.0, 24.0])  # theophylline: 300 mg, next look in 24 h -> 3 steps to the 72 h horizon


@pytest.fixture(scope="module")
def theo():
    return gymnasium.make_vec("medsim/Theophylline-v0", num_envs=3, vectorization_mode="vector_entry_point", **KW)


def test_declares_next_step_autoreset_and_batched_spaces(theo):
    assert theo.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert theo.action_space.shape == (3, 2) and theo.observation_space.shape[0] == 3


def test_rows_match_single_environments_and_autoreset_next_step(theo):
    obs, info = theo.reset(seed=2)  # episodes 6, 7, 8
    np.testing.assert_array_equal(info["episode"], [6, 7, 8])
    single = gymnasium.make("medsim/Theophylline-v0", **KW).unwrapped
    o1, _ = single.reset(options={"episode": 7})
    np.testing.assert_array_equal(obs[1], o1)
    actions = np.tile(DOSE, (3, 1))
    for _ in range(3):
        obs, reward, terminated, truncated, info = theo.step(actions)
        o1, r1, _, trunc1, i1 = single.step(DOSE)
        assert truncated[1] == trunc1
        # Same episode id, same counter-based streams: the row is the single environment, bit for bit
        # up to the batch the one compiled kernel ran in (float32 arithmetic is per row).
        np.testing.assert_allclose(obs[1], o1, rtol=1e-6)
        assert reward[1] == pytest.approx(r1, rel=1e-6) and info["cost"][1] == pytest.approx(i1["cost"], abs=1e-6)
    assert truncated.all() and not terminated.any()
    obs, reward, terminated, truncated, info = theo.step(actions)  # NEXT_STEP: this step resets
    np.testing.assert_array_equal(info["episode"], [9, 10, 11])
    assert (reward == 0).all() and (info["cost"] == 0).all() and not truncated.any()
    fraction = theo.unwrapped.params.observation_names.index("time_fraction")
    np.testing.assert_array_equal(obs[:, fraction], 0.0)


def test_bad_batch_is_refused(theo):
    theo.reset(seed=0)
    with pytest.raises(TaskError, match="expected 3 rows"):
        theo.step(np.tile(DOSE, (2, 1)))
    with pytest.raises(TaskError, match="num_envs"):
        MedsimVectorEnv("Theophylline-v0", num_envs=0, **KW)


def test_row_resets_are_built_in_padded_batches(theo, monkeypatch):
    # Regression: resetting a varying number of rows compiled the jitted noise and initial-state
    # helpers once per count (seconds each, every few steps of training). Rows are now reset in a
    # batch padded to a power of two (at least 8).
    from medsim.policies.env import core

    sizes = []
    real_reset = core.reset

    def counting(params, episode):
        sizes.append(len(episode))
        return real_reset(params, episode)

    theo.reset(seed=0)
    state = theo.unwrapped.state
    monkeypatch.setattr(core, "reset", counting)
    for m in (1, 2, 3):
        obs, new = core.reset_rows(theo.unwrapped.params, state, np.arange(m), np.arange(100, 100 + m))
        assert obs.shape[0] == m
        np.testing.assert_array_equal(new.episode[:m], np.arange(100, 100 + m))
        np.testing.assert_array_equal(new.episode[m:], state.episode[m:])
    assert sizes == [8, 8, 8]
