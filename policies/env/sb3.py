"""The batched core as a stable-baselines3 ``VecEnv``, with a Lagrangian cost penalty.

stable-baselines3 has its own vector API (same-step autoreset, ``terminal_observation`` in the
info); this adapter drives the environment's cores directly. With ``engine="jit"`` (default) a step
of all ``num_envs`` patients is one compiled call of :mod:`medsim.policies.env.functional` (the
engine of :class:`~medsim.policies.env.vector.MedsimVectorEnv`), and rows whose episode ended are
restarted in the same step by one compiled reset; ``engine="host"`` steps the host core
(:mod:`medsim.policies.env.core`: one compiled advance per step, the rest in numpy). Both play the
same episode ids in the same rows and give the same numbers up to float32 rounding.

Actions are in ``[-1, 1]`` per dimension and mapped linearly onto the task's declared bounds
(the ``output="unit"`` convention of :mod:`medsim.policies.learned`); observations are divided by a fixed ``scale``.

The reward handed to the learner is ``reward - lam * cost`` (PPO-Lagrangian: Ray, Achiam &
Amodei 2019, *Benchmarking Safe Exploration in Deep RL*); ``lam`` is updated by the caller from
the episodes' costs (:attr:`SB3VecEnv.finished`). Every info carries ``reward`` and ``cost``
unpenalised.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from medsim.policies.env import core, functional
from medsim.policies.env.task import TaskError
from medsim.policies.env.vector import ENGINES, host_state


def _restart(state: functional.EnvState, fresh: functional.EnvState, ended: jax.Array) -> functional.EnvState:
    """``state`` with the rows where ``ended`` replaced by ``fresh`` (same-step autoreset)."""

    def pick(new, old):
        return jnp.where(jnp.reshape(ended, (-1,) + (1,) * (jnp.ndim(old) - 1)), new, old)

    return jax.tree_util.tree_map(pick, fresh, state)


class SB3VecEnv(VecEnv):
    """``num_envs`` episodes of ``params`` for stable-baselines3 (see the module docstring).

    Parameters
    ----------
    params : EnvParams
    num_envs : int
    scale : (features,)
        Observations handed to the learner are divided by it.
    first_episode : int
        Episode id of row 0 at the first reset; later episodes take the next unused ids.
    engine : {"jit", "host"}
    """

    def __init__(
        self,
        params: core.EnvParams,
        num_envs: int,
        *,
        scale: np.ndarray,
        first_episode: int = 0,
        engine: str = "jit",
    ):
        if engine not in ENGINES:
            raise TaskError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.params = params
        self.engine = engine
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
        if engine == "jit":
            self._core = functional.FunctionalEnv(params)
            with jax.enable_x64(True):
                self._arrays = self._core.arrays(stride=num_envs)  # rows restart here, never inside a step
            self._keys = jax.random.split(jax.random.key(0), num_envs)  # unused: stride > 0
            self._reset_fn, self._step_fn = functional.batched(self._core, num_envs)
            self._restart = jax.jit(_restart)

    def physical(self, unit: np.ndarray) -> np.ndarray:
        low, high = self.params.task.action_low, self.params.task.action_high
        return low + 0.5 * (np.clip(unit, -1.0, 1.0) + 1.0) * (high - low)

    def _episodes(self, n: int) -> np.ndarray:
        ids = np.arange(self._next, self._next + n, dtype=np.int64)
        self._next += n
        return ids

    def reset(self):
        if self.engine == "jit":
            with jax.enable_x64(True):
                obs, self._state = self._reset_fn(jnp.asarray(self._episodes(self.num_envs)), self._arrays)
            obs = np.asarray(obs, np.float64)
        else:
            obs, self._state = core.reset(self.params, self._episodes(self.num_envs))
        self._ret[:] = 0.0
        self._cost[:] = 0.0
        return (obs / self.scale).astype(np.float32)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, np.float64)

    def _step_host(self, action: np.ndarray):
        obs, state, out = core.step(self.params, self._state, action)
        return obs, state, out.reward, out.cost, out.truncated.copy(), out.interval

    def _step_jit(self, action: np.ndarray):
        before = self._state
        with jax.enable_x64(True):
            obs, state, reward, cost, done, info = self._step_fn(self._keys, before, jnp.asarray(action), self._arrays)
            obs, reward, cost, done, interval, bad = jax.device_get(
                (obs, reward, cost, done, info["interval"], info["refused"])
            )
        if bad.any():  # the host core raises the simulator's error, naming the episode
            rows = np.flatnonzero(bad)
            core.step(self.params, host_state(jax.tree_util.tree_map(lambda a: a[rows], before)), action[rows])
            raise TaskError(f"episodes {np.asarray(before.episode)[rows].tolist()}: the simulator refused the interval")
        return np.asarray(obs, np.float64), state, reward, cost, np.asarray(done, bool), interval

    def _reset_rows(self, state, rows: np.ndarray):
        """First observations and state of the next episodes in ``rows`` (the others unchanged)."""
        if self.engine == "host":
            return core.reset_rows(self.params, state, rows, self._episodes(rows.size))
        ids = np.zeros(self.num_envs, np.int64)
        ids[rows] = self._episodes(rows.size)
        ended = np.zeros(self.num_envs, bool)
        ended[rows] = True
        with jax.enable_x64(True):
            fresh_obs, fresh = self._reset_fn(jnp.asarray(ids), self._arrays)
            state = self._restart(state, fresh, jnp.asarray(ended))
        return np.asarray(fresh_obs, np.float64)[rows], state

    def step_wait(self):
        action = self.physical(self._actions)
        step = self._step_jit if self.engine == "jit" else self._step_host
        obs, state, reward, cost, done, interval = step(action)
        self._ret += reward
        self._cost += cost
        infos: list[dict[str, Any]] = [
            {"reward": float(reward[i]), "cost": float(cost[i]), "interval": float(interval[i])}
            for i in range(self.num_envs)
        ]
        obs = obs / self.scale
        rows = np.flatnonzero(done)
        if rows.size:
            for i in rows:
                infos[i]["terminal_observation"] = obs[i].astype(np.float32)
                infos[i]["TimeLimit.truncated"] = True
                self.finished.append((float(self._ret[i]), float(self._cost[i])))
            fresh_obs, state = self._reset_rows(state, rows)
            obs[rows] = fresh_obs / self.scale
            self._ret[rows] = 0.0
            self._cost[rows] = 0.0
        self._state = state
        penalised = reward - self.lam * cost
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
