"""Offline RL data: logged trajectories of any medsim policy as Minari datasets, costs included.

>>> ds = write_minari("medsim/glucose/basal-bolus-v0", "basal_bolus", n_episodes=100,
...                   noise=BehaviourNoise(sd=0.2, interval_sd=0.2))
>>> ep = next(ds.iterate_episodes()); ep.infos["cost"], ep.infos["interval"]

Episodes are simulated in one batch by the environment core (:func:`medsim.policies.env.behaviour.
behaviour_steps`): episode ``i`` is episode id ``first_episode + i`` of ``medsim/<Task>``
(patient, meals and noise fixed by the seed), so a dataset can be regenerated exactly and the
environment recovered from it (``ds.recover_environment()``) replays the same patients. Each
episode stores observations (``T + 1``), actions (``T``, physical units after behaviour noise and
clipping), rewards, terminations, truncations and ``infos`` with per-step ``cost``,
``cost_bridge``, ``cost_grid``, ``cost_end``, ``interval`` (semi-MDP step lengths), ``time`` and
per-bound ``p_cross``/``margin`` (entry 0 belongs to the reset and is 0). Datasets go where Minari
keeps them (``MINARI_DATASETS_PATH``, default ``~/.minari/datasets``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gymnasium
import numpy as np

from medsim.policies.env import core
from medsim.policies.env.behaviour import BehaviourNoise, behaviour_steps
from medsim.policies.env.gym_env import action_space
from medsim.policies.env.task import resolve_task
from medsim.policies.loading import parse_policy
from medsim.policies.protocol import PolicyContext

_INFO = ("cost", "p_any", "interval", "t_end")
_NAMES = {"p_any": "cost_bridge", "t_end": "time"}


def logged_episodes(
    params: core.EnvParams, policy: Any, episodes: np.ndarray, *, noise: BehaviourNoise | None = None
) -> list[dict[str, Any]]:
    """Run ``policy`` on ``episodes`` and cut the batch into one record per episode (see module docstring)."""
    steps = list(behaviour_steps(params, policy, episodes, noise=noise))
    out = []
    for i, episode in enumerate(np.asarray(episodes, np.int64)):
        rows = [s for s in steps if s.active[i]]
        obs = np.stack([rows[0].observation[i], *(s.next_observation[i] for s in rows)])
        infos = {_NAMES.get(k, k): np.array([0.0] + [float(getattr(s.outcome, k)[i]) for s in rows]) for k in _INFO}
        infos["cost_grid"] = np.array([0.0] + [float(s.outcome.grid[i].any()) for s in rows])
        infos["cost_end"] = np.array([0.0] + [float(s.outcome.seen[i].any()) for s in rows])
        for k in ("p_cross", "margin"):
            per = [getattr(s.outcome, k)[i] for s in rows]
            infos[k] = np.stack([np.zeros_like(per[0]), *per])
        out.append(
            {
                "episode": int(episode),
                "observations": obs,
                "actions": np.stack([s.action[i] for s in rows]).astype(np.float32),
                "rewards": np.array([float(s.outcome.reward[i]) for s in rows]),
                "terminations": np.zeros(len(rows), bool),
                "truncations": np.array([bool(s.outcome.truncated[i]) for s in rows]),
                "infos": infos,
            }
        )
    return out


def write_minari(
    dataset_id: str,
    policy: str,
    *,
    task: str = "Glucose-v0",
    n_episodes: int = 10,
    first_episode: int = 0,
    seed: int = 0,
    noise: BehaviourNoise | None = None,
    description: str | None = None,
    **env_options: Any,
):
    """Log ``n_episodes`` of the medsim policy spec ``policy`` on ``task`` as a Minari dataset.

    Parameters
    ----------
    dataset_id : str
        Minari id, e.g. ``"medsim/glucose/basal-bolus-v0"``.
    policy : str
        Any policy spec ``medsim risk --policy`` accepts (built-in, user code, ``learned:PATH``).
    task : str
        Registered task (``"Glucose-v0"``, ``"Theophylline-v0"``).
    n_episodes, first_episode : int
        Episode ids ``first_episode ... first_episode + n_episodes - 1``.
    seed : int
        The environment's seed (patients and every random stream).
    noise : BehaviourNoise, optional
        Exploration noise on the policy's treatments and intervals.
    **env_options
        :func:`medsim.policies.env.core.make_params` keywords (``posterior``, ``pool_size``, ...); they
        must be JSON-serialisable to be stored in the dataset's environment spec.

    Returns
    -------
    minari.MinariDataset
    """
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    spec_task = resolve_task(task)
    params = core.make_params(spec_task, seed=seed, **env_options)
    context = PolicyContext(model=params.model, bounds=params.spec.bounds, dt=spec_task.dt)
    behaviour = parse_policy(policy, context=context)
    episodes = np.arange(first_episode, first_episode + int(n_episodes), dtype=np.int64)
    buffers = [
        EpisodeBuffer(
            id=i,
            seed=int(rec["episode"]),
            observations=rec["observations"],
            actions=rec["actions"],
            rewards=list(rec["rewards"]),
            terminations=list(rec["terminations"]),
            truncations=list(rec["truncations"]),
            infos=rec["infos"],
        )
        for i, rec in enumerate(logged_episodes(params, behaviour, episodes, noise=noise))
    ]
    env_spec = gymnasium.spec(f"medsim/{task.split('/')[-1]}")
    env_spec = replace(env_spec, kwargs={**env_spec.kwargs, "seed": seed, **env_options})
    noise = noise or BehaviourNoise()
    text = description or (
        f"{behaviour.name} on medsim/{task} (seed {seed}, episodes {episodes[0]}-{episodes[-1]}), behaviour noise "
        f"sd={noise.sd:g} on treatments, {noise.interval_sd:g} on intervals; infos carry the safety cost "
        f"({params.cost}), its bridge/grid/end variants and the semi-MDP interval lengths"
    )
    return minari.create_dataset_from_buffers(
        dataset_id=dataset_id,
        buffer=buffers,
        env=env_spec,
        algorithm_name=behaviour.name,
        action_space=action_space(spec_task, "continuous"),
        observation_space=gymnasium.spaces.Box(0.0, np.inf, (len(params.observation_names),), np.float32),
        description=text,
    )
