"""Many episodes at once: the functional core as a ``gymnasium.vector.VectorEnv``.

Every row is its own episode (virtual patient) with its own clock; one ``step`` is one compiled
:meth:`Simulator.advance` over the whole batch (:mod:`medsim.policies.env.core`), so thousands of
patients cost about as much host work as one. Autoreset follows gymnasium's ``NEXT_STEP`` mode
(declared in ``metadata["autoreset_mode"]``): the step after a row's episode ended resets that
row (the next episode id), returns its first observation with reward 0, cost 0 and both flags
False, and ignores its action.

``info`` holds arrays over the rows (``cost``, ``cost_bridge``, ``cost_grid``, ``cost_end``,
``interval``, ``time``, ``time_in_target``, ``clipped``, ``episode``; per bound ``p_cross``,
``grid``, ``seen``, ``time_outside``, ``margin``, ``slack`` of shape ``(num_envs, J)``).

>>> envs = gymnasium.make_vec("medsim/Glucose-v0", num_envs=4096, vectorization_mode="vector_entry_point")
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from medsim.policies.env import core
from medsim.policies.env.gym_env import action_space, flat_action
from medsim.policies.env.task import EnvTask, TaskError, resolve_task


class MedsimVectorEnv(VectorEnv):
    """``num_envs`` episodes of a medsim task stepped together (see the module docstring).

    Parameters
    ----------
    task : str or EnvTask
    num_envs : int
    intervals : {"continuous", "discrete"}
    seed : int
        Seed of the patients and of every random stream.
    **options
        :func:`medsim.policies.env.core.make_params` keywords.
    """

    metadata: ClassVar[dict] = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(
        self,
        task: str | EnvTask = "Glucose-v0",
        num_envs: int = 1,
        *,
        intervals: str = "continuous",
        seed: int = 0,
        **options,
    ):
        if isinstance(num_envs, bool) or not (isinstance(num_envs, int | np.integer) and num_envs >= 1):
            raise TaskError(f"num_envs must be an int >= 1, got {num_envs!r}")
        self.task = resolve_task(task)
        self.intervals = intervals
        self.num_envs = int(num_envs)
        self.params = core.make_params(self.task, seed=seed, **options)
        self.single_action_space = action_space(self.task, intervals)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        dim = len(self.params.observation_names)
        self.single_observation_space = spaces.Box(0.0, np.inf, (dim,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._state: core.EnvState | None = None
        self._autoreset = np.zeros(self.num_envs, bool)
        self._next_episode = 0

    @property
    def state(self) -> core.EnvState | None:
        return self._state

    def _episodes(self, count: int) -> np.ndarray:
        ids = self._next_episode + np.arange(count, dtype=np.int64)
        if ids.size and ids[-1] >= 2**32:
            raise TaskError("episode ids must lie in [0, 2**32); reset with a smaller seed")
        self._next_episode += count
        return ids

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start ``num_envs`` episodes: ids ``seed * num_envs + i`` (or the next unused ids)."""
        super().reset(seed=seed)
        if seed is not None:
            self._next_episode = int(seed) * self.num_envs
        obs, self._state = core.reset(self.params, self._episodes(self.num_envs))
        self._autoreset = np.zeros(self.num_envs, bool)
        return obs, {"episode": self._state.episode.copy()}

    def step(self, actions: Any):
        if self._state is None:
            raise TaskError("call reset() before step()")
        flat = flat_action(self.task, self.intervals, actions)
        if flat.shape[0] != self.num_envs:
            raise TaskError(f"actions: expected {self.num_envs} rows, got {flat.shape[0]}")
        obs, state, out = core.step(self.params, self._state, flat)
        reward, cost, truncated = out.reward.copy(), out.cost.copy(), out.truncated.copy()
        rows = np.flatnonzero(self._autoreset)
        if rows.size:  # NEXT_STEP autoreset: these rows ended last step; their action is ignored
            fresh_obs, state = core.reset_rows(self.params, state, rows, self._episodes(rows.size))
            obs = obs.copy()
            obs[rows] = fresh_obs
            reward[rows], cost[rows], truncated[rows] = 0.0, 0.0, False
        self._state = state
        self._autoreset = truncated.copy()
        info = {
            "cost": cost,
            "cost_bridge": out.p_any,
            "cost_grid": out.grid.any(axis=1).astype(np.float64),
            "cost_end": out.seen.any(axis=1).astype(np.float64),
            "interval": out.interval,
            "time": out.t_end,
            "time_in_target": out.time_in_target,
            "clipped": out.clipped,
            "episode": state.episode.copy(),
            "p_cross": out.p_cross,
            "grid": out.grid,
            "seen": out.seen,
            "time_outside": out.time_outside,
            "margin": out.margin,
            "slack": out.slack,
        }
        terminated = np.zeros(self.num_envs, bool)
        return obs, reward, terminated, truncated, info
