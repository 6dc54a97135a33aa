"""The gymnasium environment: one virtual patient per episode, one option per step.

>>> import gymnasium
>>> env = gymnasium.make("medsim/Glucose-v0")   # from a checkout that is not installed: "medsim:medsim/Glucose-v0"
>>> obs, info = env.reset(seed=0)
>>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
>>> info["cost"], info["interval"], info["p_cross"]

Action (``Box``, physical units, clipped to the task's declared bounds): the amount of each
declared treatment (boluses given now, rates held until the next interaction) followed by the
time until the next interaction. With ``intervals="discrete"`` the action is a ``Dict`` of the
treatment ``Box`` and a ``Discrete`` index into ``task.intervals``. An announced disturbance
(a meal) ends the interval early, as in every medsim rollout, so the interval simulated
(``info["interval"]``) can be shorter than the one asked for; use it for semi-MDP discounting
(``gamma ** info["interval"]``).

Observation (``Box`` float32, names in ``env.unwrapped.observation_names``): the measurements
just taken (with residual error), announced disturbances, the last treatment, the fraction of
the horizon elapsed and the patient's covariates.

``reward`` is the task's (time in target range / horizon by default); ``terminated`` is always
False (the horizon is a time limit: ``truncated``); ``info["cost"]`` is the step's safety cost
(:mod:`medsim.policies.env.core`). :class:`SafetyAPI` turns the 5-tuple into Safety-Gymnasium's
``(obs, reward, cost, terminated, truncated, info)``.

Episodes: ``reset(seed=s)`` starts episode ``s`` (its patient, meals and noise are fixed by the
environment's ``seed`` and ``s``); later resets without a seed take the next episode id;
``reset(options={"episode": e})`` replays episode ``e``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from medsim.policies.env import core
from medsim.policies.env.task import EnvTask, TaskError, resolve_task


def action_space(task: EnvTask, intervals: str) -> spaces.Space:
    """The continuous ``Box`` or the discrete-interval ``Dict`` action space of ``task``."""
    if intervals == "continuous":
        return spaces.Box(task.action_low, task.action_high, dtype=np.float32)
    if intervals == "discrete":
        treat = spaces.Box(task.action_low[:-1], task.action_high[:-1], dtype=np.float32)
        return spaces.Dict({"treatment": treat, "interval": spaces.Discrete(len(task.intervals))})
    raise TaskError(f"intervals must be 'continuous' or 'discrete', got {intervals!r}")


def flat_action(task: EnvTask, intervals: str, action: Any) -> np.ndarray:
    """An action of :func:`action_space` as ``(n, treatments + 1)`` (batched if ``action`` is)."""
    if intervals == "discrete":
        treat = np.asarray(action["treatment"], np.float64)
        index = np.asarray(action["interval"])
        if np.any((index < 0) | (index >= len(task.intervals))):
            raise TaskError(f"action['interval']: expected an index in [0, {len(task.intervals)}), got {index}")
        interval = np.asarray(task.intervals, np.float64)[index]
        return np.concatenate([np.atleast_2d(treat), np.reshape(interval, (-1, 1))], axis=1)
    return np.atleast_2d(np.asarray(action, np.float64))


def step_info(params: core.EnvParams, out: core.StepOutcome, row: int) -> dict[str, Any]:
    """The ``info`` of one row of a step (scalars and per-bound arrays in the spec's order)."""
    return {
        "cost": float(out.cost[row]),
        "cost_bridge": float(out.p_any[row]),
        "cost_grid": float(out.grid[row].any()),
        "cost_end": float(out.seen[row].any()),
        "interval": float(out.interval[row]),
        "time": float(out.t_end[row]),
        "p_cross": out.p_cross[row].copy(),
        "grid": out.grid[row].copy(),
        "seen": out.seen[row].copy(),
        "time_outside": out.time_outside[row].copy(),
        "time_in_target": float(out.time_in_target[row]),
        "margin": out.margin[row].copy(),
        "slack": out.slack[row].copy(),
        "clipped": bool(out.clipped[row]),
    }


class MedsimEnv(gym.Env):
    """A medsim task as a gymnasium environment (see the module docstring).

    Parameters
    ----------
    task : str or EnvTask
        A registered task name (``"Glucose-v0"``) or a task.
    intervals : {"continuous", "discrete"}
    seed : int
        Seed of the patients and of every random stream.
    **options
        :func:`medsim.policies.env.core.make_params` keywords: ``posterior``, ``population``, ``mode``,
        ``subject``, ``pool_size``, ``prior_draws``, ``cost``, ``reward``, ``measurement_noise``.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, task: str | EnvTask = "Glucose-v0", *, intervals: str = "continuous", seed: int = 0, **options):
        self.task = resolve_task(task)
        self.intervals = intervals
        self.action_space = action_space(self.task, intervals)
        self.params = core.make_params(self.task, seed=seed, **options)
        dim = len(self.params.observation_names)
        self.observation_space = spaces.Box(0.0, np.inf, (dim,), np.float32)
        self._state: core.EnvState | None = None
        self._next_episode = 0

    @property
    def observation_names(self) -> tuple[str, ...]:
        return self.params.observation_names

    @property
    def bound_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.params.spec.bounds)

    @property
    def state(self) -> core.EnvState | None:
        """The current functional state (one row)."""
        return self._state

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        episode = self._next_episode
        if seed is not None:
            episode = int(seed)
        if options and "episode" in options:
            episode = int(options["episode"])
        if not 0 <= episode < 2**32:
            raise TaskError(f"episode id must lie in [0, 2**32), got {episode}")
        self._next_episode = episode + 1
        obs, self._state = core.reset(self.params, np.array([episode]))
        return obs[0], {"episode": episode, "time": 0.0}

    def step(self, action):
        if self._state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        flat = flat_action(self.task, self.intervals, action)
        obs, self._state, out = core.step(self.params, self._state, flat)
        info = step_info(self.params, out, 0)
        return obs[0], float(out.reward[0]), False, bool(out.truncated[0]), info


class SafetyAPI(gym.Wrapper):
    """Safety-Gymnasium's step signature: ``(obs, reward, cost, terminated, truncated, info)``.

    The cost is ``info["cost"]`` of the wrapped environment (which stays in ``info``).
    """

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, float(info["cost"]), terminated, truncated, info
