"""Many episodes at once: the compiled functional core as a ``gymnasium.vector.VectorEnv``.

Every row is its own episode (virtual patient) with its own clock. With ``engine="jit"`` (default)
one ``step`` is one compiled call, ``jax.jit(jax.vmap(step))`` of
:mod:`medsim.policies.env.functional` over all rows: option, interval advance (the compiled
option loop's interval function), costs, measurements and autoresets, so thousands of patients
cost one dispatch. ``engine="host"`` steps the host core (:mod:`medsim.policies.env.core`: one
compiled :meth:`Simulator.advance` per step, the rest in numpy, resets between calls); it gives
the same numbers and runs a ``reward`` callable written with numpy (under ``"jit"`` the callable is
traced by JAX and must use array operators or ``jax.numpy``).

Autoreset follows gymnasium's ``NEXT_STEP`` mode (declared in ``metadata["autoreset_mode"]``):
the step after a row's episode ended resets that row, returns its first observation with reward
0, cost 0 and both flags False, and ignores its action. Row ``i`` plays episodes
``seed * num_envs + i``, then ``+ num_envs`` at each autoreset (the host engine takes the next
unused ids in the order rows end, which is the same when rows end together).

``info`` holds arrays over the rows (``cost``, ``cost_bridge``, ``cost_grid``, ``cost_end``,
``interval``, ``time``, ``time_in_target``, ``clipped``, ``episode``; per bound ``p_cross``,
``grid``, ``seen``, ``time_outside``, ``margin``, ``slack`` of shape ``(num_envs, J)``).

>>> envs = gymnasium.make_vec("medsim/Glucose-v0", num_envs=4096, vectorization_mode="vector_entry_point")
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from medsim.policies.env import core, functional
from medsim.policies.env.gym_env import action_space, flat_action
from medsim.policies.env.task import EnvTask, TaskError, resolve_task
from medsim.policies.env.vectors import check_action
from medsim.simulate.types import DoseEvents

ENGINES = ("jit", "host")


class MedsimVectorEnv(VectorEnv):
    """``num_envs`` episodes of a medsim task stepped together (see the module docstring).

    Parameters
    ----------
    task : str or EnvTask
    num_envs : int
    intervals : {"continuous", "discrete"}
    seed : int
        Seed of the patients and of every random stream.
    engine : {"jit", "host"}
        One compiled call per step (the functional core) or the host-batched core.
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
        engine: str = "jit",
        **options,
    ):
        if engine not in ENGINES:
            raise TaskError(f"engine must be one of {ENGINES}, got {engine!r}")
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
        self.engine = engine
        self._state: core.EnvState | functional.EnvState | None = None
        self._autoreset = np.zeros(self.num_envs, bool)
        self._next_episode = 0
        if engine == "jit":
            self._core = functional.FunctionalEnv(self.params)
            with jax.enable_x64(True):
                self._arrays = self._core.arrays(stride=self.num_envs)
                self._keys = jax.random.split(jax.random.key(seed), self.num_envs)  # unused: stride > 0
            self._reset_fn, self._step_fn = functional.batched(self._core, self.num_envs)

    @property
    def state(self) -> core.EnvState | None:
        """The rows' state as the host core's :class:`~medsim.policies.env.core.EnvState`."""
        if self.engine == "host" or self._state is None:
            return self._state
        return host_state(self._state)

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
        episodes = self._episodes(self.num_envs)
        self._autoreset = np.zeros(self.num_envs, bool)
        if self.engine == "jit":
            with jax.enable_x64(True):
                obs, self._state = self._reset_fn(jnp.asarray(episodes), self._arrays)
            return np.asarray(obs), {"episode": episodes}
        obs, self._state = core.reset(self.params, episodes)
        return obs, {"episode": self._state.episode.copy()}

    def step(self, actions: Any):
        if self._state is None:
            raise TaskError("call reset() before step()")
        flat = flat_action(self.task, self.intervals, actions)
        if flat.shape[0] != self.num_envs:
            raise TaskError(f"actions: expected {self.num_envs} rows, got {flat.shape[0]}")
        if self.engine == "jit":
            return self._step_jit(flat)
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

    def _step_jit(self, flat: np.ndarray):
        check_action(self.task, flat)
        if self._next_episode - 1 + self.num_envs >= 2**32:  # a row's next episode: its id + num_envs
            raise TaskError("episode ids must lie in [0, 2**32); reset with a smaller seed")
        before = self._state
        with jax.enable_x64(True):
            obs, state, reward, cost, done, info = self._step_fn(self._keys, before, jnp.asarray(flat), self._arrays)
            obs, reward, cost, done, info = jax.device_get((obs, reward, cost, done, info))
        if info["refused"].any():  # the host core raises the simulator's error, naming the episode
            rows = np.flatnonzero(info["refused"])
            core.step(self.params, host_state(jax.tree_util.tree_map(lambda a: a[rows], before)), flat[rows])
            raise TaskError(f"episodes {info['episode'][rows].tolist()}: the simulator refused the interval")
        self._state = state
        self._next_episode = max(self._next_episode, int(info["episode"].max()) + 1)
        out = {
            "cost": cost,
            "cost_bridge": info["cost_bridge"],
            "cost_grid": info["grid"].any(axis=1).astype(np.float64),
            "cost_end": info["seen"].any(axis=1).astype(np.float64),
            **{f: info[f] for f in ("interval", "time_in_target", "clipped", "episode")},
            "time": info["t_end"],
            **{f: info[f] for f in ("p_cross", "grid", "seen", "time_outside", "margin", "slack")},
        }
        return obs, reward, np.zeros(self.num_envs, bool), done, out


def host_state(state: functional.EnvState) -> core.EnvState:
    """Rows of the functional core's state as the host core's :class:`~medsim.policies.env.core.EnvState`."""
    host = jax.device_get(state)
    events = None
    if host.ev_time.shape[1]:
        events = DoseEvents.from_arrays(host.ev_time, host.ev_cmt, host.ev_amount)
    return core.EnvState(
        episode=np.asarray(host.episode, np.int64),
        x={k: jnp.asarray(v) for k, v in host.x.items()},
        t=np.asarray(host.t, np.float64),
        k=np.asarray(host.k, np.int64),
        measured={o: np.asarray(v) for o, v in host.measured.items()},
        announced={int(c): np.asarray(v) for c, v in host.announced.items()},
        last=np.asarray(host.last),
        events=events,
    )
