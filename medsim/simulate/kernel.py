"""The compiled inner loop: sub-steps of one chunk of patients, with fused interval statistics.

One loop iteration advances every patient of the chunk by two sub-steps (the two outputs of one
Threefry hash per noise channel, :mod:`medsim.simulate.noise`). Each patient carries its own clock
on an aligned grid ``t0 + k dt``; a sub-step ends at the next grid point, the next breakpoint
(event time, infusion end) or ``t1``, whichever comes first, so every event lands exactly on a step
boundary. Patients past ``t1`` take exact no-op steps (``h = 0``; the state is selected unchanged).

State, parameters and statistics are dicts / tuples of ``(B,)`` vectors (struct of arrays), so
every operation is a vectorised loop over patients and XLA fuses them into elementwise loops, one
per value carried to the next iteration. Two measures keep those loops few and cheap: the draws of
an iteration are computed by the previous one and carried (otherwise XLA recomputes the ~300-op
hash inside every loop that reads a draw), and values updated together travel as the real and
imaginary parts of one complex64 vector (one loop instead of two).

Without saved paths the number of iterations is a runtime argument (a ``fori_loop`` with a
dynamic trip count), so one compiled function serves every interval length. With saved paths it
is a static ``scan`` length, bucketed by :func:`medsim.simulate.plan.bucket_steps`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.simulate import bridge, noise, schemes
from medsim.simulate.device import CACHE_BLOCK
from medsim.simulate.plan import GRID_TOLERANCE
from medsim.simulate.types import IntervalStats


class ChunkInputs(NamedTuple):
    """Per-chunk arrays (``B`` patients, ``E`` interior event columns), all device arrays."""

    x: dict[str, jax.Array]  # state -> (B,)
    theta: dict[str, jax.Array]  # parameter -> (B,)
    t0: jax.Array  # (B,)
    t1: jax.Array  # (B,)
    k1: jax.Array  # (B,) uint32 key word
    k2: jax.Array  # (B,) uint32 key word
    start: dict[str, jax.Array]  # state -> (B,) added at t0
    rate: dict[str, jax.Array]  # state -> (B,) constant input
    event_time: jax.Array  # (E, B) bolus time / infusion start
    event_end: jax.Array  # (E, B) infusion end
    event_value: jax.Array  # (E, B) bolus amount / infusion rate, in state units
    # With a TraceSpec: (first, stop, base) (B,) int32 and observable -> (B, W) float32 buffers.
    trace: tuple | None = None


class ChunkOutputs(NamedTuple):
    x: dict[str, jax.Array]
    stats: IntervalStats
    t_end: jax.Array  # (B,) clock at the end (== t1 when the step budget sufficed)
    path_time: jax.Array | None  # (S, B) grid times of the saved sub-steps, S = steps + 1
    path_values: dict[str, jax.Array] | None  # observable -> (S, B)
    trace: dict[str, jax.Array] | None = None  # observable -> (B, W): the trace buffer, filled


class TraceSpec(NamedTuple):
    """Observables sampled on a regular clock grid ``m * step`` while the chunk is stepped.

    Grid point ``m`` of a patient with ``first <= m < stop`` is the observable at
    ``q = clip(m step, t0, t1)``, linearly interpolated between the two sub-steps around ``q``
    (the sub-step's own value where ``q`` falls on one; after a bolus at a sub-step end, the
    post-dose value); it is written to column ``m - base`` of the buffer. ``per_step`` bounds
    the grid points one sub-step can hold (``ceil(dt / step) + 1``).
    """

    observables: tuple[str, ...]
    step: float
    per_step: int


class _Carry(NamedTuple):
    x: dict[str, jax.Array]
    stats: bridge.StatsCarry
    t: jax.Array
    k: jax.Array  # index of the last grid point at or before t
    draws: tuple  # per noise channel: z_even + i z_odd (complex64) for the current iteration
    trace: tuple | None = None  # (next grid index, buffers, traced observables at t)


def make_chunk_fn(
    model: PhysiologyModel,
    scheme: str,
    specs: tuple[bridge.BoundSpec, ...],
    *,
    layout: tuple[tuple[str, bool], ...],
    uniform: bool,
    saving: bool,
    on_trace: Callable[[], None],
    devices: tuple = (),
    block: int = CACHE_BLOCK,
    trace: TraceSpec | None = None,
) -> Callable:
    """Build the jitted chunk function for one static configuration.

    Parameters
    ----------
    scheme : str
        One of :data:`medsim.simulate.schemes.SCHEMES`; every scheme hands the bridge statistics
        the model's diffusion at the sub-step start (see :func:`medsim.simulate.schemes.sde_step`).
    layout : tuple of (state, is_infusion)
        The interior event columns (:attr:`medsim.simulate.plan.IntervalPlan.event_layout`); empty
        when no dose acts inside the interval.
    uniform : bool
        Every patient of the chunk shares ``t0`` and ``t1`` and there are no interior events: the
        clock is then one scalar instead of a ``(B,)`` vector (less work per sub-step).
    saving : bool
        Return the observables after every sub-step.
    devices : tuple of jax devices
        With more than one, the chunk is split over them along the patient axis (``shard_map``):
        each device steps its own patients, no communication, one compiled program.
    block : int
        Patients per sequential cache block (:mod:`medsim.simulate.device`): a chunk larger than
        this runs as consecutive blocks; the CPU default keeps each block in cache, accelerators
        pass the chunk size (one fused loop).
    trace : TraceSpec, optional
        Sample observables on a clock grid into ``inputs.trace``'s buffers as the sub-steps go
        (CGM-like traces without saving the paths).

    Returns
    -------
    callable
        ``fn(inputs: ChunkInputs, dt, n_pairs) -> ChunkOutputs`` with ``dt`` a float32 scalar (the
        grid step, a runtime value: one compiled function serves every step size). Without
        ``saving`` ``n_pairs`` is a traced scalar (iterations of two sub-steps); with ``saving`` it
        must be a static int.
    """
    noisy = model.noisy_states
    floor = schemes.nonnegative_states(model)
    bridged = bridge.bridged_observables(specs)

    def clock(inp: ChunkInputs) -> tuple[jax.Array, jax.Array]:
        return (inp.t0[0], inp.t1[0]) if uniform else (inp.t0, inp.t1)

    def substep(inp: ChunkInputs, dt: jax.Array, c: _Carry, z: dict[str, jax.Array]) -> tuple[_Carry, tuple]:
        t, k = c.t, c.k
        t0, t1 = clock(inp)
        tol = np.float32(GRID_TOLERANCE) * dt
        grid_next = t0 + (k + 1).astype(jnp.float32) * dt
        stop = t1
        rate = dict(inp.rate)
        # Next breakpoint strictly after t; infusions running over [t, next stop) add their rate.
        for e, (state, infusion) in enumerate(layout):
            start_e = inp.event_time[e]
            stop = jnp.minimum(stop, jnp.where(start_e > t, start_e, jnp.inf))
            if infusion:
                end_e = inp.event_end[e]
                stop = jnp.minimum(stop, jnp.where(end_e > t, end_e, jnp.inf))
                running = (start_e <= t) & (t < end_e)
                rate[state] = rate.get(state, 0.0) + jnp.where(running, inp.event_value[e], 0.0)
        hit = stop <= grid_next + tol
        active = t < t1
        t_new = jnp.where(active, jnp.where(hit, stop, grid_next), t)
        k_new = jnp.where(active & ~(hit & (stop < grid_next - tol)), k + 1, k)
        h = t_new - t
        x_step, g = schemes.sde_step(model, scheme, t, c.x, inp.theta, rate, h, z, floor)
        x_new = {s: jnp.where(active, x_step[s], c.x[s]) for s in c.x}
        y1, z1 = bridge.bridge_coordinates(model, bridged, x_new, inp.theta)
        s2 = bridge.local_variance(model, bridged, c.x, inp.theta, g)
        st = bridge.bridge_update(specs, c.stats, s2, z1, h, active)
        st = bridge.grid_update(specs, st, y1, z1, t_new)
        boluses = [(e, state) for e, (state, infusion) in enumerate(layout) if not infusion]
        for e, state in boluses:
            here = active & (inp.event_time[e] == t_new)
            x_new[state] = x_new[state] + jnp.where(here, inp.event_value[e], 0.0)
        if boluses:
            # Post-dose values are grid points too (a bolus can jump across a bound).
            y1, z1 = bridge.bridge_coordinates(model, bridged, x_new, inp.theta)
            st = bridge.grid_update(specs, st, y1, z1, t_new)
        st = st._replace(z=z1)
        traced = None if trace is None else sample_trace(inp, c, x_new, t_new, active)
        return _Carry(x_new, st, t_new, k_new, c.draws, traced), (t_new, y1)

    def observed(x: dict, inp: ChunkInputs) -> dict:
        y = model.observe(x, inp.theta)
        return {o: jnp.broadcast_to(y[o], inp.t0.shape) for o in trace.observables}

    def sample_trace(inp: ChunkInputs, c: _Carry, x_new: dict, t_new, active) -> tuple:
        """Write the grid points in ``[t, t_new)`` (``[t, t1]`` on the last sub-step)."""
        (_, stop, base, _), (nxt, values, y_prev) = inp.trace, c.trace
        n = inp.t0.shape[0]
        y_new = observed(x_new, inp)
        t0, t1 = (jnp.broadcast_to(a, (n,)) for a in clock(inp))
        t, t_new = jnp.broadcast_to(c.t, (n,)), jnp.broadcast_to(t_new, (n,))
        h = t_new - t
        rows = jnp.arange(n)
        for _ in range(trace.per_step):
            q = jnp.clip(nxt.astype(jnp.float32) * np.float32(trace.step), t0, t1)
            ok = active & (nxt < stop) & ((q < t_new) | (t_new >= t1))
            frac = (q - t) / jnp.where(h > 0, h, 1.0)
            col = jnp.where(ok, nxt - base, values[trace.observables[0]].shape[1])  # out of range: dropped
            values = {
                o: v.at[rows, col].set(y_prev[o] + (y_new[o] - y_prev[o]) * frac, mode="drop")
                for o, v in values.items()
            }
            nxt = nxt + ok.astype(nxt.dtype)
        return nxt, values, y_new

    def draw(inp: ChunkInputs, i: jax.Array) -> tuple:
        # One complex64 vector per channel holds both draws of the pair, so one loop computes the hash
        # once (XLA's CPU loops have a single output; two float outputs would hash twice).
        return tuple(
            jax.lax.complex(*noise.normal_pair(inp.k1, inp.k2, i.astype(jnp.uint32), ch)) for ch in range(len(noisy))
        )

    def pair(inp: ChunkInputs, dt: jax.Array, c: _Carry, i: jax.Array) -> tuple[_Carry, tuple]:
        # The draws of this iteration were computed by the previous one and arrive through the loop
        # carry (a materialised buffer): left in the same iteration, XLA re-derives the ~300-op hash
        # inside every loop that consumes a draw.
        draws = c.draws
        c, out_even = substep(inp, dt, c, {s: jnp.real(d) for s, d in zip(noisy, draws, strict=True)})
        c, out_odd = substep(inp, dt, c, {s: jnp.imag(d) for s, d in zip(noisy, draws, strict=True)})
        return c._replace(draws=draw(inp, i + 1)), (out_even, out_odd)

    def last_pair(inp: ChunkInputs, dt: jax.Array, c: _Carry, n_pairs) -> _Carry:
        # The last pair without the work that changes nothing: no draws for a next pair, and no odd
        # sub-step once every patient of the block has reached t1 (an exact no-op then: h = 0, state
        # and statistics selected unchanged). A planned step count carries one sub-step of margin, so
        # an interval of five 1-minute sub-steps (a 5-minute interaction) ends on such a step.
        def half(cc, part):
            return substep(inp, dt, cc, {s: part(d) for s, d in zip(noisy, cc.draws, strict=True)})[0]

        c = jax.lax.cond(n_pairs > 0, lambda cc: half(cc, jnp.real), lambda cc: cc, c)
        runs = (n_pairs > 0) & jnp.any(c.t < clock(inp)[1])
        return jax.lax.cond(runs, lambda cc: half(cc, jnp.imag), lambda cc: cc, c)

    def run(inp: ChunkInputs, dt: jax.Array, n_pairs) -> ChunkOutputs:
        on_trace()
        x = {s: v + inp.start[s] if s in inp.start else v for s, v in inp.x.items()}
        y0, z0 = bridge.bridge_coordinates(model, bridged, x, inp.theta)
        t0, _ = clock(inp)
        traced = None if trace is None else (inp.trace[0], inp.trace[3], observed(x, inp))
        c = _Carry(
            x, bridge.init_stats(specs, y0, z0), t0, jnp.zeros(t0.shape, jnp.int32), draw(inp, jnp.int32(0)), traced
        )
        path_time = path_values = None
        if saving:
            c, (even, odd) = jax.lax.scan(lambda cc, i: pair(inp, dt, cc, i), c, jnp.arange(n_pairs))

            def interleave(a, b):  # (P, B) x 2 -> (2P, B) in sub-step order
                a, b = jnp.broadcast_arrays(a, b)
                return jnp.stack([a, b], axis=1).reshape(-1, *a.shape[1:])

            times = jnp.concatenate([t0[None], interleave(even[0], odd[0])])
            path_time = jnp.broadcast_to(times.reshape(times.shape[0], -1), (times.shape[0], inp.t0.shape[0]))
            path_values = {o: jnp.concatenate([y0[o][None], interleave(even[1][o], odd[1][o])]) for o in y0}
        else:
            c = jax.lax.fori_loop(0, jnp.maximum(n_pairs - 1, 0), lambda i, cc: pair(inp, dt, cc, i)[0], c)
            c = last_pair(inp, dt, c, n_pairs)
        y_end = model.observe(c.x, inp.theta)
        stats = bridge.finish_stats(specs, c.stats, y0, y_end, inp.t1 > inp.t0)
        t_end = jnp.broadcast_to(c.t, inp.t0.shape)
        return ChunkOutputs(c.x, stats, t_end, path_time, path_values, None if trace is None else c.trace[1])

    blocked = _cache_blocked(run, block)
    if len(devices) > 1:
        return _sharded(blocked, devices, saving, trace is not None)
    if saving:
        return jax.jit(blocked, static_argnums=2)
    return jax.jit(blocked)


def _cache_blocked(run: Callable, block_size: int) -> Callable:
    """``run`` over consecutive blocks of ~``block_size`` patients, one after another.

    A chunk of ``B`` patients is cut into ``nb = ceil(B / block_size)`` equal blocks when ``nb``
    divides ``B`` (:func:`medsim.simulate.plan.bucket_batch` sizes chunks so that it does).
    """

    def blocked(inp: ChunkInputs, dt, n_pairs) -> ChunkOutputs:
        size = inp.t0.shape[0]
        nb = -(-size // block_size)
        if nb == 1 or size % nb:
            return run(inp, dt, n_pairs)
        block = size // nb

        def split(a, axis):
            shape = (*a.shape[:axis], nb, block, *a.shape[axis + 1 :])
            return jnp.moveaxis(a.reshape(shape), axis, 0)

        def merge(a, axis):  # (nb, ..., block at axis, ...) -> patients back at axis
            a = jnp.moveaxis(a, 0, axis)
            return a.reshape((*a.shape[:axis], size, *a.shape[axis + 2 :]))

        events = ("event_time", "event_end", "event_value")
        parts = {
            f: jax.tree_util.tree_map(lambda a, f=f: split(a, 1 if f in events else 0), getattr(inp, f))
            for f in ChunkInputs._fields
        }
        out = jax.lax.map(lambda part: run(ChunkInputs(**part), dt, n_pairs), parts)
        return ChunkOutputs(
            x=jax.tree_util.tree_map(lambda a: merge(a, 0), out.x),
            stats=jax.tree_util.tree_map(lambda a: merge(a, 0), out.stats),
            t_end=merge(out.t_end, 0),
            path_time=None if out.path_time is None else merge(out.path_time, 1),
            path_values=None if out.path_values is None else {k: merge(v, 1) for k, v in out.path_values.items()},
            trace=None if out.trace is None else {k: merge(v, 0) for k, v in out.trace.items()},
        )

    return blocked


def _sharded(run: Callable, devices: tuple, saving: bool, tracing: bool = False) -> Callable:
    """``run`` split over ``devices`` along the patient axis (inputs and outputs)."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.asarray(devices), ("patients",))
    per_patient, per_event, replicated = P("patients"), P(None, "patients"), P()
    traced = per_patient if tracing else None
    in_specs = ChunkInputs(
        *([per_patient] * 8), event_time=per_event, event_end=per_event, event_value=per_event, trace=traced
    )
    out_specs = ChunkOutputs(
        per_patient, per_patient, per_patient, per_event if saving else None, per_event if saving else None, traced
    )

    def build(n_pairs_static=None):
        def body(inp, dt, n_pairs):
            return run(inp, dt, n_pairs_static if saving else n_pairs)

        # check_vma off: loop carries mix per-patient and per-shard values; nothing is communicated.
        mapped = jax.jit(
            jax.shard_map(
                body, mesh=mesh, in_specs=(in_specs, replicated, replicated), out_specs=out_specs, check_vma=False
            )
        )

        def placed(inp, dt, n_pairs):
            # Inputs committed to one device (e.g. the state a previous interval handed back on
            # device 0) would clash with the mesh: place every field on its shards explicitly.
            inp = ChunkInputs(
                *(
                    None if getattr(inp, f) is None else jax.device_put(getattr(inp, f), NamedSharding(mesh, spec))
                    for f, spec in zip(ChunkInputs._fields, in_specs, strict=True)
                )
            )
            return mapped(inp, dt, n_pairs)

        return placed

    if not saving:
        return build()
    cache: dict[int, Callable] = {}

    def call(inp, dt, n_pairs: int):
        if n_pairs not in cache:
            cache[n_pairs] = build(n_pairs)
        return cache[n_pairs](inp, dt, jnp.int32(n_pairs))

    return call
