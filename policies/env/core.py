"""The functional core of the medsim environments: one option-loop iteration for a batch of episodes.

Pure functions on explicit state, in the ``init``/``step`` style of gymnax and blackjax::

    params = make_params(GLUCOSE, seed=0)                 # static: task, model, patients, compiled simulator
    obs, state = reset(params, episode=np.arange(4096))   # one episode (virtual patient) per row
    obs, state, out = step(params, state, action)         # action (n, treatments + 1) in physical units

A step is one iteration of the rollout's option loop (:mod:`policies.rollout`): the treatment is
given at the interaction time ``t``, the batch is advanced to ``t1 = min(t + interval, next
announced disturbance, horizon)`` by the one compiled :meth:`Simulator.advance` call (patients keep
their own clocks), and the next measurement is taken at ``t1``. Random numbers are the rollout's
counter-based streams keyed by ``(seed, stream, episode, k)``: an episode id plays the role of a
patient index, so episode ``i`` of the environment on patient pool ``P`` sees exactly the process
noise, measurement noise and meals that patient ``i`` of ``rollout(P, seed=seed)`` sees, and the
core needs no key argument. Episode ``e`` is patient ``e mod len(pool)`` of the pool.

The cost of a step is the violation of the task's safety spec over the interval just simulated:
``"bridge"`` (default) the Brownian-bridge probability that the continuous path left the safe
set, ``1 - exp(sum_j log_survival_j)``; ``"grid"`` the indicator that a sub-step grid point was
outside; ``"end"`` the indicator that the state at ``t1`` is outside (what a noise-free
measurement would see). Intervals that start before the spec's ``from`` cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import medsim.models as registry
from medsim.population import PosteriorDraws, VirtualPopulation, sample_population
from medsim.population.streams import Stream, patient_keys
from medsim.simulate.types import DoseEvents
from policies.env.task import EnvTask, TaskError
from policies.evaluate import default_scenario
from policies.protocol import Observation, Option
from policies.rollout import _dose_events, _measure, _Setup
from policies.scenarios import announced_at, next_event_after
from policies.spec import SafetySpec
from policies.spec_file import parse_spec

COSTS = ("bridge", "grid", "end")


@dataclass(frozen=True, eq=False)
class EnvParams:
    """Everything a step needs that does not change during an episode (built by :func:`make_params`).

    Attributes
    ----------
    task : EnvTask
    spec : SafetySpec
        Validated against the model; horizon in the model's time unit.
    pool : VirtualPopulation
        The patients episodes are drawn from (episode ``e`` is patient ``e mod len(pool)``).
    setup : rollout setup
        The compiled simulator, observe function, target bounds and tolerances the rollout uses.
    seed : int
        Seed of every random stream.
    cost : {"bridge", "grid", "end"}
    reward : callable or None
        ``reward(outcome) -> (n,)``; ``None``: time in target range / horizon.
    observation_names : tuple of str
        Meaning of each entry of the observation vector.
    """

    task: EnvTask
    spec: SafetySpec
    pool: VirtualPopulation
    setup: Any
    seed: int
    cost: str
    reward: Callable[..., np.ndarray] | None
    observation_names: tuple[str, ...]
    theta: Mapping[str, np.ndarray]
    n_events: int

    @property
    def model(self):
        return self.pool.model

    @property
    def horizon(self) -> float:
        return float(self.spec.horizon)

    @property
    def announced_cmts(self) -> tuple[int, ...]:
        scen = self.setup.scenario
        return (int(scen.cmt),) if scen is not None and scen.announced else ()


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


def _patients(
    model, posterior, population, *, mode: str, subject: str | None, pool_size: int, prior_draws: int, seed: int
) -> VirtualPopulation:
    if population is not None:
        pool = population if isinstance(population, VirtualPopulation) else VirtualPopulation.load(population)
        if pool.model.name != model.name:
            raise TaskError(f"population: patients are of model {pool.model.name!r}, the task needs {model.name!r}")
        return pool
    if posterior is None:
        draws = PosteriorDraws.from_prior(model, prior_draws, seed=seed)
    elif isinstance(posterior, PosteriorDraws):
        draws = posterior
    else:
        from inference.posterior import Posterior

        draws = Posterior.load(Path(posterior)).draws()
    if draws.model.name != model.name:
        raise TaskError(f"posterior: draws are of model {draws.model.name!r}, the task needs {model.name!r}")
    return sample_population(draws, pool_size, mode=mode, subject=subject, seed=seed)


def make_params(
    task: EnvTask,
    *,
    seed: int = 0,
    posterior: str | Path | PosteriorDraws | None = None,
    population: str | Path | VirtualPopulation | None = None,
    mode: str = "population",
    subject: str | None = None,
    pool_size: int = 1000,
    prior_draws: int = 200,
    cost: str = "bridge",
    reward: Callable[..., np.ndarray] | None = None,
    measurement_noise: bool = True,
) -> EnvParams:
    """Build the static part of an environment.

    Parameters
    ----------
    task : EnvTask
    seed : int
        Seed of the patients (prior draws, population sampling) and of every random stream.
    posterior : path or PosteriorDraws, optional
        A posterior file written by ``medsim fit`` (or its draws); default: the model's priors.
    population : path or VirtualPopulation, optional
        Use these patients instead of sampling (e.g. a saved population of digital twins).
    mode, subject : str
        ``"population"`` (new patients) or ``"personalized"`` (twins of ``subject``).
    pool_size : int
        Patients sampled from the posterior or prior.
    cost : {"bridge", "grid", "end"}
    reward : callable, optional
        ``reward(outcome: StepOutcome) -> (n,)``; default: time in target range / horizon.
    measurement_noise : bool

    Raises
    ------
    TaskError
        On an unknown cost, or patients or treatments that do not fit the task's model.
    """
    if cost not in COSTS:
        raise TaskError(f"cost must be one of {COSTS}, got {cost!r}")
    if reward is not None and not callable(reward):
        raise TaskError(f"reward must be a callable reward(outcome) -> (n,) array, got {type(reward).__name__}")
    model = registry.get(task.model)
    task.check_model(model)
    spec = parse_spec(task.spec, model=model)
    pool = _patients(
        model,
        posterior,
        population,
        mode=mode,
        subject=subject,
        pool_size=int(pool_size),
        prior_draws=int(prior_draws),
        seed=int(seed),
    )
    scenario = default_scenario(model, task.scenario, int(seed))
    setup = _Setup(
        model, spec.bounds, spec.horizon, task.dt, seed, scenario, measurement_noise, spec.target, None,
        "milstein", 10**6,
    )  # fmt: skip
    announced = (int(scenario.cmt),) if scenario is not None and scenario.announced else ()
    names = (
        *(f"measured:{o}" for o in setup.measured_obs),
        *(f"announced:cmt{c}" for c in announced),
        *(f"last:{t.label}" for t in task.treatments),
        "time_fraction",
        *(f"covariate:{c.name}" for c in model.covariates),
    )
    # numpy, not jax: gathering a batch's rows is a host index, not one dispatched gather per parameter.
    theta = {k: np.asarray(v, np.float32) for k, v in pool.simulation_parameters().items()}
    n_events = 0
    if scenario is not None:
        n_events = int(scenario.events(np.arange(1), spec.horizon, time_unit=model.time_unit).time.shape[1]) + 1
    return EnvParams(task, spec, pool, setup, int(seed), cost, reward, names, theta, n_events)


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


def features(names: tuple[str, ...], obs: Observation, last: np.ndarray) -> np.ndarray:
    """The feature vector ``(n, len(names))`` float32 named by ``names`` (:attr:`EnvParams.observation_names`).

    ``measured:<observable>``, ``announced:cmt<c>``, ``last:<treatment label>`` (the column of
    ``last`` in order of appearance), ``time_fraction`` (time / horizon) and
    ``covariate:<name>``. Shared by the environment and by learned policies evaluated in
    ``medsim risk`` (:mod:`policies.learned`), so a trained agent sees the same features in
    both. A missing measurement reads 0, and so does a noisy one below 0 (features are >= 0).

    Raises
    ------
    TaskError
        For a name of no known kind, or a covariate or observable the observation lacks.
    """
    cols, j = [], 0
    for name in names:
        kind, _, what = name.partition(":")
        if kind == "measured" and what in obs.measured:
            cols.append(np.nan_to_num(np.asarray(obs.measured[what], np.float64)))
        elif kind == "announced" and what.startswith("cmt"):
            cols.append(np.asarray(obs.announced.get(int(what[3:]), np.zeros(obs.n)), np.float64))
        elif kind == "last":
            cols.append(np.asarray(last, np.float64)[:, j])
            j += 1
        elif name == "time_fraction":
            cols.append(np.asarray(obs.time, np.float64) / float(obs.horizon))
        elif kind == "covariate" and what in obs.covariates:
            cols.append(np.asarray(obs.covariates[what], np.float64))
        else:
            raise TaskError(
                f"observation feature {name!r}: not one of measured:<observable>, announced:cmt<c>, last:<treatment>, "
                f"time_fraction, covariate:<name> available here (measured {sorted(obs.measured)}, covariates "
                f"{sorted(obs.covariates)})"
            )
    return np.maximum(np.stack(cols, axis=1), 0.0).astype(np.float32)


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


def option_action(params: EnvParams, option: Option) -> np.ndarray:
    """A medsim :class:`Option` as an action ``(n, treatments + 1)`` (amounts, then the interval).

    Raises
    ------
    TaskError
        When the option doses into a compartment or by a route the task does not declare.
    """
    n = int(np.shape(option.interval)[0])
    declared = {(t.kind, t.cmt) for t in params.task.treatments}
    for kind, amounts in (("bolus", option.bolus), ("rate", option.rate)):
        for cmt, a in amounts.items():
            if (kind, int(cmt)) not in declared and np.any(np.asarray(a) > 0):
                raise TaskError(f"option gives a {kind} into cmt {cmt}; the task declares {sorted(declared)}")
    cols = [
        np.broadcast_to(np.asarray((option.bolus if t.kind == "bolus" else option.rate).get(t.cmt, 0.0)), (n,))
        for t in params.task.treatments
    ]
    cols.append(np.asarray(option.interval, np.float64))
    return np.stack(cols, axis=1)


def action_option(task: EnvTask, action: np.ndarray) -> tuple[Option, np.ndarray]:
    """An action ``(n, treatments + 1)`` as an :class:`Option`, clipped to the task's declared bounds.

    Returns the option and, per row, whether clipping changed the action.
    """
    a = np.asarray(action, np.float64)
    if a.ndim != 2 or a.shape[1] != len(task.treatments) + 1:
        raise TaskError(f"action: expected shape (n, {len(task.treatments) + 1}) ({task.action_names}), got {a.shape}")
    if np.isnan(a).any():
        raise TaskError(f"action: NaN in row {int(np.flatnonzero(np.isnan(a).any(1))[0])} ({task.action_names})")
    c = np.clip(a, task.action_low.astype(np.float64), task.action_high.astype(np.float64))
    clipped = (c != a).any(axis=1)
    bolus: dict[int, np.ndarray] = {}
    rate: dict[int, np.ndarray] = {}
    for j, t in enumerate(task.treatments):
        target = bolus if t.kind == "bolus" else rate
        target[t.cmt] = target.get(t.cmt, 0.0) + c[:, j]
    return Option(interval=c[:, -1], bolus=bolus, rate=rate), clipped


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
    last = np.where(active[:, None], action_matrix(params, option), state.last)
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


def action_matrix(params: EnvParams, option: Option) -> np.ndarray:
    """The treatment part of :func:`option_action` (``(n, treatments)``)."""
    return option_action(params, option)[:, :-1]


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
