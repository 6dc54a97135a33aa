"""The compiled program of the option loop: its inputs, carry and configuration, one interaction of
every patient (:func:`body`), and the block of :data:`BLOCK` interactions compiled once per
configuration (:func:`compiled`).

:mod:`medsim.policies.device_loop` prepares a chunk's inputs, calls the program block by block and
turns its output into rows or sums; the loop's guarantees (the host loop's numbers bit for bit,
refusals flagged per patient) are described there.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from medsim.policies.array_step import isolated, measure_expr, step_expr
from medsim.policies.device_interval import advance_checked
from medsim.policies.device_streams import measurement_draws, stream_ids
from medsim.policies.interaction import Interaction
from medsim.policies.protocol import Policy, PolicyError
from medsim.policies.result import NON_FINITE, PER_BOUND, UNUSABLE_OPTION
from medsim.policies.streaming import update_sums
from medsim.policies.traces import trace_spec, window
from medsim.population.streams import fold_in_data
from medsim.simulate import cache

# Interactions per compiled call: the host checks limits and reports progress between calls.
BLOCK = 64

F32, F64 = jnp.float32, jnp.float64


class Inputs(NamedTuple):
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


class Carry(NamedTuple):
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


class Config(NamedTuple):
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


def body(cfg: Config, inp: Inputs, c: Carry, dt, horizon, tol):
    """One interaction of every patient: an iteration of the host loop (:mod:`medsim.policies.host_loop`) on arrays."""
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
    carry = Carry(
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


def _option(cfg: Config, option: dict, active: jax.Array, n: int):
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


def block_fn(cfg: Config):
    """``fn(carry, inputs, n_iter, dt, horizon, tol) -> (carry, rows, n_done, first_interval)``."""

    def fn(carry: Carry, inp: Inputs, n_iter, dt, horizon, tol):
        n = carry.t.shape[0]
        _, row0, _ = jax.eval_shape(lambda c: body(cfg, inp, c, dt, horizon, tol), carry)
        rows = None
        if cfg.record:
            rows = jax.tree_util.tree_map(lambda s: jnp.zeros((BLOCK, *s.shape), s.dtype), row0)

        def cond(state):
            i, c, _, _ = state
            return (i < n_iter) & jnp.any(c.active)

        def step(state):
            i, c, rows, first = state
            c, row, interval = body(cfg, inp, c, dt, horizon, tol)
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


def compiled(setup, policy: Policy, record: bool, event_cmts: tuple, columns: tuple):
    def build():
        bounds = setup.bounds
        layout = tuple((setup.model.dose_targets[cm], False) for _, cm in columns)
        grid = setup.trace_grid if record else None  # traces with the recorded rows only
        spec = None if grid is None else trace_spec(grid, setup.sim.dt)
        cfg = Config(
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
        return cfg, block_fn(cfg)

    key = _config_key(setup, policy, record, event_cmts, columns)
    # One cache for every compiled program (medsim.simulate.cache, emptied by clear_caches()).
    return build() if key is None else cache.cached(("device-loop", *key), build)
