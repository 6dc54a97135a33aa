"""The batched SDE simulator: advance many virtual patients over one interaction interval.

>>> sim = Simulator(model, dt=1.0, bounds=(Bound("glucose_mg_dL", 70.0, "lower"),))
>>> res = sim.advance(state, params, t0, t1, key=key, events=events, rates={1: basal})
>>> res.state, res.stats.p_cross  # end state and (B, K) bridge-corrected crossing probabilities

A :class:`Simulator` is immutable; it compiles one kernel per static configuration (the layout of
the dose events inside the interval, saved paths or not, compiled batch size) the first time that
configuration is used, and reuses it afterwards: interval lengths, event times and ``dt`` are
runtime values (:attr:`Simulator.trace_count` counts traces so tests can guard against
recompiles). Kernels live in medsim's one compile cache (:mod:`medsim.simulate.cache`, emptied by
:func:`~medsim.simulate.cache.clear_caches`), keyed by the model's value, so simulators of equal
models share them. Large batches are cut into chunks of at most ``chunk_size`` patients (the last
one padded) so memory stays flat; with several local JAX devices each chunk is split over them.
By default the chunk and the cache blocking follow the device (:mod:`medsim.simulate.device`):
cache-sized blocks on CPU, one fused loop over a chunk sized from the device's memory on GPUs.

Random numbers: patient ``i`` draws from its own counter-based stream (:mod:`.noise`). Pass one
key per patient (shape ``(B,)``) to make a patient's path independent of the batch it is in; with
a single key, patient ``i`` uses ``fold_in(key, i)``, ``i`` being its position in the batch. Either
way the numbers do not depend on ``chunk_size``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, partial

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.simulate import bridge, cache, checks, device, kernel, noise, plan, schemes, stability
from medsim.simulate.types import Bound, DoseEvents, IntervalStats, SavedPath
from medsim.transfer import to_device

# Smallest number of patients per device worth splitting a batch over devices.
_MIN_SPLIT = 512


@dataclass(frozen=True)
class AdvanceResult:
    """Outcome of :meth:`Simulator.advance` for ``B`` patients.

    Attributes
    ----------
    state : dict state -> (B,) float32
        State at ``t1`` (doses at exactly ``t1`` are left to the next call).
    stats : IntervalStats
        Interval statistics, ``K = len(bounds)`` columns in the simulator's bound order.
    path : SavedPath or None
        Observables every ``save_every`` sub-steps (including ``t0``), when requested.
    trace : dict observable -> (B, W) float32, or None
        The ``trace`` buffers handed to :meth:`Simulator.advance`, with this interval's grid
        points written (:class:`medsim.simulate.kernel.TraceSpec`).
    """

    state: dict[str, jax.Array]
    stats: IntervalStats
    path: SavedPath | None = None
    trace: dict[str, jax.Array] | None = None


@dataclass(frozen=True, eq=False)
class Simulator:
    """Fixed-step SDE simulator with fused Brownian-bridge interval statistics.

    Parameters
    ----------
    model : PhysiologyModel
    dt : float
        Sub-step in the model's time unit (steps are shortened at events and at ``t1``).
    bounds : tuple of Bound
        Monitored safety bounds (``K`` of them).
    scheme : {"milstein", "euler", "exponential"}
        Diagonal Milstein (strong order 1), Euler–Maruyama (strong order 1/2) or exponential
        Euler (strong order 1/2, stable for any first-order decay rate: for stiff absorption or
        elimination); see :mod:`medsim.simulate.schemes`.
    chunk_size : int, optional
        Largest number of patients per compiled call (default: from the device,
        :func:`medsim.simulate.device.sizing_for`). Results do not depend on it.
    block : int, optional
        Patients per sequential cache block inside a call (default: from the device; a value at
        least ``chunk_size`` runs each chunk as one loop). Results do not depend on it.

    Raises
    ------
    ValueError
        On a non-positive ``dt``, an unknown scheme, a bad ``chunk_size`` or a bound on an unknown
        observable; for Milstein on a model whose noise is not diagonal.
    """

    model: PhysiologyModel
    dt: float
    bounds: tuple[Bound, ...] = ()
    scheme: str = "milstein"
    chunk_size: int | None = None
    block: int | None = None
    # Trace counters of the kernels this simulator used (bookkeeping for trace_count only).
    _traces: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.dt, bool) or not (
            isinstance(self.dt, numbers.Real) and math.isfinite(self.dt) and self.dt > 0
        ):
            raise ValueError(f"dt: expected a finite step > 0 in {self.model.time_unit}, got {self.dt!r}")
        if self.scheme not in schemes.SCHEMES:
            raise ValueError(f"scheme: expected one of {schemes.SCHEMES}, got {self.scheme!r}")
        for name in ("chunk_size", "block"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not (isinstance(value, numbers.Integral) and value >= 1)
            ):
                raise ValueError(f"{name}: expected None or an int >= 1, got {value!r}")
        # Normalising the arguments of a frozen dataclass while it is being built (the instance is
        # not shared yet) is the documented dataclasses idiom; nothing is assigned after __init__.
        object.__setattr__(self, "dt", float(self.dt))
        object.__setattr__(self, "bounds", tuple(self.bounds))
        self._specs  # noqa: B018  validates the bounds now (unknown observable -> ValueError)
        if self.scheme == "milstein":
            schemes.check_diagonal_noise(self.model)

    @cached_property
    def _specs(self) -> tuple[bridge.BoundSpec, ...]:
        return bridge.bound_specs(self.model, self.bounds)

    @cached_property
    def _model_key(self) -> tuple[str, str]:
        return cache.model_key(self.model)

    @property
    def trace_count(self) -> int:
        """How many times the kernels this simulator has used were traced (compiled).

        Kernels are shared by simulators of equal models with the same scheme and bounds (``dt``,
        ``chunk_size`` are runtime values), so this counts their traces too.
        """
        return sum(counter[0] for counter in self._traces.values())

    def _kernel(self, layout: tuple, uniform: bool, saving: bool, devices: tuple, block: int, trace=None):
        key = ("kernel", self._model_key, self.scheme, self._specs, layout, uniform, saving, devices, block, trace)

        def build():
            counter = [0]

            def count() -> None:
                counter[0] += 1

            fn = kernel.make_chunk_fn(
                self.model,
                self.scheme,
                self._specs,
                layout=layout,
                uniform=uniform,
                saving=saving,
                on_trace=count,
                devices=devices,
                block=block,
                trace=trace,
            )
            return fn, counter

        fn, counter = cache.cached(key, build)
        self._traces[key] = counter
        return fn

    def sizing(self, devices: tuple, *, n_events: int = 0, saved_steps: int = 0) -> device.ChunkSizing:
        """Chunk and cache-block sizes for a batch on ``devices`` (explicit arguments win).

        From :func:`medsim.simulate.device.device_sizing` of the first device; on accelerators the
        chunk is per device, so a chunk split over several of them is that many times larger.
        """
        per_patient = device.bytes_per_patient(
            len(self.model.state_names),
            len(self.model.parameters) + len(self.model.covariates),
            len(self._specs),
            n_events,
            saved_steps,
        )
        auto = device.device_sizing(devices[0], per_patient)
        if devices[0].platform != "cpu":
            auto = device.ChunkSizing(chunk=auto.chunk * len(devices), block=auto.block)
        return device.ChunkSizing(
            chunk=auto.chunk if self.chunk_size is None else int(self.chunk_size),
            block=auto.block if self.block is None else int(self.block),
        )

    # ------------------------------------------------------------------ validation
    def _batch_arrays(self, state: Mapping, params: Mapping) -> tuple[int, dict, dict]:
        names = self.model.state_names
        missing = [s for s in names if s not in state]
        extra = [s for s in state if s not in names]
        if missing or extra:
            raise ValueError(
                f"state: model {self.model.name!r} has states {list(names)}; missing {missing}, unknown {extra}"
            )
        x = {s: jnp.asarray(state[s], jnp.float32) for s in names}
        shapes = {s: v.shape for s, v in x.items()}
        if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
            raise ValueError(f"state: every state must be a (B,) array of one length, got shapes {shapes}")
        batch = next(iter(shapes.values()))[0]
        absent = [p.name for p in self.model.parameters if p.name not in params]
        if absent:
            raise ValueError(f"params: missing parameters {absent} of model {self.model.name!r}")
        theta = {}
        for name, v in params.items():
            v = jnp.asarray(v, jnp.float32)
            if v.ndim == 0:
                v = jnp.broadcast_to(v, (batch,))
            if v.shape != (batch,):
                raise ValueError(f"params[{name!r}]: expected a scalar or shape ({batch},), got {v.shape}")
            theta[name] = v
        return batch, x, theta

    # ------------------------------------------------------------------ stability
    def step_limit(self, state: Mapping, params: Mapping, *, patients=None) -> stability.StepLimit:
        """The largest stable explicit step for these patients at ``state`` (:mod:`.stability`)."""
        jacobian = cache.cached(("jacobian", self._model_key), lambda: stability.jacobian_fn(self.model))
        return stability.step_limit(self.model, state, params, patients=patients, jacobian=jacobian)

    def check_step(self, state: Mapping, params: Mapping, *, patients=None) -> stability.StepLimit:
        """Refuse ``dt`` when it is beyond the scheme's stability limit for these patients.

        Call it before simulating, with the start state and the patients' parameters; the rates
        come from the drift's Jacobian (:mod:`medsim.simulate.stability`).

        Raises
        ------
        UnstableStepError
            Naming the limiting patient, its parameters and the largest stable step.
        """
        limit = self.step_limit(state, params, patients=patients)
        stability.check_step(self.model, self.scheme, self.dt, limit)
        return limit

    def interval_kernel(
        self, layout: tuple[tuple[str, bool], ...] = (), uniform: bool = False, trace: kernel.TraceSpec | None = None
    ):
        """The compiled interval function behind :meth:`advance`, for loops compiled around it.

        ``fn(kernel.ChunkInputs, dt, n_pairs) -> kernel.ChunkOutputs`` on one device, without saved
        paths; ``layout`` gives the interior event columns (see :func:`kernel.make_chunk_fn`). The
        caller plans the interval itself (as :func:`medsim.simulate.plan.plan_interval` does) and
        checks the result (as :meth:`advance` does). ``trace``: sample observables on a clock grid
        (``inputs.trace``, as :meth:`advance`'s ``trace``).
        """
        devices = tuple(jax.local_devices())[:1]
        return self._kernel(tuple(layout), bool(uniform), False, devices, self.sizing(devices).block, trace)

    # ------------------------------------------------------------------ the call
    def advance(
        self,
        state: Mapping[str, jax.Array],
        params: Mapping[str, jax.Array],
        t0,
        t1,
        *,
        key: jax.Array,
        events: DoseEvents | None = None,
        rates: Mapping[int, jax.Array] | None = None,
        save_every: int | None = None,
        patients=None,
        trace: tuple | None = None,
    ) -> AdvanceResult:
        """Advance every patient from ``t0`` to ``t1``.

        Parameters
        ----------
        state : dict state name -> (B,)
            Start state (``model.initial_state`` or a previous ``result.state``).
        params : dict parameter name -> (B,) or scalar
            Individual parameters, population-level ones and any covariates the model reads.
        t0, t1 : scalar or (B,)
            Absolute interval ends in the model time unit (``t1 >= t0``; ``t1 == t0`` is a no-op).
        key : jax PRNG key
            One key, or one per patient; see the module docstring.
        events : DoseEvents, optional
            Dose events in absolute time; only those acting in ``[t0, t1)`` matter. A bolus at
            exactly ``t0`` is given before the first sub-step; infusions contribute over their overlap
            with ``[t0, t1)``.
        rates : dict CMT -> (B,) or scalar, optional
            Constant extra input over the interval in dose units per time unit.
        save_every : int, optional
            Save the observables every that many sub-steps (``SavedPath`` of shape ``(B, T)``).
        patients : (B,) int, optional
            Global index of each patient, used to name a patient in errors (default: position).
        trace : (TraceSpec, (first, stop, base, buffers)), optional
            Sample observables on a clock grid while stepping (:class:`kernel.TraceSpec`):
            ``first``, ``stop``, ``base`` ``(B,)`` int32 (grid points ``first <= m < stop`` go to
            column ``m - base``), ``buffers`` observable -> ``(B, W)`` float32; the filled buffers
            come back as ``result.trace``.

        Returns
        -------
        AdvanceResult

        Raises
        ------
        ValueError
            Naming the argument that is malformed (missing state or parameter, shape, times,
            compartments, negative doses, ``save_every``).
        NonFiniteStateError, RunawayStateError
            When a state or interval statistic at ``t1`` is not finite, or a state left its
            physical range (:mod:`medsim.simulate.checks`), naming the patient and its parameters.
        """
        batch, x, theta = self._batch_arrays(state, params)
        if save_every is not None and not (isinstance(save_every, int | np.integer) and save_every >= 1):
            raise ValueError(f"save_every: expected None or an int >= 1, got {save_every!r}")
        p = plan.plan_interval(self.model, float(self.dt), t0, t1, events, rates, batch)
        k1, k2 = noise.patient_key_words(key, batch)
        saving = save_every is not None
        uniform = not p.event_layout and bool((p.t0 == p.t0[0]).all() and (p.t1 == p.t1[0]).all())
        n_steps = plan.bucket_steps(p.n_steps) if saving else p.n_steps
        n_pairs = n_steps // 2 if saving else jnp.int32(-(-n_steps // 2))

        # With several local devices (e.g. jax_num_cpu_devices = cores) each chunk is split over
        # them; batches too small to be worth it stay on one device.
        devices = tuple(jax.local_devices())
        if len(devices) == 1 or batch < _MIN_SPLIT * len(devices):
            devices = devices[:1]
        size = self.sizing(devices, n_events=p.n_events, saved_steps=n_steps if saving else 0)
        spec = None if trace is None else trace[0]
        fn = self._kernel(p.event_layout, uniform, saving, devices, size.block, spec)
        chunk = plan.bucket_batch(batch, size.chunk, multiple=len(devices), block=size.block)
        n_chunks = -(-batch // chunk)
        per_patient = {
            "x": x,
            "theta": theta,
            "t0": to_device(p.t0),
            "t1": to_device(p.t1),
            "k1": k1,
            "k2": k2,
            "start": {s: to_device(v) for s, v in p.start.items()},
            "rate": {s: to_device(v) for s, v in p.rate.items()},
        }
        if trace is not None:
            per_patient["trace"] = jax.tree_util.tree_map(to_device, tuple(trace[1]))
        per_event = {
            "event_time": to_device(p.event_time),
            "event_end": to_device(p.event_end),
            "event_value": to_device(p.event_value),
        }
        outs = []
        for c in range(n_chunks):
            lo, hi = c * chunk, min((c + 1) * chunk, batch)
            if lo == 0 and hi == batch == chunk:
                inp = kernel.ChunkInputs(**per_patient, **per_event)
            else:
                inp = kernel.ChunkInputs(**_rows(per_patient, lo, hi, chunk, 0), **_rows(per_event, lo, hi, chunk, 1))
            out = fn(inp, jnp.float32(self.dt), n_pairs)
            if len(devices) > 1:  # hand back arrays on one device, as a single-device run would
                out = jax.device_put(out, devices[0])
            outs.append(out)
        out = _join([o._replace(path_time=None, path_values=None) for o in outs], batch, 0)
        if not bool(jnp.all(out.t_end == jnp.asarray(p.t1))):
            raise RuntimeError("simulator step budget exhausted before t1 (please report this as a medsim bug)")
        self._check_result(out, theta, p, patients)
        path = None
        if saving:
            times, values = _join([(o.path_time, o.path_values) for o in outs], batch, 1)
            path = SavedPath(time=times[::save_every].T, values={o: v[::save_every].T for o, v in values.items()})
        return AdvanceResult(state=out.x, stats=out.stats, path=path, trace=out.trace)

    def _check_result(self, out: kernel.ChunkOutputs, theta: Mapping, p: plan.IntervalPlan, patients) -> None:
        """Host-side checks of one interval's result (between intervals, never per sub-step)."""
        st = out.stats
        unit = self.model.time_unit
        values = {**out.x, **{f"{o} at t1": v for o, v in st.obs_end.items()}}
        checks.check_finite(values, theta, p.t0, p.t1, time_unit=unit, patients=patients)
        # log_survival is -inf after a certain crossing; the probability it encodes must be finite.
        stats = {"crossing probability": st.p_cross, "depth": st.depth, "time outside": st.time_outside}
        checks.check_finite(stats, theta, p.t0, p.t1, time_unit=unit, patients=patients, what="interval statistic")
        checks.check_physical(self.model, out.x, theta, p.t0, p.t1, patients=patients, dt=self.dt, scheme=self.scheme)


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _rows(tree, lo: int, hi: int, size: int, axis: int):
    """Patients ``lo:hi`` along ``axis`` of every array in ``tree``, padded to ``size`` by repeating
    the last patient. One compiled call per chunk: the same slices dispatched op by op cost more
    than a short interval's simulation (dozens of arrays per call, thousands of calls in a schedule)."""

    def rows(a):
        part = jax.lax.slice_in_dim(a, lo, hi, axis=axis)
        if hi - lo < size:
            widths = [(0, 0)] * a.ndim
            widths[axis] = (0, size - (hi - lo))
            part = jnp.pad(part, widths, mode="edge")
        return part

    return jax.tree_util.tree_map(rows, tree)


@partial(jax.jit, static_argnums=(1, 2))
def _join(parts, batch: int, axis: int):
    """The chunks' results (a list of pytrees of one structure) joined along ``axis`` and cut to
    ``batch`` patients, in one compiled call (see :func:`_rows`)."""

    def join(*a):
        a = a[0] if len(a) == 1 else jnp.concatenate(a, axis=axis)
        return jax.lax.slice_in_dim(a, 0, batch, axis=axis) if a.shape[axis] != batch else a

    return jax.tree_util.tree_map(join, *parts)
