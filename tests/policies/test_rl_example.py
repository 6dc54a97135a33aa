"""The worked RL example at tiny size: trains, exports a loadable agent, records its training curve."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsim.policies.env import GLUCOSE
from medsim.policies.learned import load_learned
from medsim.policies.rl_example import main


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiny_training_run_exports_an_agent(tmp_path):
    main(["--out", str(tmp_path), "--timesteps", "64", "--envs", "4", "--minutes", "2", "--no-report"])
    agent = load_learned(tmp_path / "agent.json")
    assert agent.meta["training"]["timesteps"] >= 64
    curve = json.loads((tmp_path / "training_curve.json").read_text())
    assert curve["training"]["algorithm"].startswith("PPO-Lagrangian")
    assert (tmp_path / "training_curve.png").stat().st_size > 0
    # The exported actor maps any features into the task's declared bounds.
    x = np.abs(np.random.default_rng(0).standard_normal((16, len(agent.names)))) * agent.scale
    a = agent.action(x)
    assert np.all(a >= GLUCOSE.action_low - 1e-5) and np.all(a <= GLUCOSE.action_high + 1e-5)
