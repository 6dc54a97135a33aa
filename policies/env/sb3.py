"""The batched core as a stable-baselines3 ``VecEnv``, with a Lagrangian cost penalty.

stable-baselines3 has its own vector API (same-step autoreset, ``terminal_observation`` in the
info); this adapter drives :mod:`medsim.policies.env.core` directly, so ``num_envs`` patients cost one
compiled advance per step. Actions are in ``[-1, 1]`` per dimension and mapped linearly onto the
task's declared bounds (the ``output="unit"`` convention of :mod:`medsim.policies.learned`);
observations are divided by a fixed ``scale``.

The reward handed to the learner is ``reward - lam * cost`` (PPO-Lagrangian: Ray, Achiam &
Amodei 2019, *Benchmarking Safe Exploration in Deep RL*); ``lam`` is updated by the caller from
the episodes' costs (:attr:`SB3VecEnv.finished`). Every info carries ``reward`` and ``cost``
unpenalised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from medsim.policies.env import core


class SB3VecEnv(VecEnv):
    """``num_envs`` episodes of ``params`` for stable-baselines3 (see the module docstring)."""

    def __init__(self, params: core.EnvParams, num_envs: int, *, scale: np.ndarray, first_episode: int = 0):
        self.params = params
        self.scale = np.asarray(scale, np.float64)
        t = len(params.task.treatments) + 1
        dim = len(params.observation_names)
        super().__init__(
            num_envs,
            spaces.Box(-np.inf, np.inf, (dim,), np.float32),
            spaces.Box(-np.ones(t, np.float32), np.ones(t, np.float32), dtype=np.float32),
        )
        self.lam = 0.0
        self._next = int(first_episode)
        self._actions: np.ndarray | None = None
        self._state: core.EnvState | None = None
        self._ret = np.zeros(num_envs)
        self._cost = np.zeros(num_envs)
        self.finished: list[tuple[float, float]] = []  # (return, cost) of each finished episode

    def physical(self, unit: np.ndarray) -> np.ndarray:
        low, high = self.params.task.action_low, self.params.task.action_high
        return low + 0.5 * (np.clip(unit, -1.0, 1.0) + 1.0) * (high - low)

    def _episodes(self, n: int) -> np.ndarray:
        ids = np.arange(self._next, self._next + n, dtype=np.int64)
        self._next += n
        return ids

    def reset(self):
        obs, self._state = core.reset(self.params, self._episodes(self.num_envs))
        self._ret[:] = 0.0
        self._cost[:] = 0.0
        return (obs / self.scale).astype(np.float32)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, np.float64)

    def step_wait(self):
        obs, state, out = core.step(self.params, self._state, self.physical(self._actions))
        self._ret += out.reward
        self._cost += out.cost
        done = out.truncated.copy()
        infos: list[dict[str, Any]] = [
            {"reward": float(out.reward[i]), "cost": float(out.cost[i]), "interval": float(out.interval[i])}
            for i in range(self.num_envs)
        ]
        obs = obs / self.scale
        rows = np.flatnonzero(done)
        if rows.size:
            for i in rows:
                infos[i]["terminal_observation"] = obs[i].astype(np.float32)
                infos[i]["TimeLimit.truncated"] = True
                self.finished.append((float(self._ret[i]), float(self._cost[i])))
            fresh_obs, state = core.reset_rows(self.params, state, rows, self._episodes(rows.size))
            obs[rows] = fresh_obs / self.scale
            self._ret[rows] = 0.0
            self._cost[rows] = 0.0
        self._state = state
        penalised = out.reward - self.lam * out.cost
        return obs.astype(np.float32), penalised.astype(np.float32), done, infos

    def close(self) -> None:
        self._state = None

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        return [getattr(self, method_name)(*args, **kwargs)] * len(self._get_indices(indices))

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._get_indices(indices))
