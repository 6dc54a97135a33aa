"""The environment as pure JAX functions, gymnax style: ``reset(key, params)`` and ``step(key, state, action, params)``.

One episode per call, on arrays only, so a batch is ``jax.vmap`` and a training loop is ``jax.jit``::

    fenv = FunctionalEnv(make_params(GLUCOSE, seed=0))   # static: task, spec, compiled interval function
    params = fenv.arrays(stride=4096)                    # arrays: the patient pool (a pytree)
    with jax.enable_x64(True):                           # float64 clocks, as the compiled option loop
        reset = jax.jit(jax.vmap(fenv.reset_to, in_axes=(0, None)))
        step = jax.jit(jax.vmap(fenv.step, in_axes=(0, 0, 0, None)))
        obs, state = reset(jnp.arange(4096), params)
        obs, state, reward, cost, done, info = step(keys, state, actions, params)

The step is the one of :mod:`medsim.policies.env.core` (its docstring defines the interval, the
cost and the reward), computed by the compiled option loop's pieces instead of host code: the
interval is planned and advanced by :func:`medsim.policies.device_interval.advance` (the
simulator's compiled interval function, Brownian-bridge statistics included), the noisy
measurement is :func:`medsim.policies.array_step.measure_expr`, the meals of an episode come from
:meth:`medsim.policies.scenarios.MealScenario.meal_table` and the observation from
:func:`medsim.policies.env.vectors.features`. Trace it under ``jax.enable_x64(True)``.

Random numbers are the rollout's counter-based streams ``(seed, stream, episode, k)``, not the
``key`` argument: episode ``e`` sees the process noise, measurement noise and meals of patient ``e``
of a rollout and of :class:`~medsim.policies.env.gym_env.MedsimEnv` (so the numbers match the host
environment's up to float64 last-bit differences of XLA's ``exp``/``expm1``, which float32
observations absorb). The keys only choose episode ids: ``reset(key, params)`` starts a random
episode; at autoreset a row's next episode is ``episode + params.stride`` (``stride > 0``, what
:class:`~medsim.policies.env.vector.MedsimVectorEnv` uses) or drawn from ``key`` (``stride == 0``).

Autoreset is gymnasium's ``NEXT_STEP`` mode, inside the step: ``done`` is returned at the step that
reaches the horizon; the next step of that row ignores its action and returns the first
observation of the next episode with reward 0, cost 0 and ``done`` False. A whole batch therefore
steps in one compiled call whichever rows end.
"""

from __future__ import annotations

from dataclasses import fields, replace
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from medsim.policies.array_step import isolated, measure_expr
from medsim.policies.device_interval import Clock, Inputs, Layout, advance, refused
from medsim.policies.env.core import StepOutcome
from medsim.policies.env.params import EnvParams
from medsim.policies.env.task import TaskError
from medsim.policies.env.vectors import features
from medsim.policies.protocol import Observation
from medsim.policies.scenarios import MealScenario
from medsim.population.streams import Stream, traced_patient_keys

F32, F64 = jnp.float32, jnp.float64


class EnvArrays(NamedTuple):
    """The array parameters of :meth:`FunctionalEnv.step` (the patient pool, ``P`` patients).

    Episode ``e`` is patient ``e mod P``. ``stride``: a row's next episode at autoreset is its
    episode + ``stride``; 0 draws it from the step's key.
    """

    theta: dict  # parameter -> (P,) float32
    x0: dict  # state -> (P,) float32 start state
    covariates: dict  # name -> (P,) float64
    res_add: dict  # observable -> (P,) float32 residual parameters (absent: the model's default)
    res_prop: dict
    stride: jax.Array  # () int64


class EnvState(NamedTuple):
    """One episode's state (``E`` scenario events, ``T`` treatments); batched by ``vmap``."""

    episode: jax.Array  # () int64
    x: dict  # state -> () float32
    t: jax.Array  # () float64
    k: jax.Array  # () int64 interaction counter
    measured: dict  # observable -> () float64 (the measurement at t)
    announced: dict  # cmt -> () float64 (announced disturbance at t)
    last: jax.Array  # (T,) float64 the previous treatment
    ev_time: jax.Array  # (E,) float32 scenario event times (+inf: none)
    ev_cmt: jax.Array  # (E,) int32
    ev_amount: jax.Array  # (E,) float32
    done: jax.Array  # () bool: the episode ended at the previous step (NEXT_STEP autoreset)


def _row(tree):
    """Scalars (one episode) as batches of one row, the shape the compiled loop's pieces take."""
    return jax.tree_util.tree_map(lambda a: jnp.reshape(a, (1, *jnp.shape(a))), tree)


def _unrow(tree):
    return jax.tree_util.tree_map(lambda a: a[0], tree)


class FunctionalEnv:
    """The pure ``reset``/``step`` of a task (see the module docstring).

    Parameters
    ----------
    params : EnvParams
        The static part (:func:`medsim.policies.env.params.make_params`).

    Raises
    ------
    TaskError
        For a scenario other than :class:`~medsim.policies.scenarios.MealScenario` (its meals are
        drawn inside the step).
    UnstableStepError
        When the simulator's step is unstable for a patient of the pool (checked once here, for
        every patient an episode can be).
    """

    def __init__(self, params: EnvParams):
        self.params = params
        setup, model = params.setup, params.model
        scen = setup.scenario
        if scen is not None and not isinstance(scen, MealScenario):
            raise TaskError(f"scenario: the compiled environment draws MealScenario meals, got {type(scen).__name__}")
        self.scenario = scen
        self.width = 0 if scen is None else scen.n_columns(params.horizon, time_unit=model.time_unit)
        event_cmts = () if scen is None else (int(scen.cmt),)
        columns = tuple((j, int(scen.cmt)) for j in range(self.width)) if scen is not None else ()
        kernel = setup.sim.interval_kernel(tuple((model.dose_targets[cm], False) for _, cm in columns))
        self.layout = Layout(kernel, model, setup.cmts, event_cmts, columns)
        pool = params.pool
        x0 = {k: np.asarray(v, np.float32) for k, v in pool.initial_state().items()}
        setup.sim.check_step(x0, dict(params.theta), patients=np.arange(pool.n_patients))
        self._x0 = x0

    def arrays(self, stride: int = 0) -> EnvArrays:
        """The array parameters (call under ``jax.enable_x64(True)``)."""
        pool, names = self.params.pool, self.params.setup.measured_obs
        res = {k: np.asarray(v, np.float32) for k, v in pool.residual.items()}
        return EnvArrays(
            theta={k: jnp.asarray(v) for k, v in self.params.theta.items()},
            x0={k: jnp.asarray(v) for k, v in self._x0.items()},
            covariates={c: jnp.asarray(np.asarray(v, np.float64)) for c, v in pool.covariates.items()},
            res_add={o: jnp.asarray(res[f"{o}_add"]) for o in names if f"{o}_add" in res},
            res_prop={o: jnp.asarray(res[f"{o}_prop"]) for o in names if f"{o}_prop" in res},
            stride=jnp.asarray(int(stride), jnp.int64),
        )

    # ------------------------------------------------------------------ pieces (batches of one row)
    def _pick(self, table: dict, episode: jax.Array) -> dict:
        slot = episode % self.params.pool.n_patients
        return {k: v[slot] for k, v in table.items()}

    def _look(self, x: dict, theta: dict, episode: jax.Array, k: jax.Array, params: EnvArrays) -> dict:
        """Measurements at interaction ``k``: the (seed, MEASUREMENT, episode, k) stream, as the compiled loop."""
        setup = self.params.setup
        true32 = {o: jnp.broadcast_to(v, (1,)) for o, v in setup.model.observe(x, theta).items()}
        width = max(len(setup.measured_obs), 1)
        keys = traced_patient_keys(setup.seed, Stream.MEASUREMENT, episode, k)
        z = jax.vmap(lambda key: jax.random.normal(key, (width,), F32))(keys).astype(F64)
        names = setup.measured_obs
        measure = partial(measure_expr, setup.model, names, setup.noise)
        add, prop = self._pick(params.res_add, episode), self._pick(params.res_prop, episode)
        return isolated(measure, {o: true32[o] for o in names}, add, prop, z, jnp.ones(1, bool))

    def _announced(self, ev_time, ev_cmt, ev_amount, t) -> dict:
        if self.scenario is None or not self.scenario.announced:
            return {}
        now = jnp.abs(ev_time.astype(F64) - t[:, None]) <= self.params.setup.tol
        cm = int(self.scenario.cmt)
        return {cm: jnp.where(now & (ev_cmt == cm), ev_amount.astype(F64), 0.0).sum(axis=1)}

    def _observe(self, episode, t, k, measured, announced, last, params: EnvArrays) -> jax.Array:
        p = self.params
        obs = Observation(
            time=t,
            measured=measured,
            announced=announced,
            covariates=self._pick(params.covariates, episode),
            active=t < p.horizon - p.setup.tol,
            patient=episode,
            index=k,
            subject=np.full(1, "", dtype=str),
            time_unit=p.model.time_unit,
            horizon=p.horizon,
        )
        return features(p.observation_names, obs, last, xp=jnp)

    def _meals(self, episode: jax.Array):
        if self.scenario is None:
            return jnp.zeros((1, 0), F32), jnp.zeros((1, 0), jnp.int32), jnp.zeros((1, 0), F32)
        scen, n = self.scenario, self.width
        keys = traced_patient_keys(scen.seed, Stream.SCENARIO, jnp.repeat(episode, n), jnp.arange(n))
        z = jax.vmap(lambda key: jax.random.normal(key, (2,), F32))(keys).astype(F64)[None]
        times, amounts = scen.meal_table(z, self.params.horizon, time_unit=self.params.model.time_unit, xp=jnp)
        return times.astype(F32), jnp.full((1, n), int(scen.cmt), jnp.int32), amounts.astype(F32)

    # ------------------------------------------------------------------ the API
    def reset(self, key: jax.Array, params: EnvArrays) -> tuple[jax.Array, EnvState]:
        """Start a random episode (its id drawn from ``key``)."""
        return self.reset_to(jax.random.bits(key, (), jnp.uint32).astype(jnp.int64), params)

    def reset_to(self, episode: jax.Array, params: EnvArrays) -> tuple[jax.Array, EnvState]:
        """Start episode ``episode`` (an int in ``[0, 2**32)``) at time 0 with a baseline measurement."""
        _check_x64()
        e = jnp.reshape(jnp.asarray(episode, jnp.int64), (1,))
        x, theta = self._pick(params.x0, e), self._pick(params.theta, e)
        t, k = jnp.zeros(1, F64), jnp.zeros(1, jnp.int64)
        measured = self._look(x, theta, e, k, params)
        ev_time, ev_cmt, ev_amount = self._meals(e)
        announced = self._announced(ev_time, ev_cmt, ev_amount, t)
        last = jnp.zeros((1, len(self.params.task.treatments)), F64)
        obs = self._observe(e, t, k, measured, announced, last, params)
        state = EnvState(e, x, t, k, measured, announced, last, ev_time, ev_cmt, ev_amount, jnp.zeros(1, bool))
        return obs[0], _unrow(state)

    def step(self, key: jax.Array, state: EnvState, action: jax.Array, params: EnvArrays):
        """One option (or, after the episode ended, the next episode's start); see the module docstring.

        Parameters
        ----------
        key : jax key
            Only used to draw the next episode id when ``params.stride == 0``.
        state : EnvState
        action : (treatments + 1,)
            Physical units (the vector of :class:`~medsim.policies.env.gym_env.MedsimEnv`), finite;
            clipped to the task's bounds.
        params : EnvArrays

        Returns
        -------
        obs, state, reward, cost, done, info
            ``done``: the episode reached the horizon (a time limit: gymnasium's ``truncated``);
            ``info``: the fields of :class:`~medsim.policies.env.core.StepOutcome` (``cost_bridge`` is
            ``p_any``), ``episode`` and ``refused`` (the simulator would have refused the interval:
            a non-finite or runaway state).
        """
        obs, new, out, bad = self._advance(state, action, params)
        nxt = jnp.where(
            params.stride > 0,
            state.episode + params.stride,
            jax.random.bits(key, (), jnp.uint32).astype(jnp.int64),
        ) % (2**32)
        fresh_obs, fresh = self.reset_to(nxt, params)
        ended = state.done
        state = jax.tree_util.tree_map(lambda a, b: jnp.where(ended, a, b), fresh, new)
        obs = jnp.where(ended, fresh_obs, obs)
        reward = jnp.where(ended, 0.0, out.reward)
        cost = jnp.where(ended, 0.0, out.cost)
        done = jnp.where(ended, False, out.truncated)
        info = {f.name: getattr(out, f.name) for f in fields(StepOutcome)}
        info.update(cost_bridge=out.p_any, episode=state.episode, refused=bad & ~ended)
        return obs, state, reward, cost, done, info

    def _advance(self, state: EnvState, action: jax.Array, params: EnvArrays):
        """The host core's step (:func:`medsim.policies.env.core.step`) on one row, compiled."""
        p, setup = self.params, self.params.setup
        task, horizon, tol = p.task, p.horizon, setup.tol
        s = _row(state)
        a = jnp.reshape(jnp.asarray(action, F64), (1, -1))
        c = jnp.clip(a, task.action_low.astype(np.float64), task.action_high.astype(np.float64))
        clipped = jnp.any(c != a, axis=1)
        doses: dict = {"bolus": {}, "rate": {}}
        for j, tr in enumerate(task.treatments):
            doses[tr.kind][tr.cmt] = doses[tr.kind].get(tr.cmt, 0.0) + c[:, j]
        t = s.t
        active = t < horizon - tol
        t1 = jnp.minimum(t + c[:, -1], horizon)
        if self.scenario is not None and self.scenario.announced:
            t_ev = s.ev_time.astype(F64)
            t1 = jnp.minimum(t1, jnp.where(t_ev > t[:, None] + tol, t_ev, jnp.inf).min(axis=1))
        t1 = jnp.where(active, jnp.where(horizon - t1 <= tol, horizon, t1), t)
        zero = jnp.zeros(1, F64)
        bolus = {cm: jnp.where(active, doses["bolus"].get(cm, zero), 0.0) for cm in setup.cmts}
        rate = {cm: jnp.where(active, doses["rate"].get(cm, zero), 0.0) for cm in setup.cmts}
        theta = self._pick(params.theta, s.episode)
        base = jax.vmap(lambda e: jax.random.key_data(jax.random.fold_in(self._process_root(), e)))(
            s.episode.astype(jnp.uint32)
        )
        inp = Inputs(theta, base, s.ev_time, s.ev_cmt, s.ev_amount)
        res, _ = advance(self.layout, inp, Clock(s.x, t, s.k), t1, bolus, rate, jnp.float64(setup.sim.dt))
        bad = refused(self.layout, res, t1)
        st = res.stats
        J, n_target = len(p.spec.bounds), len(setup.target_bounds)
        log_surv = st.log_survival[:, :J].astype(F64)
        length = t1 - t
        outside_target = st.time_outside[:, J : J + n_target].sum(axis=1).astype(F64)
        margin, slack = self._margins(st)
        monitored = active & (t >= p.spec.monitor_from - tol)
        p_any = jnp.where(monitored, -jnp.expm1(log_surv.sum(axis=1)), 0.0) + 0.0
        grid = st.grid_violation[:, :J] & monitored[:, None]
        seen = st.end_violation[:, :J] & monitored[:, None]
        k1 = s.k + active
        measured = self._look(res.x, theta, s.episode, k1, params)
        measured = {o: jnp.where(active, v, s.measured[o]) for o, v in measured.items()}
        last = jnp.where(active[:, None], c[:, :-1], s.last)
        announced = self._announced(s.ev_time, s.ev_cmt, s.ev_amount, t1)
        truncated = t1 >= horizon - tol
        in_target = jnp.clip(length - outside_target, 0.0, None) if n_target else jnp.zeros(1, F64)
        out = StepOutcome(
            reward=jnp.zeros(1, F64),
            cost=jnp.zeros(1, F64),
            interval=length,
            p_cross=jnp.where(monitored[:, None], -jnp.expm1(log_surv), 0.0) + 0.0,
            p_any=p_any,
            grid=grid,
            seen=seen,
            time_outside=jnp.where(monitored[:, None], st.time_outside[:, :J].astype(F64), 0.0),
            time_in_target=in_target,
            margin=margin,
            slack=slack,
            truncated=truncated,
            clipped=clipped & active,
            t_start=t,
            t_end=t1,
        )
        cost = {"bridge": p_any, "grid": grid.any(axis=1), "end": seen.any(axis=1)}[p.cost].astype(F64)
        reward = in_target / horizon if p.reward is None else p.reward(out)
        reward = jnp.where(active, jnp.broadcast_to(jnp.asarray(reward, F64), (1,)), 0.0)
        out = replace(out, reward=reward, cost=cost)
        new = EnvState(s.episode, res.x, t1, k1, measured, announced, last, s.ev_time, s.ev_cmt, s.ev_amount, truncated)
        obs = self._observe(s.episode, t1, k1, measured, announced, last, params)
        return obs[0], _unrow(new), replace(out, **{f.name: getattr(out, f.name)[0] for f in fields(out)}), bad[0]

    def _process_root(self) -> jax.Array:
        root = jax.random.key(int(self.params.setup.seed) % 2**32)
        return jax.random.fold_in(root, jnp.uint32(int(Stream.PROCESS)))

    def _margins(self, st) -> tuple[jax.Array, jax.Array]:
        margin, slack = [], []
        for b in self.params.spec.bounds:
            start = st.obs_start[b.observable].astype(F64)
            if b.side == "upper":
                margin.append(jnp.maximum(st.obs_max[b.observable].astype(F64) - start, 0.0))
                slack.append(b.value - start)
            else:
                margin.append(jnp.maximum(start - st.obs_min[b.observable].astype(F64), 0.0))
                slack.append(start - b.value)
        return jnp.stack(margin, axis=1), jnp.stack(slack, axis=1)


def _check_x64() -> None:
    if jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise TaskError("the compiled environment is traced in float64: call it inside `with jax.enable_x64(True):`")


def batched(fenv: FunctionalEnv, num_envs: int, devices: tuple | None = None):
    """``(reset, step)`` of ``num_envs`` rows compiled: ``jax.jit(jax.vmap(...))`` of :meth:`FunctionalEnv.reset_to`
    and :meth:`FunctionalEnv.step`, the rows split over ``devices`` (default: the local devices) when
    their number divides ``num_envs``.

    Rows never interact, so each device steps its own rows with its own loop (``shard_map``, no
    communication); on a CPU with ``jax_num_cpu_devices`` > 1 that uses every core, as
    :meth:`medsim.simulate.Simulator.advance` does. Call the functions under ``jax.enable_x64(True)``.
    """
    reset = jax.vmap(fenv.reset_to, in_axes=(0, None))
    step = jax.vmap(fenv.step, in_axes=(0, 0, 0, None))
    devices = tuple(jax.local_devices()) if devices is None else tuple(devices)
    if len(devices) > 1 and num_envs % len(devices) == 0:
        from jax.sharding import Mesh
        from jax.sharding import PartitionSpec as P

        mesh = Mesh(np.asarray(devices), ("rows",))
        rows = P("rows")
        reset = jax.shard_map(reset, mesh=mesh, in_specs=(rows, P()), out_specs=rows, check_vma=False)
        step = jax.shard_map(step, mesh=mesh, in_specs=(rows, rows, rows, P()), out_specs=rows, check_vma=False)
    return jax.jit(reset), jax.jit(step)
