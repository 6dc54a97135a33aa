"""Observable traces on a regular clock grid, sampled by the simulator as it steps.

Glucose consensus metrics and the ambulatory glucose profile are defined on continuous glucose
monitoring (CGM) traces: one reading every few minutes, the same grid for every patient. The
rollout's interactions are irregular and patient-specific, so each interval's grid points (those
in ``[t0, t1)``, :func:`window`) are sampled inside the simulator's kernel while it steps
(:class:`medsim.simulate.kernel.TraceSpec`: linear interpolation between the two sub-steps around
a grid point, the sub-step's value where it falls on one). No sub-step path is saved.

Both rollout loops use the same kernel and the same :func:`window`: the host loop hands the
simulator a buffer as wide as the interval's grid points and copies them into the trace
(:func:`record`); the compiled loop of :mod:`medsim.policies.device_loop` keeps the whole
``(n, n_points)`` trace on the device and lets the kernel write into it. The traces are identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from medsim.simulate.kernel import TraceSpec
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


def trace_spec(grid: TraceGrid, dt: float) -> TraceSpec:
    """The kernel's :class:`TraceSpec` for ``grid`` and the simulator's sub-step ``dt``."""
    return TraceSpec(grid.observables, float(grid.step), int(np.ceil(dt / grid.step)) + 1)


def window(t0, t1, step, n_points: int):
    """Grid points ``first <= m < stop`` of the intervals ``[t0, t1)`` (float64, ``xp`` arrays).

    A grid point within ``1e-6`` steps of an interval's end belongs to the next interval (it is
    sampled at that interval's start). ``step`` is an array argument (not a constant folded into
    the program), so the host and compiled loops compute the same indices.
    """
    first = jnp.ceil(t0 / step - 1e-6)
    stop = jnp.minimum(jnp.ceil(t1 / step - 1e-6), n_points)
    return first.astype(jnp.int32), jnp.maximum(stop, first).astype(jnp.int32)


_window = jax.jit(window, static_argnums=3)


def host_window(grid: TraceGrid, t0: np.ndarray, t1: np.ndarray):
    """:func:`window` evaluated by XLA in float64 (numpy out), the host loop's call."""
    with jax.enable_x64(True):
        args = (jnp.asarray(t0, jnp.float64), jnp.asarray(t1, jnp.float64), jnp.asarray(grid.step, jnp.float64))
        first, stop = _window(*args, grid.n_points)
        return np.asarray(first), np.asarray(stop)


def interval_buffer(grid: TraceGrid, first: np.ndarray, stop: np.ndarray) -> tuple:
    """The simulator's ``trace`` argument for one interval of the host loop: buffers as wide as
    the most grid points of a patient (a power of two: few compiled shapes), column 0 at ``first``."""
    width = 1 << max(int(np.max(stop - first, initial=0)) - 1, 0).bit_length()
    n = first.shape[0]
    buffers = {o: np.full((n, width), np.nan, np.float32) for o in grid.observables}
    return (first, stop, first, buffers)


def record(trace: Mapping[str, np.ndarray], first: np.ndarray, stop: np.ndarray, filled: Mapping) -> None:
    """Copy an interval's filled buffers (:func:`interval_buffer`) into ``trace`` (in place)."""
    count = stop - first
    width = int(np.max(count, initial=0))
    if width == 0:
        return
    valid = np.arange(width)[None, :] < count[:, None]
    rows, cols = np.nonzero(valid)
    for o, values in filled.items():
        trace[o][rows, first[rows] + cols] = np.asarray(values)[rows, cols]
