"""One interval of the compiled option loop: planned as the simulator plans it, advanced by its kernel.

:func:`advance` lays out the interval ``[t, t1)`` of every patient as
:func:`medsim.simulate.plan.plan_interval` does on the host (boluses at ``t`` added before the first
sub-step, scenario boluses inside the interval as event columns whose inert entries are exact
no-ops) and calls the simulator's compiled kernel; :func:`refused` flags the patients for whom
:meth:`medsim.simulate.Simulator.advance` would have raised (:func:`advance_checked`: both, the
flags computed once). Split from :mod:`medsim.policies.device_loop`, which owns the loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from medsim.population.streams import fold_in_data
from medsim.simulate import kernel as sim_kernel
from medsim.simulate.checks import RANGE_TOLERANCE
from medsim.simulate.plan import GRID_TOLERANCE

F32, F64 = jnp.float32, jnp.float64


class Layout(NamedTuple):
    """What :func:`advance` reads of a loop's configuration, for loops other than the option loop
    (whose configuration adds the kernel without event columns, ``plain_kernel``)."""

    kernel: Any
    model: Any
    cmts: tuple
    event_cmts: tuple
    columns: tuple


class Inputs(NamedTuple):
    """What :func:`advance` reads of a loop's per-patient inputs."""

    theta: dict
    proc_key: jax.Array
    ev_time: jax.Array
    ev_cmt: jax.Array
    ev_amount: jax.Array


class Clock(NamedTuple):
    """Each patient's state, time and interaction count where the interval starts."""

    x: dict
    t: jax.Array
    k: jax.Array


def scenario_layout(scen) -> tuple[tuple, tuple]:
    """Compartments of the scenario's events and the interior event columns, grouped by target
    state as :func:`medsim.simulate.plan.plan_interval` orders them."""
    if scen is None:
        return (), ()
    time, cmt = np.asarray(scen.time), np.asarray(scen.cmt)
    event_cmts = tuple(int(c) for c in np.unique(cmt))
    columns = tuple((j, c) for c in event_cmts for j in range(time.shape[1]) if np.isfinite(time[cmt == c]).any())
    return event_cmts, columns


def advance(cfg, inp, c, t1: jax.Array, bolus: dict, rate: dict, dt, trace=None):
    """Plan the interval ``[t, t1)`` as :func:`medsim.simulate.plan.plan_interval` does and advance it
    (``trace``: the kernel's trace input, :class:`medsim.simulate.kernel.TraceSpec`)."""
    return _advance(cfg, inp, c, t1, bolus, rate, dt, trace, lambda out: out)


def advance_checked(cfg, inp, c, t1: jax.Array, bolus: dict, rate: dict, dt, trace=None, *, code=None, go=None):
    """:func:`advance` and the refusal code of each patient: ``(out, code)``.

    ``code``/``go``: the ``(n,)`` int8 code of refusals found before the interval and where the
    interval runs; the result is :func:`refusal`'s code where ``go``, ``code`` elsewhere (without
    them, :func:`refusal`'s code). It is computed inside the branch that advanced the interval, so
    it leaves it as one materialised vector; computed after it, XLA fuses the checks (a hundred-odd
    elementwise operations over every state and statistic) into each pass that reads the code (the
    frozen state, the clock, the counters, the flags) and runs them once per pass. (The branch is
    the choice between the kernels with and without event columns, ``cfg.plain_kernel``; without
    one the code is computed as :func:`advance` then :func:`refusal` would.)
    """

    def checked(out):
        found = refusal(cfg, out, t1)
        return out, found if code is None else jnp.where(go, found, code)

    (out, found), _ = _advance(cfg, inp, c, t1, bolus, rate, dt, trace, checked)
    return out, found


def _advance(cfg, inp, c, t1: jax.Array, bolus: dict, rate: dict, dt, trace, finish):
    model = cfg.model
    t0f, t1f = c.t.astype(F32), t1.astype(F32)
    opens = t1f > t0f
    targets = tuple(dict.fromkeys(model.dose_targets.values()))
    zeros = jnp.zeros(t0f.shape, F32)
    start = {s: zeros for s in targets}
    rates = {s: zeros for s in targets}
    for cm in cfg.cmts:
        s, scale = model.dose_targets[cm], np.float32(model.dose_scale.get(cm, 1.0))
        rates[s] = rates[s] + scale * rate[cm].astype(F32)
    # Boluses at t0 (the policy's, then the scenario's) are added before the first sub-step.
    for cm in sorted({*cfg.cmts, *cfg.event_cmts}):
        s, scale = model.dose_targets[cm], np.float32(model.dose_scale.get(cm, 1.0))
        total = zeros
        if cm in cfg.cmts:
            total = total + jnp.where((bolus[cm] > 0) & opens, scale * bolus[cm].astype(F32), 0.0)
        if cm in cfg.event_cmts:
            for j in range(inp.ev_time.shape[1]):
                here = (inp.ev_time[:, j] == t0f) & (inp.ev_cmt[:, j] == cm) & opens
                total = total + jnp.where(here, scale * inp.ev_amount[:, j], 0.0)
        start[s] = start[s] + total
    inside = [(inp.ev_time[:, j] > t0f) & (inp.ev_time[:, j] < t1f) for j in range(inp.ev_time.shape[1])]
    n_col = len(cfg.columns)
    count = sum((a.astype(jnp.int32) for a in inside), jnp.zeros(t0f.shape, jnp.int32))
    n_inside = jnp.max(count) if n_col else 0
    proc = _packed(fold_in_data(inp.proc_key, c.k.astype(jnp.uint32)))  # fold_in(key, k), unrolled

    def run(kernel, n_inside, columns=()):
        ev_time, ev_value = [], []
        for j, cm in columns:
            acting = inside[j] & (inp.ev_cmt[:, j] == cm)
            scale = np.float32(model.dose_scale.get(cm, 1.0))
            ev_time.append(jnp.where(acting, inp.ev_time[:, j], jnp.inf))
            ev_value.append(jnp.where(acting, scale * inp.ev_amount[:, j], 0.0))
        shape = (len(columns), t0f.shape[0])
        event_time = jnp.stack(ev_time).astype(F32) if columns else jnp.zeros(shape, F32)
        event_value = jnp.stack(ev_value).astype(F32) if columns else jnp.zeros(shape, F32)
        keys = _words(proc)
        out = run_kernel(
            kernel, c.x, inp.theta, t0f, t1f, start, rates, event_time, event_value, n_inside, keys, dt, trace
        )
        return finish(out)

    plain = getattr(cfg, "plain_kernel", None)
    if not n_col or plain is None:
        return run(cfg.kernel, n_inside, cfg.columns), n_inside
    # No event strictly inside anyone's interval (always so when the scenario is announced: the loop
    # stops at every event): the kernel without event columns, as the simulator plans such an
    # interval (inert columns are exact no-ops, so the numbers are the same; the sub-steps cheaper).
    out = jax.lax.cond(n_inside > 0, lambda: run(cfg.kernel, n_inside, cfg.columns), lambda: run(plain, 0))
    return out, n_inside


def _packed(words: jax.Array) -> jax.Array:
    """``(n, 2)`` uint32 key words as one ``(n,)`` uint64 (where 64-bit types are on; else unchanged).

    The interval's branch (:func:`jax.lax.cond`) takes it as one materialised operand, so the Threefry
    hash that made the words runs once per patient; two uint32 words would each be computed by a pass
    of its own, each running the whole hash (XLA's CPU passes have one output).
    """
    if jax.dtypes.canonicalize_dtype(jnp.uint64) != jnp.uint64:
        return words
    return (words[:, 0].astype(jnp.uint64) << np.uint64(32)) | words[:, 1].astype(jnp.uint64)


def _words(packed: jax.Array) -> jax.Array:
    """:func:`_packed`'s ``(n, 2)`` uint32 key words back."""
    if packed.ndim == 2:
        return packed
    low = np.uint64(0xFFFFFFFF)
    return jnp.stack([(packed >> np.uint64(32)).astype(jnp.uint32), (packed & low).astype(jnp.uint32)], axis=1)


def run_kernel(kernel, x, theta, t0f, t1f, start, rates, event_time, event_value, n_inside, keys, dt, trace=None):
    """Call the simulator's interval ``kernel`` on a planned interval: ``start``/``rates`` by target
    state, interior boluses as ``(E, n)`` event columns, ``keys`` one JAX key per patient."""
    event_end = jnp.full(event_time.shape, -jnp.inf, F32)
    # ceil(max span - tolerance) as the maximum of each patient's count (ceil and rounding are monotone):
    # an integer reduction, cheaper than a float64 one.
    steps = jnp.ceil((t1f.astype(F64) - t0f) / dt - GRID_TOLERANCE).astype(jnp.int32)
    n_steps = jnp.maximum(jnp.max(steps) + n_inside + 1, 1)
    words = keys if keys.dtype == jnp.uint32 else jax.random.key_data(keys)  # raw (n, 2) key data or keys
    chunk = sim_kernel.ChunkInputs(
        x=x,
        theta=theta,
        t0=t0f,
        t1=t1f,
        k1=words[:, 0],
        k2=words[:, 1],
        start=start,
        rate=rates,
        event_time=event_time,
        event_value=event_value,
        event_end=event_end,
        trace=trace,
    )
    return kernel(chunk, jnp.float32(dt), (-(-n_steps // 2)).astype(jnp.int32))


def advance_doses(kernel, model, x, theta, t0, t1, bolus: dict, rate: dict, keys, dt):
    """Advance ``[t0, t1)`` with boluses at ``t0`` and constant rates (by compartment, float64),
    planned as :func:`medsim.simulate.plan.plan_interval` plans them; ``kernel`` is
    :meth:`Simulator.interval_kernel` without event columns. For policies that simulate inside
    their array step (``safe_timing``)."""
    t0f, t1f = t0.astype(F32), t1.astype(F32)
    opens = t1f > t0f
    targets = tuple(dict.fromkeys(model.dose_targets.values()))
    zeros = jnp.zeros(t0f.shape, F32)
    start = {s: zeros for s in targets}
    rates = {s: zeros for s in targets}
    for cm, r in rate.items():
        s, scale = model.dose_targets[cm], np.float32(model.dose_scale.get(cm, 1.0))
        rates[s] = rates[s] + scale * r.astype(F32)
    for cm, b in bolus.items():
        s, scale = model.dose_targets[cm], np.float32(model.dose_scale.get(cm, 1.0))
        start[s] = start[s] + jnp.where((b > 0) & opens, scale * b.astype(F32), 0.0)
    empty = jnp.zeros((0, t0f.shape[0]), F32)
    return run_kernel(kernel, x, theta, t0f, t1f, start, rates, empty, empty, 0, keys, dt)


def refused(cfg, out, t1: jax.Array) -> jax.Array:
    """Where :meth:`Simulator.advance` would raise: step budget, non-finite values, runaway states."""
    return refusal(cfg, out, t1) > 0


def refusal(cfg, out, t1: jax.Array) -> jax.Array:
    """(n,) int8 code of :data:`medsim.policies.result.FAILURE_REASONS` where :meth:`Simulator.advance`
    would raise (0 elsewhere), in the order it checks: non-finite values, then runaway states, then
    the step budget."""
    from medsim.policies.result import NON_FINITE, RUNAWAY, STEP_BUDGET

    st = out.stats
    n = t1.shape[0]
    budget = out.t_end != t1.astype(F32)
    values = [*out.x.values(), *st.obs_end.values()]
    values += [jnp.all(jnp.isfinite(a), axis=1) for a in (st.p_cross, st.depth, st.time_outside)]
    ok = jnp.ones(n, bool)
    for v in values:
        ok = ok & (v if v.dtype == jnp.bool_ else jnp.isfinite(v))
    runaway = jnp.zeros(n, bool)
    for s in cfg.model.states:
        lo, hi = s.physical_range
        if (lo is None and hi is None) or s.name not in out.x:
            continue
        x = out.x[s.name].astype(F64)
        slack = RANGE_TOLERANCE * jnp.abs(x)
        if lo is not None:
            runaway = runaway | (x < lo - slack)
        if hi is not None:
            runaway = runaway | (x > hi + slack)
    code = jnp.where(budget, STEP_BUDGET, 0)
    code = jnp.where(runaway, RUNAWAY, code)
    return jnp.where(~ok, NON_FINITE, code).astype(jnp.int8)
