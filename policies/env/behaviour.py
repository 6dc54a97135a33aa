"""Any medsim policy as a behaviour policy of the environment, with optional exploration noise.

:func:`behaviour_steps` drives a batch of episodes through the functional core
(:mod:`medsim.policies.env.core`) with a medsim :class:`~medsim.policies.protocol.Policy`: at each interaction
the policy sees the protocol :class:`~medsim.policies.protocol.Observation` a rollout would give it, its
option becomes an action (treatment amounts and interval), noise is added, and the core steps.
Without noise the numbers are those of :func:`medsim.policies.rollout.rollout` on the same patients and
seed (episode ``i`` = patient ``i``), which the tests check.

Behaviour noise (for offline-RL coverage): each treatment amount is multiplied by
``exp(sd * z - sd^2 / 2)`` (log-normal, mean-preserving, stays >= 0) and each interval likewise
with ``interval_sd``; the ``z`` come from the counter-based policy stream
``(seed, POLICY, episode, k)``, so logged datasets are reproducible and chunk-independent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from medsim.policies.env import core
from medsim.policies.env.vectors import option_action
from medsim.policies.protocol import Policy, for_model
from medsim.population.streams import Stream, patient_normal


@dataclass(frozen=True)
class BehaviourNoise:
    """Log-normal multiplicative noise on treatment amounts (``sd``) and intervals (``interval_sd``)."""

    sd: float = 0.0
    interval_sd: float = 0.0

    def __post_init__(self) -> None:
        if not (self.sd >= 0 and self.interval_sd >= 0):
            raise ValueError(f"behaviour noise: sd and interval_sd must be >= 0, got {self.sd}, {self.interval_sd}")

    def apply(self, action: np.ndarray, seed: int, episode: np.ndarray, k: np.ndarray) -> np.ndarray:
        if self.sd == 0 and self.interval_sd == 0:
            return action
        z = patient_normal(seed, Stream.POLICY, episode, k, width=action.shape[1])
        sd = np.full(action.shape[1], self.sd)
        sd[-1] = self.interval_sd
        return action * np.exp(sd * z - 0.5 * sd**2)


@dataclass(frozen=True)
class LoggedStep:
    """One step of a batch: observation before, action taken (after noise and clipping), outcome."""

    observation: np.ndarray
    action: np.ndarray
    outcome: core.StepOutcome
    next_observation: np.ndarray
    active: np.ndarray


def behaviour_steps(
    params: core.EnvParams,
    policy: Policy,
    episodes: np.ndarray,
    *,
    noise: BehaviourNoise | None = None,
    max_steps: int = 100_000,
) -> Iterator[LoggedStep]:
    """Run ``policy`` on ``episodes`` (global ids) until every one reaches the horizon.

    Yields one :class:`LoggedStep` per interaction of the batch; rows already at the horizon
    have ``active`` False (their outcome is a zero-length no-op).

    Raises
    ------
    PolicyError
        When the policy returns an unusable option.
    TaskError
        When its option uses a treatment the task does not declare.
    RuntimeError
        When the episodes do not reach the horizon within ``max_steps`` interactions.
    """
    noise = noise or BehaviourNoise()
    policy = for_model(policy, params.model)  # model defaults (e.g. the glucose observable) from the model
    episodes = np.asarray(episodes, np.int64)
    obs_vec, state = core.reset(params, episodes)
    pstate = policy.init(
        episodes.size, seed=int(np.random.SeedSequence([params.seed, int(Stream.POLICY)]).generate_state(1)[0])
    )
    for j in range(max_steps):
        obs = core.protocol_observation(params, state)
        if not obs.active.any():
            return
        rng = np.random.default_rng([params.seed, int(Stream.POLICY), 0, j])
        pstate, option = policy.act(pstate, obs, rng=rng)
        option = option.validated(obs.n, params.model, obs.active, policy.name)
        action = noise.apply(option_action(params.task, option), params.seed, episodes, state.k)
        action = np.clip(action, params.task.action_low, params.task.action_high)
        next_vec, state, outcome = core.step(params, state, action)
        yield LoggedStep(obs_vec, action, outcome, next_vec, obs.active)
        obs_vec = next_vec
    raise RuntimeError(f"policy {policy.name!r} did not reach the horizon within {max_steps} interactions")
