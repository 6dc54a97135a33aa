"""Per-patient sums of a rollout, reduced interaction by interaction (memory flat in interactions).

What :func:`medsim.policies.risk.events.patient_events` reads from a rollout's ``(N, K, J)`` arrays,
kept as ``(N, J)`` running sums instead: the compiled loop (:mod:`medsim.policies.device_loop`) updates
them after every interval, so a rollout of ``N`` patients needs ``O(N J)`` memory whatever the
number of interactions. :func:`sums_events` turns them into the same
:class:`~medsim.policies.risk.events.PatientEvents` (a test checks equality with ``patient_events`` of
the recorded rollout).

All updates are elementwise and take the array namespace of their inputs (``jax.numpy`` inside
the compiled loop, numpy in tests).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from medsim.policies.risk.events import bound_indices_of, events_from
from medsim.policies.spec import SafetySpec
from medsim.simulate.types import Bound


class StreamingSums(NamedTuple):
    """Running per-patient statistics over valid intervals (``n`` patients, ``J`` rollout bounds).

    Attributes
    ----------
    log_survival : (n, J) float64
        Sum of the intervals' bridge log-survivals (NaN counted in ``undefined`` and taken as -inf).
    undefined : (n, J) int32
        Intervals whose log-survival was NaN.
    grid, end_last : (n, J) bool
        Some grid point outside; the last interval's end point outside.
    seen_measured, seen_all : (n, J) bool
        The noise-free value outside at an interaction where the bound's observable was measured;
        at any interaction start.
    start_out : (n, J) bool
        Outside at the first interaction.
    detected : (n, J) bool
        The noisy measurement outside.
    detected_true : (n, J) bool
        The noisy measurement outside at an interaction where the noise-free value was outside too.
    measured_any : (n, J) bool
        The bound's observable was measured at some interaction.
    first_outside : (n, J) float64
        First grid time outside (``inf`` if never).
    time_outside, depth : (n, J) float64
        Total time outside; deepest excursion.
    length : (n,) float64
        Simulated time.
    interactions : (n,) int64
    dose : (n, C) float64
        Total amount given per dose compartment (bolus + rate x interval).
    failed_time : (n,) float64
        Where a patient that could not be simulated was frozen (``inf``: simulated to the
        horizon; ``on_failure="count"``, :mod:`medsim.policies.failures`): its ``interactions`` and
        ``length`` stop there, its ``time_outside``, ``depth`` and ``dose`` are NaN (unknown), and
        :func:`sums_events` counts it as violating every bound. None inside the compiled loop, whose
        carry records failures; :func:`~medsim.policies.rollout_device.streaming_rollout` fills it in.
    failure_reason : (n,) int8
        Code of :data:`medsim.policies.result.FAILURE_REASONS` (0: none); None as ``failed_time``.
    outside_target : (n, T) float64
        Time outside each bound of the efficacy target range (``T`` target bounds, as the rows'
        ``time_in_range`` counts it); None as ``failed_time``.
    scenario_dose : (n, C) float64
        What the scenario's events delivered into each dose compartment before the horizon
        (:func:`medsim.policies.rollout_assemble.scenario_totals`); None as ``failed_time``.
    """

    log_survival: Any
    undefined: Any
    grid: Any
    end_last: Any
    seen_measured: Any
    seen_all: Any
    start_out: Any
    detected: Any
    detected_true: Any
    measured_any: Any
    first_outside: Any
    time_outside: Any
    depth: Any
    length: Any
    interactions: Any
    dose: Any
    failed_time: Any
    failure_reason: Any
    outside_target: Any = None
    scenario_dose: Any = None


def init_sums(n: int, n_bounds: int, cmts: tuple, observables: tuple) -> StreamingSums:
    """Zero sums for ``n`` patients and ``n_bounds`` bounds (jax arrays)."""
    del observables
    f = jnp.zeros((n, n_bounds), jnp.float64)
    b = jnp.zeros((n, n_bounds), bool)
    return StreamingSums(
        log_survival=f,
        undefined=jnp.zeros((n, n_bounds), jnp.int32),
        grid=b,
        end_last=b,
        seen_measured=b,
        seen_all=b,
        start_out=b,
        detected=b,
        detected_true=b,
        measured_any=b,
        first_outside=jnp.full((n, n_bounds), jnp.inf, jnp.float64),
        time_outside=f,
        depth=f,
        length=jnp.zeros(n, jnp.float64),
        interactions=jnp.zeros(n, jnp.int64),
        dose=jnp.zeros((n, len(cmts)), jnp.float64),
        failed_time=None,  # the loop's carry records failures; streaming_rollout fills these in
        failure_reason=None,
    )


def _outside(y, value: float, upper: bool):
    return y > value if upper else y < value


def _finite_or_inf(first):
    """An interval's first time outside with NaN (unknown) as never, as the recorded rollout's
    first-violation time reads it (:func:`medsim.policies.risk.curve.first_grid_time`)."""
    first = first.astype(jnp.float64)
    return jnp.where(jnp.isnan(first), jnp.inf, first)


def update_sums(s: StreamingSums, specs: tuple, active, k, t0, t1, true, measured, st, treatment, cmts):
    """``s`` after one interval ``[t0, t1)`` of every patient (``active`` marks valid ones).

    ``specs``: ``(index, observable, value, upper)`` per rollout bound; ``true``/``measured``: the
    observables at ``t0``; ``st``: the interval's :class:`~medsim.simulate.types.IntervalStats`.
    """
    xp = jnp
    n_b = len(specs)
    a2 = active[:, None]
    ls = st.log_survival[:, :n_b].astype(xp.float64)
    nan = xp.isnan(ls)
    cols = {name: [] for name in ("seen_m", "seen_a", "start", "det", "det_true", "meas")}
    for _, obs, value, upper in specs:
        y = true[obs]
        out = _outside(y, value, upper)
        m = measured.get(obs)
        taken = xp.zeros_like(active) if m is None else xp.isfinite(m)
        cols["seen_m"].append(out & taken)
        cols["seen_a"].append(out)
        cols["start"].append(out & (k == 0))
        # The recorded rollout keeps measurements in float32: compare what it would compare.
        recorded = None if m is None else m.astype(xp.float32).astype(xp.float64)
        alarm = xp.zeros_like(active) if m is None else _outside(recorded, value, upper) & taken
        cols["det"].append(alarm)
        cols["det_true"].append(alarm & out)
        cols["meas"].append(taken)
    col = {name: (xp.stack(v, axis=1) if v else xp.zeros((active.shape[0], 0), bool)) & a2 for name, v in cols.items()}
    length = xp.where(active, t1 - t0, 0.0)
    dose = s.dose
    if cmts:
        given = [treatment[f"bolus_cmt{c}"] + treatment[f"rate_cmt{c}"] * length for c in cmts]
        dose = dose + xp.where(a2, xp.stack(given, axis=1), 0.0)
    return StreamingSums(
        log_survival=s.log_survival + xp.where(a2, xp.where(nan, -xp.inf, ls), 0.0),
        undefined=s.undefined + (a2 & nan).astype(xp.int32),
        grid=s.grid | (a2 & st.grid_violation[:, :n_b]),
        end_last=xp.where(a2, st.end_violation[:, :n_b], s.end_last),
        seen_measured=s.seen_measured | col["seen_m"],
        seen_all=s.seen_all | col["seen_a"],
        start_out=s.start_out | col["start"],
        detected=s.detected | col["det"],
        detected_true=s.detected_true | col["det_true"],
        measured_any=s.measured_any | col["meas"],
        first_outside=xp.minimum(s.first_outside, xp.where(a2, _finite_or_inf(st.first_outside[:, :n_b]), xp.inf)),
        time_outside=s.time_outside + xp.where(a2, xp.nan_to_num(st.time_outside[:, :n_b].astype(xp.float64)), 0.0),
        depth=xp.maximum(s.depth, xp.where(a2, xp.nan_to_num(st.depth[:, :n_b].astype(xp.float64)), 0.0)),
        length=s.length + length,
        interactions=s.interactions + active,
        dose=dose,
        failed_time=s.failed_time,  # None in the loop (device_loop.run_chunk's carry records failures)
        failure_reason=s.failure_reason,
        outside_target=s.outside_target,
        scenario_dose=s.scenario_dose,
    )


def sums_events(sums: StreamingSums, bounds: tuple[Bound, ...], spec: SafetySpec, draw: np.ndarray, policy: str):
    """:class:`PatientEvents` for ``spec`` from the streaming sums of a rollout over ``bounds``.

    The same outcomes as :func:`medsim.policies.risk.events.patient_events` on the recorded rollout:
    checkpoints are the interactions where the observable was measured (every interaction start
    when it was never measured in the whole population), plus the end of the horizon.
    """
    idx = bound_indices_of(bounds, spec, policy)
    measured_any = np.asarray(sums.measured_any)[:, idx]
    somewhere = measured_any.any(axis=0)  # per spec bound: its observable was measured by someone
    seen = np.where(somewhere, np.asarray(sums.seen_measured)[:, idx], np.asarray(sums.seen_all)[:, idx])
    has_any = np.asarray(sums.interactions) > 0
    seen = seen | (np.asarray(sums.end_last)[:, idx] & has_any[:, None])
    return events_from(
        spec,
        draw=np.asarray(draw, int),
        seen=seen,
        start_out=np.asarray(sums.start_out)[:, idx],
        grid_any=np.asarray(sums.grid)[:, idx],
        total_log=np.asarray(sums.log_survival, float)[:, idx],
        detected=np.asarray(sums.detected)[:, idx],
        detected_true=np.asarray(sums.detected_true)[:, idx],
        measured_observable=somewhere,
        # a failed patient's undefined intervals are moot: it counts as violating every bound
        undefined=int(np.asarray(sums.undefined)[np.asarray(sums.failure_reason) == 0][:, idx].sum()),
        failed=_failed(np.asarray(sums.failure_reason) > 0),
    )


def _failed(failed: np.ndarray) -> np.ndarray | None:
    """``failed`` where some patient failed, else None (as :func:`patient_events` gives it)."""
    return failed if failed.any() else None
