"""The functional core of the medsim environments: one option-loop iteration for a batch of episodes.

Pure functions on explicit state, in the ``init``/``step`` style of gymnax and blackjax::

    params = make_params(GLUCOSE, seed=0)                 # static: task, model, patients, compiled simulator
    obs, state = reset(params, episode=np.arange(4096))   # one episode (virtual patient) per row
    obs, state, out = step(params, state, action)         # action (n, treatments + 1) in physical units

A step is one iteration of the rollout's option loop (:mod:`medsim.policies.rollout`): the treatment is
given at the interaction time ``t``, the batch is advanced to ``t1 = min(t + interval, next
announced disturbance, horizon)`` by the one compiled :meth:`Simulator.advance` call (patients keep
their own clocks), and the next measurement is taken at ``t1``. Random numbers are the rollout's
counter-based streams keyed by ``(seed, stream, episode, k)``: an episode id plays the role of a
patient index, so episode ``i`` of the environment on patient pool ``P`` sees exactly the process
noise, measurement noise and meals that patient ``i`` of ``rollout(P, seed=seed)`` sees, and the
core needs no key argument. Episode ``e`` is patient ``e mod len(pool)`` of the pool.

:mod:`medsim.policies.env.functional` is this step compiled (one episode per call, for
``jax.jit``/``jax.vmap``, autoreset inside); it gives the same numbers on the same episode.

The cost of a step is the violation of the task's safety spec over the interval just simulated:
``"bridge"`` (default) the Brownian-bridge probability that the continuous path left the safe
set, ``1 - exp(sum_j log_survival_j)``; ``"grid"`` the indicator that a sub-step grid point was
outside; ``"end"`` the indicator that the state at ``t1`` is outside (what a noise-free
measurement would see). Intervals that start before the spec's ``from`` cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

from medsim.policies.env.params import COSTS, EnvParams, make_params
from medsim.policies.env.vectors import action_matrix, action_option, features
from medsim.policies.protocol import Observation
from medsim.policies.rollout_setup import _dose_events, _measure
from medsim.policies.scenarios import announced_at, next_event_after
from medsim.population.streams import Stream, patient_keys
from medsim.simulate.types import DoseEvents

# The core's API: the static part (params.py) and the pure reset/step functions here.
__all__ = [
    "COSTS",
    "EnvParams",
    "EnvState",
    "StepOutcome",
    "make_params",
    "observation_vector",
    "protocol_observation",
    "put_rows",
    "reset",
    "reset_rows",
    "step",
]


@dataclass(frozen=True)
class EnvState:
    """Per-episode state of ``n`` rows (every leaf has leading axis ``n``).

    ``measured`` and ``announced`` are what the agent sees at the current interaction ``t``;
    ``last`` the treatment it chose at the previous one (``(n, treatments)``, dose units).
    """

    episode: np.ndarray
    x: dict[str, jax.Array]
    t: np.ndarray
    k: np.ndarray
    measured: dict[str, np.ndarray]
    announced: dict[int, np.ndarray]
    last: np.ndarray
    events: DoseEvents | None


@dataclass(frozen=True)
class StepOutcome:
    """What one step produced, per row (``J`` safety bounds in the spec's order).

    Attributes
    ----------
    reward, cost : (n,)
    interval : (n,)
        Length of the interval just simulated (model time unit), for semi-MDP discounting.
    p_cross : (n, J)
        Brownian-bridge probability that the path crossed each bound in the interval.
    p_any : (n,)
        Probability that it left the safe set (``1 - exp(sum_j log_survival)``).
    grid, seen : (n, J) bool
        A grid point in ``(t, t1]`` was outside; the state at ``t1`` is outside.
    time_outside : (n, J)
        Time outside each bound on the sub-step grid (model time unit).
    time_in_target : (n,)
        Time inside the target range (model time unit).
    margin : (n, J)
        How far the observable moved toward each bound beyond its value at ``t`` (its unit): the
        tightening margin a check at ``t`` alone would have needed over this interval.
    slack : (n, J)
        Distance of the noise-free observable at ``t`` from each bound (negative = outside).
    truncated : (n,) bool
        The episode reached the horizon.
    clipped : (n,) bool
        The action was outside its declared bounds and was clipped.
    t_start, t_end : (n,)
    """

    reward: np.ndarray
    cost: np.ndarray
    interval: np.ndarray
    p_cross: np.ndarray
    p_any: np.ndarray
    grid: np.ndarray
    seen: np.ndarray
    time_outside: np.ndarray
    time_in_target: np.ndarray
    margin: np.ndarray
    slack: np.ndarray
    truncated: np.ndarray
    clipped: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray


def _events(params: EnvParams, episode: np.ndarray) -> DoseEvents | None:
    """Scenario events of these episodes, padded to the task's fixed width (so batches can be merged)."""
    scen = params.setup.scenario
    if scen is None:
        return None
    ev = scen.events(episode, params.horizon, time_unit=params.model.time_unit)
    width = max(params.n_events, int(ev.time.shape[1]))
    pad = width - int(ev.time.shape[1])
    fill = {"time": jnp.inf, "cmt": int(scen.cmt), "amount": 0.0, "rate": 0.0}
    return DoseEvents(
        **{f: jnp.pad(getattr(ev, f), ((0, 0), (0, pad)), constant_values=fill[f]) for f in ("time", "cmt", "amount")},
        rate=jnp.pad(ev.rate, ((0, 0), (0, pad))),
    )


def _slot(params: EnvParams, episode: np.ndarray) -> np.ndarray:
    return np.asarray(episode, np.int64) % params.pool.n_patients


def _theta(params: EnvParams, episode: np.ndarray) -> dict[str, np.ndarray]:
    idx = _slot(params, episode)
    return {k: v[idx] for k, v in params.theta.items()}


def _look(params: EnvParams, episode, x, theta, k) -> dict[str, np.ndarray]:
    """Measurements at interaction ``k`` (the rollout's measurement stream and residual error)."""
    setup = params.setup
    n = len(episode)
    true = {o: np.broadcast_to(np.asarray(v, np.float64), (n,)) for o, v in setup.observe(x, theta).items()}
    pop = params.pool.take(_slot(params, episode))
    return _measure(setup, pop, true, np.asarray(episode, np.int64), k, np.ones(n, bool))


def reset(params: EnvParams, episode: np.ndarray) -> tuple[np.ndarray, EnvState]:
    """Start episodes ``episode`` (global ids, ``(n,)`` int) at time 0 with a baseline measurement."""
    episode = np.asarray(episode, np.int64).reshape(-1)
    n = episode.size
    theta = _theta(params, episode)
    pop = params.pool.take(_slot(params, episode))
    x = {k: jnp.asarray(v, jnp.float32) for k, v in pop.initial_state().items()}
    params.setup.sim.check_step(x, theta, patients=episode)
    t, k = np.zeros(n), np.zeros(n, np.int64)
    measured = _look(params, episode, x, theta, k)
    events = _events(params, episode)
    announced = _announced(params, events, t)
    last = np.zeros((n, len(params.task.treatments)))
    state = EnvState(episode, x, t, k, measured, announced, last, events)
    return observation_vector(params, state), state


def _announced(params: EnvParams, events: DoseEvents | None, t: np.ndarray) -> dict[int, np.ndarray]:
    if not params.announced_cmts:
        return {}
    now = announced_at(events, t, params.setup.tol)
    return {c: np.asarray(now.get(c, np.zeros(t.size)), np.float64) for c in params.announced_cmts}


def observation_vector(params: EnvParams, state: EnvState) -> np.ndarray:
    """The agent's observation, ``(n, len(params.observation_names))`` float32."""
    return observation_from(params, protocol_observation(params, state), state.last)


def observation_from(params: EnvParams, obs: Observation, last: np.ndarray) -> np.ndarray:
    """The observation vector of a protocol :class:`Observation` and the last treatment."""
    return features(params.observation_names, obs, last)


def protocol_observation(params: EnvParams, state: EnvState) -> Observation:
    """The current interaction as a medsim policy sees it (to drive built-in policies in the env)."""
    pop = params.pool.take(_slot(params, state.episode))
    return Observation(
        time=state.t.copy(),
        measured=dict(state.measured),
        announced=dict(state.announced),
        covariates={c: np.asarray(v, np.float64) for c, v in pop.covariates.items()},
        active=state.t < params.horizon - params.setup.tol,
        patient=state.episode,
        index=state.k.copy(),
        subject=np.asarray(pop.subject),
        time_unit=params.model.time_unit,
        horizon=params.horizon,
    )


def step(params: EnvParams, state: EnvState, action: np.ndarray) -> tuple[np.ndarray, EnvState, StepOutcome]:
    """Give the chosen treatment and advance every row to its next interaction (module docstring).

    Rows already at the horizon stay where they are (a no-op interval of length 0).
    """
    setup, n = params.setup, state.t.size
    option, clipped = action_option(params.task, action)
    active = state.t < params.horizon - setup.tol
    t = state.t
    t1 = np.minimum(t + option.interval, params.horizon)
    if params.announced_cmts:
        t1 = np.minimum(t1, next_event_after(state.events, t, setup.tol))
    t1 = np.where(active, np.where(params.horizon - t1 <= setup.tol, params.horizon, t1), t)
    bolus = {c: np.where(active, option.bolus.get(c, np.zeros(n)), 0.0) for c in setup.cmts}
    rates = {c: np.where(active, option.rate.get(c, np.zeros(n)), 0.0) for c in setup.cmts}
    theta = _theta(params, state.episode)
    res = setup.sim.advance(
        state.x,
        theta,
        jnp.asarray(t, jnp.float32),
        jnp.asarray(t1, jnp.float32),
        key=patient_keys(params.seed, Stream.PROCESS, state.episode, state.k),
        events=_dose_events(setup, t, bolus, state.events),
        rates={c: jnp.asarray(r, jnp.float32) for c, r in rates.items()},
        patients=state.episode,
    )
    st = jax.tree_util.tree_map(np.asarray, res.stats)
    J, n_target = len(params.spec.bounds), len(setup.target_bounds)
    log_surv = st.log_survival[:, :J].astype(np.float64)
    length = t1 - t
    outside_target = st.time_outside[:, J : J + n_target].sum(axis=1).astype(np.float64)
    margin, slack = _margins(params, st)
    monitored = active & (t >= params.spec.monitor_from - setup.tol)
    p_any = np.where(monitored, -np.expm1(log_surv.sum(axis=1)), 0.0) + 0.0  # + 0.0: no -0.0
    grid = st.grid_violation[:, :J] & monitored[:, None]
    seen = st.end_violation[:, :J] & monitored[:, None]
    k1 = state.k + active
    measured = _look(params, state.episode, res.state, theta, k1)
    keep = ~active
    measured = {o: np.where(keep, state.measured[o], v) for o, v in measured.items()}
    last = np.where(active[:, None], action_matrix(params.task, option), state.last)
    new = replace(
        state, x=res.state, t=t1, k=k1, measured=measured, announced=_announced(params, state.events, t1), last=last
    )
    outcome = StepOutcome(
        reward=np.zeros(n),
        cost=np.zeros(n),
        interval=length,
        p_cross=np.where(monitored[:, None], -np.expm1(log_surv), 0.0) + 0.0,
        p_any=p_any,
        grid=grid,
        seen=seen,
        time_outside=np.where(monitored[:, None], st.time_outside[:, :J], 0.0),
        time_in_target=np.clip(length - outside_target, 0.0, None) if n_target else np.zeros(n),
        margin=margin,
        slack=slack,
        truncated=t1 >= params.horizon - setup.tol,
        clipped=clipped & active,
        t_start=t,
        t_end=t1,
    )
    cost = {"bridge": p_any, "grid": grid.any(axis=1), "end": seen.any(axis=1)}[params.cost]
    reward = outcome.time_in_target / params.horizon if params.reward is None else params.reward(outcome)
    reward = np.broadcast_to(np.asarray(reward, np.float64), (n,))
    outcome = replace(outcome, reward=np.where(active, reward, 0.0), cost=cost.astype(np.float64))
    return observation_vector(params, new), new, outcome


def _margins(params: EnvParams, st) -> tuple[np.ndarray, np.ndarray]:
    margin, slack = [], []
    for b in params.spec.bounds:
        start = st.obs_start[b.observable].astype(np.float64)
        if b.side == "upper":
            margin.append(np.maximum(st.obs_max[b.observable] - start, 0.0))
            slack.append(b.value - start)
        else:
            margin.append(np.maximum(start - st.obs_min[b.observable], 0.0))
            slack.append(start - b.value)
    return np.stack(margin, axis=1), np.stack(slack, axis=1)


def reset_rows(
    params: EnvParams, state: EnvState, rows: np.ndarray, episode: np.ndarray
) -> tuple[np.ndarray, EnvState]:
    """Start episodes ``episode`` in rows ``rows`` of ``state``; returns their observations and the new state.

    The fresh episodes are built in a batch padded to a power of two, so that the jitted helpers
    (noise streams, initial states) see few distinct shapes however many rows end together.
    """
    rows, episode = np.asarray(rows, np.int64), np.asarray(episode, np.int64)
    m = rows.size
    width = max(8, 1 << (m - 1).bit_length())
    obs, fresh = reset(params, np.concatenate([episode, np.full(width - m, episode[-1])]))
    return obs[:m], put_rows(state, rows, fresh)


def put_rows(state: EnvState, rows: np.ndarray, fresh: EnvState) -> EnvState:
    """``state`` with rows ``rows`` replaced by the first ``len(rows)`` rows of ``fresh``."""
    rows = np.asarray(rows, np.int64)

    m = rows.size

    def put(a, b):  # ``fresh`` may hold more rows than ``rows`` (a padded batch): its first m are used
        # On the host: a jax scatter would compile once per number of rows.
        out = np.array(a, copy=True)
        out[rows] = np.asarray(b)[:m]
        return jnp.asarray(out) if isinstance(a, jax.Array) else out

    return EnvState(
        episode=put(state.episode, fresh.episode),
        x={s: put(v, fresh.x[s]) for s, v in state.x.items()},
        t=put(state.t, fresh.t),
        k=put(state.k, fresh.k),
        measured={o: put(v, fresh.measured[o]) for o, v in state.measured.items()},
        announced={c: put(v, fresh.announced[c]) for c, v in state.announced.items()},
        last=put(state.last, fresh.last),
        events=None if state.events is None else jax.tree_util.tree_map(put, state.events, fresh.events),
    )
