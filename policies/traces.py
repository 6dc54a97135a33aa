"""Observable traces on a regular clock grid, sampled from the simulator's sub-step paths.

Glucose consensus metrics and the ambulatory glucose profile are defined on continuous glucose
monitoring (CGM) traces: one reading every few minutes, the same grid for every patient. The
rollout's interactions are irregular and patient-specific, so the host loop asks the simulator
for the observables at every sub-step of each interval and :func:`sample_interval` places them on
the common grid ``0, step, 2 step, ... < horizon`` by linear interpolation between sub-steps
(the sub-step grid itself, wherever a grid point falls on a sub-step).

A streaming (on-device) version would keep, per patient, the running sums the metrics need
instead of the trace (counts below 54 / 70 and above 180 / 250 on the grid, sum of glucose, of
its square, of the low and high risk functions) and, for the profile, a histogram per
time-of-day bin; the grid points of an interval are known from its ends, so the same
interpolation runs inside the compiled loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from medsim.units import convert_time

#: The CGM reading interval the consensus metrics are usually computed from (Battelino et al.
#: 2019, Diabetes Care 42:1593: "14 days of CGM data", readings every 5 or 15 minutes).
CGM_STEP_MIN = 5.0


@dataclass(frozen=True)
class TraceGrid:
    """The regular grid traces are recorded on.

    Attributes
    ----------
    observables : tuple of str
        Observables recorded.
    step : float
        Grid spacing in the model's time unit.
    n_points : int
        Grid points ``0, step, ..., (n_points - 1) step``, all before the horizon.
    """

    observables: tuple[str, ...]
    step: float
    n_points: int


def trace_grid(glucose_observable: str | None, horizon: float, time_unit: str) -> TraceGrid | None:
    """The CGM grid of a model that declares a glucose observable (mg/dL); None otherwise.

    Glucose is the one observable whose field reads traces (consensus metrics, AGP); other
    models record none. ``glucose_observable`` is the model's
    :attr:`~medsim.models.base.PhysiologyModel.glucose_observable`.
    """
    if glucose_observable is None:
        return None
    step = convert_time(CGM_STEP_MIN, "min", time_unit)
    n_points = int(np.ceil(horizon / step - 1e-9))
    return TraceGrid((glucose_observable,), step, max(n_points, 1))


def empty_trace(grid: TraceGrid, n: int) -> dict[str, np.ndarray]:
    """(n, n_points) NaN arrays to fill interval by interval."""
    return {o: np.full((n, grid.n_points), np.nan, np.float32) for o in grid.observables}


def sample_interval(
    grid: TraceGrid,
    trace: Mapping[str, np.ndarray],
    t0: np.ndarray,
    t1: np.ndarray,
    path_time: np.ndarray,
    path_values: Mapping[str, np.ndarray],
) -> None:
    """Write the grid points in ``[t0, t1)`` of each patient into ``trace`` (in place).

    Parameters
    ----------
    grid : TraceGrid
    trace : mapping observable -> (N, n_points) float
        The buffer being filled (one row per patient of the chunk).
    t0, t1 : (N,) float
        Interval ends; ``t1 == t0`` (inactive patient) writes nothing.
    path_time : (N, S) float
        Sub-step times of the interval (non-decreasing; padding repeats the end time).
    path_values : mapping observable -> (N, S) float
        Observables at those times.
    """
    step = grid.step
    t0 = np.asarray(t0, np.float64)
    t1 = np.asarray(t1, np.float64)
    tol = 1e-6 * step
    first = np.ceil(t0 / step - tol / step).astype(np.int64)
    stop = np.minimum(np.ceil(t1 / step - tol / step).astype(np.int64), grid.n_points)
    count = np.maximum(stop - first, 0)
    width = int(count.max(initial=0))
    if width == 0:
        return
    n = t0.shape[0]
    m = first[:, None] + np.arange(width)[None, :]
    valid = np.arange(width)[None, :] < count[:, None]
    query = np.clip(m * step, t0[:, None], t1[:, None])
    times = np.asarray(path_time, np.float64)
    # One np.interp over all patients: row n's times are shifted by n * span, so rows never overlap.
    span = 2.0 * (float(np.max(times, initial=0.0)) + step) + 1.0
    shift = (np.arange(n, dtype=np.float64) * span)[:, None]
    xp = (times + shift).ravel()
    xq = (query + shift)[valid]
    rows, cols = np.nonzero(valid)
    for o in grid.observables:
        fp = np.asarray(path_values[o], np.float64).ravel()
        trace[o][rows, m[rows, cols]] = np.interp(xq, xp, fp)
