"""The option loop compiled: measure → act → advance → accumulate in one program per chunk.

For policies with an array step (``policy.array_step(state, obs, xp)``, the built-in ``pid``,
``basal_bolus``, ``fixed``, ``tdm``, ``flip`` and ``safe_timing``; a policy with a
``prepare(state, patient, covariates, subject)`` method has its state prepared on the host first,
:func:`medsim.policies.array_step.prepare_state`) the loop of :mod:`medsim.policies.rollout` runs inside a jitted
``lax.while_loop`` over interactions instead of a Python loop: each patient keeps its own clock,
the policy's step is traced with ``xp = jax.numpy``, and each interval is advanced by the same
compiled kernel :meth:`medsim.simulate.Simulator.advance` calls
(:meth:`~medsim.simulate.Simulator.interval_kernel`, called by :mod:`medsim.policies.device_interval`).
One simulator, one policy code path.

The numbers are those of the host loop on the same seed, bit for bit: the same counter-based
streams (measurement noise ``(seed, MEASUREMENT, patient, k)``, process noise
``(seed, PROCESS, patient, k)``, :func:`medsim.population.streams.patient_base_keys`), the policy
arithmetic in float64 as numpy does it on the host (the loop is traced under
``jax.enable_x64``) and the simulator's float32 inputs planned as
:func:`medsim.simulate.plan.plan_interval` plans them (boluses at the interval start added
before the first sub-step, scenario boluses inside the interval as event columns; inert columns
are exact no-ops).

Two products, chosen by ``record``:

* ``record=True``: the per-interaction rows of the host loop, handed back every
  :data:`BLOCK` interactions and stacked into the same :class:`~medsim.policies.result.RolloutResult`;
* ``record=False``: only per-patient sums reduced as the loop goes
  (:class:`medsim.policies.streaming.StreamingSums`), so memory is flat in the number of interactions.

With ``record=True`` and a glucose model the kernel also writes the CGM-grid trace
(:mod:`medsim.policies.traces`) into an ``(n, n_points)`` buffer the loop carries. A
``noise_index`` given as a :class:`~medsim.policies.noise_index.NoiseTable` is looked up per patient
and interaction on the device, and the measurement and process keys are derived from its stream
index as the host loop derives them.

Anything the host loop would refuse (a non-finite value, a state outside its physical range, an
unusable option) is flagged per patient inside the loop, with the reason
(:data:`medsim.policies.result.FAILURE_REASONS`) and the start of the refused interval, and the
patient is frozen there (its interval not recorded, its state not kept). With
``on_failure="stop"`` a flagged chunk is re-run by the host loop, which raises the error that names
the patient, so both loops fail the same way; with ``"count"`` the flags are the result's failed
patients, as the host loop records them (:mod:`medsim.policies.failures`).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from medsim.policies.array_step import isolated, measure_expr, prepare_state, step_expr
from medsim.policies.device_interval import advance_checked, scenario_layout
from medsim.policies.device_streams import first_draws, measurement_draws, stream_ids, stream_roots
from medsim.policies.failures import Failures
from medsim.policies.interaction import Interaction
from medsim.policies.protocol import Policy, PolicyError
from medsim.policies.result import NON_FINITE, PER_BOUND, UNUSABLE_OPTION
from medsim.policies.streaming import init_sums, update_sums
from medsim.policies.traces import empty_trace, trace_spec, window
from medsim.population.streams import Stream, fold_in_data, patient_base_keys
from medsim.population.virtual import VirtualPopulation
from medsim.simulate import cache
from medsim.transfer import to_device

# Interactions per compiled call: the host checks limits and reports progress between calls.
BLOCK = 64

F32, F64 = jnp.float32, jnp.float64


def supports_device(policy: Policy) -> bool:
    """Whether ``policy`` has an array step the compiled loop can trace (``array_step``; a policy
    built from components says whether they all have one with ``array_capable``)."""
    return callable(getattr(policy, "array_step", None)) and bool(getattr(policy, "array_capable", True))


class _Inputs(NamedTuple):
    """Per-patient constants of a chunk."""

    theta: dict  # parameter -> (n,) float32
    covariates: dict  # name -> (n,) float64
    patient: jax.Array  # (n,) int64
    meas_key: jax.Array  # (n, 2) uint32
    proc_key: jax.Array  # (n, 2) uint32
    res_add: dict  # observable -> (n,) float32 (absent: the model's default)
    res_prop: dict
    real: jax.Array  # (n,) bool
    ev_time: jax.Array  # (n, E) float32 scenario event times (+inf padding)
    ev_cmt: jax.Array  # (n, E) int32
    ev_amount: jax.Array  # (n, E) float32
    trace_step: jax.Array  # () float64 CGM grid step (a runtime value, as the host loop passes it)
    # With a NoiseTable: (n, K) uint32 stream index of each interaction, and the (2,) uint32 key data
    # of (seed, MEASUREMENT) and (seed, PROCESS); meas_key/proc_key are then folded in per interaction.
    noise_table: jax.Array | None = None
    stream_roots: jax.Array | None = None


class _Carry(NamedTuple):
    x: dict  # state -> (n,) float32
    t: jax.Array  # (n,) float64
    k: jax.Array  # (n,) int64 interaction counter
    z: jax.Array  # (n, width) float64 measurement draws of interaction k (measurement_draws)
    active: jax.Array
    measure: jax.Array
    pstate: Any
    outside_target: jax.Array  # (n, n_target) float64
    reason: jax.Array  # (n,) int8: why the host loop would refuse the patient (FAILURE_REASONS; 0: fine)
    failed_at: jax.Array  # (n,) float64: start of the refused interval (inf: none); the patient is frozen there
    sums: Any  # StreamingSums or None
    trace: Any  # observable -> (n, n_points) float32 CGM-grid trace, or None


class _Config(NamedTuple):
    """Static description of one compiled loop (hashable parts only)."""

    kernel: Any  # the simulator's compiled interval function for this event layout
    plain_kernel: Any  # the same without event columns (intervals with no event inside), or None
    policy: Policy
    model: Any
    n_bounds: int
    n_target: int
    measured_obs: tuple
    cmts: tuple
    announces: bool
    event_cmts: tuple
    columns: tuple  # (scenario column, cmt) of the interior event columns, in the kernel's order
    noise: bool
    time_unit: str
    horizon: float
    record: bool
    specs: tuple  # (bound index, observable, value, upper) of the rollout's bounds
    trace_points: int  # CGM grid points (0: no traces)


def _body(cfg: _Config, inp: _Inputs, c: _Carry, dt, horizon, tol):
    """One interaction of every patient: the host loop's ``_run_chunk`` iteration on arrays."""
    model, n = cfg.model, c.t.shape[0]
    given = inp
    if inp.noise_table is not None:  # this interaction's process stream: (seed, PROCESS, table[i, k])
        inp = inp._replace(proc_key=fold_in_data(inp.stream_roots[1], stream_ids(inp, c.k)))
    true32 = {o: jnp.broadcast_to(v, (n,)) for o, v in model.observe(c.x, inp.theta).items()}
    true = {o: v.astype(F64) for o, v in true32.items()}
    # Refused before the interval (not advanced): a non-finite observation, then an unusable option.
    non_finite = c.active & ~_all_finite(true.values(), n)
    take = c.measure & c.active
    measure = partial(measure_expr, model, cfg.measured_obs, cfg.noise)
    measured = isolated(measure, {o: true32[o] for o in cfg.measured_obs}, inp.res_add, inp.res_prop, c.z, take)
    # Scenario events column by column (elementwise passes over patients; the sum in column order).
    events = [
        (inp.ev_time[:, j].astype(F64), inp.ev_cmt[:, j], inp.ev_amount[:, j]) for j in range(inp.ev_time.shape[1])
    ]
    announced = {}
    if cfg.announces:
        for cm in cfg.event_cmts:
            a = jnp.zeros(n, F64)
            for t_ev, cmt, amount in events:
                a = a + jnp.where((jnp.abs(t_ev - c.t) <= tol) & (cmt == cm), amount.astype(F64), 0.0)
            announced[cm] = jnp.where(c.active, a, 0.0)
    fields = {
        "time": c.t,
        "measured": measured,
        "announced": announced,
        "covariates": inp.covariates,
        "active": c.active,
        "patient": inp.patient,
        "index": c.k,
    }
    step = partial(step_expr, cfg.policy, cfg.time_unit, cfg.horizon)
    pstate, option = isolated(step, c.pstate, fields)
    interval, bolus, rate, measure_next, unusable = _option(cfg, option, c.active, n)
    code = jnp.where(non_finite, NON_FINITE, jnp.where(unusable, UNUSABLE_OPTION, 0)).astype(jnp.int8)
    go = c.active & (code == 0)
    bolus = {cm: jnp.where(go, a, 0.0) for cm, a in bolus.items()}
    rate = {cm: jnp.where(go, a, 0.0) for cm, a in rate.items()}
    t1 = jnp.minimum(c.t + interval, horizon)
    if cfg.announces:
        for t_ev, _, _ in events:
            t1 = jnp.minimum(t1, jnp.where(t_ev > c.t + tol, t_ev, jnp.inf))
    t1 = jnp.where(go, jnp.where(horizon - t1 <= tol, horizon, t1), c.t)
    trace = None
    if c.trace is not None:  # the kernel writes this interval's grid points into the whole trace
        first, stop = window(c.t, t1, inp.trace_step, cfg.trace_points)
        trace = (first, stop, jnp.zeros_like(first), c.trace)
    out, code = advance_checked(cfg, inp, c, t1, bolus, rate, dt, trace, code=code, go=go)
    st = out.stats
    # A refused patient is frozen where its interval started (on_failure="count"; with "stop" the
    # host loop re-runs the chunk to name it): its state is not kept. Its refused interval is
    # recorded under the mask ``go`` and taken out on the host (run_chunk): records and sums that
    # depend on the simulator's verdict on the interval run the loop at half its speed.
    ok = c.active & (code == 0)
    failed = c.active & (code > 0)
    J, n_target = cfg.n_bounds, cfg.n_target
    extra = st.time_outside[:, J:]
    outside_target = c.outside_target + jnp.where(go[:, None], extra[:, :n_target].astype(F64), 0.0)
    treatment = {f"bolus_cmt{cm}": bolus[cm] for cm in cfg.cmts}
    treatment.update({f"rate_cmt{cm}": rate[cm] for cm in cfg.cmts})
    row = None
    if cfg.record:
        row = Interaction(
            t_start=c.t,
            t_end=t1,
            mask=go,
            measured=measured,
            true_start=true,
            obs_min=st.obs_min,
            obs_max=st.obs_max,
            treatment=treatment,
            out_of_support=extra[:, n_target:],  # support bounds' time outside: made a fraction on the host
            **{name: getattr(st, name)[:, :J] for name in PER_BOUND},
        )
    sums = c.sums
    if sums is not None:
        sums = update_sums(sums, cfg.specs, go, c.k, c.t, t1, true, measured, st, treatment, cfg.cmts)
    t_new = jnp.where(failed, c.t, t1)
    k_new = c.k + ok
    carry = _Carry(
        x={s: jnp.where(failed, c.x[s], v) for s, v in out.x.items()},
        t=t_new,
        k=k_new,
        z=measurement_draws(given, k_new, c.z.shape[1]),
        active=(t_new < horizon - tol) & inp.real & ~failed & (c.reason == 0),  # frozen for good
        measure=measure_next,
        pstate=pstate,
        outside_target=outside_target,
        reason=jnp.where(failed, code, c.reason),
        failed_at=jnp.where(failed, c.t, c.failed_at),
        sums=sums,
        trace=out.trace,
    )
    first_interval = jnp.min(jnp.where(go, interval, jnp.inf))
    return carry, row, first_interval


def _all_finite(values, n: int) -> jax.Array:
    ok = jnp.ones(n, bool)
    for v in values:
        ok = ok & jnp.isfinite(v)
    return ok


def _option(cfg: _Config, option: dict, active: jax.Array, n: int):
    """The option (:func:`medsim.policies.array_step.step_expr`'s dict) zero for inactive patients (as
    ``Option.validated``), and a flag where the host loop would refuse it."""
    for field in ("bolus", "rate"):
        for cm in option[field]:
            if int(cm) not in cfg.model.dose_targets:
                raise PolicyError(
                    f"policy {cfg.policy.name!r}: option.{field} uses compartment {cm}; model {cfg.model.name!r} "
                    f"doses into {sorted(cfg.model.dose_targets)}"
                )
    interval = option["interval"]
    unusable = active & ~(interval > 0)

    def amounts(values) -> dict:
        out = {}
        for cm in cfg.cmts:
            a = values.get(cm, jnp.zeros(n, F64))
            nonlocal unusable
            unusable = unusable | (active & ~((a >= 0) & jnp.isfinite(a)))
            out[cm] = jnp.where(active, a, 0.0)
        return out

    bolus, rate = amounts(option["bolus"]), amounts(option["rate"])
    measure = option["measure_next"]
    measure = jnp.ones(n, bool) if measure is None else measure
    return interval, bolus, rate, measure, unusable


def _block_fn(cfg: _Config):
    """``fn(carry, inputs, n_iter, dt, horizon, tol) -> (carry, rows, n_done, first_interval)``."""

    def fn(carry: _Carry, inp: _Inputs, n_iter, dt, horizon, tol):
        n = carry.t.shape[0]
        _, row0, _ = jax.eval_shape(lambda c: _body(cfg, inp, c, dt, horizon, tol), carry)
        rows = None
        if cfg.record:
            rows = jax.tree_util.tree_map(lambda s: jnp.zeros((BLOCK, *s.shape), s.dtype), row0)

        def cond(state):
            i, c, _, _ = state
            return (i < n_iter) & jnp.any(c.active)

        def step(state):
            i, c, rows, first = state
            c, row, interval = _body(cfg, inp, c, dt, horizon, tol)
            if rows is not None:
                rows = jax.tree_util.tree_map(lambda buf, v: buf.at[i].set(v), rows, row)
            first = jnp.where(i == 0, interval, first)
            return i + 1, c, rows, first

        del n
        i, carry, rows, first = jax.lax.while_loop(cond, step, (jnp.int32(0), carry, rows, jnp.asarray(jnp.inf, F64)))
        return carry, rows, i, first

    return jax.jit(fn)


def _config_key(setup, policy: Policy, record: bool, event_cmts: tuple, columns: tuple) -> tuple | None:
    try:
        hash(policy)
    except TypeError:
        return None
    model = setup.model
    return (
        type(model),
        json.dumps(model.describe(), sort_keys=True, default=str),
        float(setup.sim.dt),
        setup.sim.bounds,
        setup.sim.scheme,
        policy,
        setup.noise,
        setup.horizon,
        record,
        setup.trace_grid,
        event_cmts,
        columns,
        setup.scenario is not None and setup.scenario.announced,
    )


def _compiled(setup, policy: Policy, record: bool, event_cmts: tuple, columns: tuple):
    def build():
        bounds = setup.bounds
        layout = tuple((setup.model.dose_targets[cm], False) for _, cm in columns)
        grid = setup.trace_grid if record else None  # traces with the recorded rows only
        spec = None if grid is None else trace_spec(grid, setup.sim.dt)
        cfg = _Config(
            kernel=setup.sim.interval_kernel(layout, trace=spec),
            plain_kernel=setup.sim.interval_kernel((), trace=spec) if layout else None,
            policy=policy,
            model=setup.model,
            n_bounds=len(bounds),
            n_target=len(setup.target_bounds),
            measured_obs=setup.measured_obs,
            cmts=setup.cmts,
            announces=setup.scenario is not None and setup.scenario.announced,
            event_cmts=event_cmts,
            columns=columns,
            noise=setup.noise,
            time_unit=setup.model.time_unit,
            horizon=setup.horizon,
            record=record,
            specs=tuple((j, b.observable, float(b.value), b.side == "upper") for j, b in enumerate(bounds)),
            trace_points=0 if grid is None else grid.n_points,
        )
        return cfg, _block_fn(cfg)

    key = _config_key(setup, policy, record, event_cmts, columns)
    # One cache for every compiled program (medsim.simulate.cache, emptied by clear_caches()).
    return build() if key is None else cache.cached(("device-loop", *key), build)


def device_capable(setup, scen) -> bool:
    """Whether the compiled loop can run this rollout (bolus-only scenario events)."""
    return scen is None or not bool(np.any(np.asarray(scen.rate) > 0))


def run_chunk(setup, pop: VirtualPopulation, policy: Policy, offset: int, n_real: int, scen, record: bool, hooks):
    """The compiled option loop for one chunk (see the module docstring).

    Parameters
    ----------
    setup : policies.rollout._Setup
    pop : VirtualPopulation
        The chunk (padded to its bucketed width; only the first ``n_real`` patients are real).
    policy : Policy
        With an ``array_step``.
    offset : int
        Global index of the chunk's first patient.
    scen : DoseEvents or None
        The chunk's scenario events.
    record : bool
        Hand back per-interaction rows (``True``) or only the streaming sums.
    hooks : object
        ``check_work(interval)``, ``check_interactions(done)`` and ``progress(t)`` callbacks of the
        host rollout (limits and progress stay where the host loop keeps them).

    Returns
    -------
    (rows, outside_target, sums, failures, trace)
        ``rows``: list of :class:`~medsim.policies.interaction.Interaction` as the host loop records
        them, ``out_of_support`` still the support bounds' time outside (``record``);
        ``outside_target``: (n, n_target) time outside the target range; ``sums``:
        :class:`StreamingSums` (numpy) or None; ``failures``: :class:`~medsim.policies.failures.Failures`,
        the patients flagged and frozen (with ``on_failure="stop"`` the caller re-runs a chunk with
        any of them in the host loop, which names the patient); ``trace``: observable -> (n, n_points)
        CGM-grid traces (``record`` and a model with a trace grid; else empty).
    """
    model, n = setup.model, pop.n_patients
    patient = offset + np.arange(n, dtype=np.int64)
    event_cmts, columns = scenario_layout(scen)
    cfg, fn = _compiled(setup, policy, record, event_cmts, columns)
    policy_seed = int(np.random.SeedSequence([setup.seed, int(Stream.POLICY)]).generate_state(1)[0])
    covariates = {c: np.asarray(v, np.float64) for c, v in pop.covariates.items()}
    pstate = prepare_state(policy, policy.init(n, seed=policy_seed), patient, covariates, np.asarray(pop.subject))
    residual = {k: np.asarray(v, np.float32) for k, v in pop.residual.items()}
    if scen is None:
        ev_time, ev_cmt, ev_amount = np.full((n, 0), np.inf, np.float32), np.zeros((n, 0), np.int32), None
        ev_amount = np.zeros((n, 0), np.float32)
    else:
        ev_time, ev_cmt = np.asarray(scen.time, np.float32), np.asarray(scen.cmt, np.int32)
        ev_amount = np.asarray(scen.amount, np.float32)
    theta = {k: np.asarray(v, np.float32) for k, v in pop.simulation_parameters().items()}
    x = {k: np.asarray(v, np.float32) for k, v in pop.initial_state().items()}
    real = np.arange(n) < n_real
    table = getattr(setup, "noise_index", None)  # a NoiseTable (rollout() runs any other callable on the host)
    with jax.enable_x64(True):
        inp = _Inputs(
            theta={k: to_device(v) for k, v in theta.items()},
            covariates={c: to_device(v) for c, v in covariates.items()},
            patient=to_device(patient),
            meas_key=to_device(np.asarray(patient_base_keys(setup.seed, Stream.MEASUREMENT, patient))),
            proc_key=to_device(np.asarray(patient_base_keys(setup.seed, Stream.PROCESS, patient))),
            res_add={o: to_device(residual[f"{o}_add"]) for o in setup.measured_obs if f"{o}_add" in residual},
            res_prop={o: to_device(residual[f"{o}_prop"]) for o in setup.measured_obs if f"{o}_prop" in residual},
            real=to_device(real),
            ev_time=to_device(ev_time),
            ev_cmt=to_device(ev_cmt),
            ev_amount=to_device(ev_amount),
            trace_step=to_device(np.float64(np.nan if setup.trace_grid is None else setup.trace_grid.step)),
            noise_table=None if table is None else to_device(table.rows(patient).astype(np.uint32)),
            stream_roots=None if table is None else to_device(np.asarray(stream_roots(setup.seed))),
        )
        width = max(len(setup.measured_obs), 1)
        carry = _Carry(
            x={k: jnp.asarray(v) for k, v in x.items()},
            t=jnp.zeros(n, F64),
            k=jnp.zeros(n, jnp.int64),
            z=first_draws(inp, width),
            active=jnp.asarray(real),
            measure=jnp.asarray(real),
            pstate=jax.tree_util.tree_map(jnp.asarray, pstate),
            outside_target=jnp.zeros((n, len(setup.target_bounds)), F64),
            reason=jnp.zeros(n, jnp.int8),
            failed_at=jnp.full(n, jnp.inf, F64),
            sums=None if record else init_sums(n, len(setup.bounds), setup.cmts, model.observable_names),
            trace=None if not cfg.trace_points else empty_trace(setup.trace_grid, n),
        )
        rows: list[Interaction] = []
        done = 0
        args = tuple(to_device(np.float64(v)) for v in (setup.sim.dt, setup.horizon, setup.tol))
        while True:
            hooks.check_interactions(done)
            n_iter = 1 if done == 0 else min(BLOCK, setup.max_interactions - done)
            carry, block, n_done, first = fn(carry, inp, to_device(np.int32(n_iter)), *args)
            n_done = int(n_done)
            if done == 0:
                hooks.check_work(float(first))
            if record:
                # Sliced on the host: a device slice is one more compiled program per array shape.
                host = jax.tree_util.tree_map(lambda a, m=n_done: np.asarray(a)[:m], block)
                rows += [jax.tree_util.tree_map(lambda a, i=i: a[i], host) for i in range(n_done)]
            done += n_done
            hooks.progress(np.asarray(carry.t))
            if not np.asarray(carry.active).any():
                break
        failures = Failures(np.asarray(carry.failed_at), np.asarray(carry.reason))
        sums = None if carry.sums is None else jax.tree_util.tree_map(np.asarray, carry.sums)
        trace = {} if carry.trace is None else {o: np.asarray(v) for o, v in carry.trace.items()}
        if failures.any:  # the refused intervals out of the records and sums (see _body)
            rows, sums = _without_refused(rows, sums, failures, np.asarray(carry.k))
        return rows, np.asarray(carry.outside_target), sums, failures, trace


def _without_refused(rows: list, sums, failures: Failures, k: np.ndarray):
    """Records without each failed patient's refused interval (the one starting where it was frozen);
    sums of failed patients with their interactions and simulated time up to the failure, and time
    outside, depth and doses unknown (NaN: the refused interval is in them; summaries exclude
    failed patients and risk estimates count them as violating every bound)."""
    failed = failures.reason > 0
    rows = [r._replace(mask=r.mask & ~(failed & (r.t_start >= failures.time))) for r in rows]
    if sums is not None:
        nan2 = np.where(failed[:, None], np.nan, 1.0)
        sums = sums._replace(
            interactions=np.where(failed, k, sums.interactions),
            length=np.where(failed, failures.time, sums.length),
            time_outside=sums.time_outside * nan2,
            depth=sums.depth * nan2,
            dose=sums.dose * nan2,
        )
    return rows, sums
