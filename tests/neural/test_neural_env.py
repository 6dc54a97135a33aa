"""A neural checkpoint as the RL environment's patient source (``posterior=CHECKPOINT``).

Here, not in tests/policies, because the tiny neural model's fixtures live in this folder's conftest.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from medsim.inference.neural import load_checkpoint, save_checkpoint
from medsim.models.gate import MiscalibratedModelError
from medsim.models.neural import sample_neural_population
from medsim.policies.env import GLUCOSE, THEOPHYLLINE, TaskError, core


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    """The untrained tiny model (observable ``conc``, oral doses into cmt 1, hours), never calibrated."""
    return save_checkpoint(model, tmp_path_factory.mktemp("neural_env") / "tiny", provenance={"cohort": "tiny-pk"})


def test_checkpoint_patients_are_those_of_medsim_sample(checkpoint):
    params = core.make_params(THEOPHYLLINE, seed=4, posterior=checkpoint, pool_size=4, force_uncalibrated=True)
    direct = sample_neural_population(load_checkpoint(checkpoint).model, 4, seed=4, force=True)
    assert params.model.name == "tiny" and params.pool.n_patients == 4
    for name, values in direct.params.items():  # the same loader and sampler: identical draws
        np.testing.assert_array_equal(params.pool.params[name], values)
    assert params.pool.provenance["checkpoint"] == str(checkpoint)
    assert params.pool.provenance["forced"] is True  # the gate's override is recorded, as for medsim risk --force


def test_gymnasium_environment_steps_a_neural_patient(checkpoint):
    env = gymnasium.make(
        "medsim/Theophylline-v0", posterior=str(checkpoint), pool_size=2, force_uncalibrated=True
    ).unwrapped
    assert env.observation_names[0] == "measured:conc"
    obs, _ = env.reset(seed=1)
    costs = []
    for _ in range(3):  # 320 mg now, next look in 4 h
        obs, reward, _, _, info = env.step(np.array([320.0, 4.0], np.float32))
        assert np.all(np.isfinite(obs)) and 0.0 <= reward <= 1.0 and 0.0 <= info["cost"] <= 1.0
        costs.append(info["cost"])
        assert info["interval"] == pytest.approx(4.0)
    assert costs[0] == 0.0  # the spec monitors from 12 h: the first interval (0-4 h) costs nothing


def test_uncalibrated_checkpoint_is_refused_without_force(checkpoint):
    with pytest.raises(MiscalibratedModelError):
        core.make_params(THEOPHYLLINE, seed=0, posterior=checkpoint, pool_size=2)


def test_task_the_neural_model_cannot_run_says_why(checkpoint):
    with pytest.raises(TaskError, match=r"runs in 'h'.*'min'"):
        core.make_params(GLUCOSE, seed=0, posterior=checkpoint, pool_size=2, force_uncalibrated=True)
    with pytest.raises(TaskError, match="personalized"):
        core.make_params(
            THEOPHYLLINE, posterior=checkpoint, pool_size=2, force_uncalibrated=True, mode="personalized", subject="1"
        )


def test_neural_twins_run_as_a_population(checkpoint, cohort):
    loaded = load_checkpoint(checkpoint)
    twins = sample_neural_population(
        loaded.model, 2, seed=0, mode="personalized", subject="2", subjects=list(cohort.subjects), force=True
    )
    params = core.make_params(THEOPHYLLINE, seed=0, population=twins)
    obs, state = core.reset(params, np.arange(2))
    obs, state, out = core.step(params, state, np.array([[320.0, 6.0], [0.0, 6.0]]))
    assert params.pool.mode == "personalized" and np.all(np.isfinite(obs)) and np.all(out.interval == 6.0)
