"""Minari datasets of logged medsim policies: contents, costs, and replay in the recovered environment."""

from __future__ import annotations

import numpy as np
import pytest

from medsim.policies.env.behaviour import BehaviourNoise
from medsim.policies.env.offline import write_minari


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dataset_holds_costs_and_replays_in_the_recovered_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds = write_minari(
        "medsim/theophylline/fixed-v0",
        "fixed:dose=300,every=12",
        task="Theophylline-v0",
        n_episodes=2,
        first_episode=5,
        noise=BehaviourNoise(sd=0.2, interval_sd=0.1),
        pool_size=4,
        prior_draws=4,
    )
    assert ds.total_episodes == 2
    ep = next(ds.iterate_episodes())
    steps = len(ep.rewards)
    assert ep.observations.shape[0] == steps + 1 and ep.actions.shape == (steps, 2)
    assert ep.infos["cost"].shape == (steps + 1,) and ep.infos["p_cross"].shape == (steps + 1, 2)
    assert ep.truncations[-1] and not ep.truncations[:-1].any()
    assert not np.allclose(ep.actions[:, 0], 300.0)  # behaviour noise moved the doses
    # The dataset's environment replays the episode: same patient, meals and noise for the same id.
    env = ds.recover_environment().unwrapped
    obs, _ = env.reset(options={"episode": 5})
    np.testing.assert_array_equal(obs, ep.observations[0])
    for j in range(steps):
        obs, reward, _, _, info = env.step(ep.actions[j])
        # Identical streams and inputs; the stored actions are float32, as the environment's space.
        np.testing.assert_allclose(obs, ep.observations[j + 1], rtol=1e-5)
        assert info["cost"] == pytest.approx(ep.infos["cost"][j + 1], abs=1e-5)
        assert reward == pytest.approx(ep.rewards[j], abs=1e-6)
