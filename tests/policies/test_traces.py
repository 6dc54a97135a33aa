"""CGM-grid traces sampled by the simulator's kernel as it steps (policies.traces, kernel.TraceSpec)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import medsim.models as registry
from medsim.policies.traces import empty_trace, host_window, interval_buffer, record, trace_grid, trace_spec
from medsim.population.streams import Stream, patient_keys
from medsim.simulate import Simulator

GLUCOSE = registry.get("glucose_insulin")


def test_grid_points_of_irregular_intervals_are_the_interpolated_sub_step_path():
    """Two patients with different, off-grid interaction times (an insulin rate in the second): each
    grid point is the linear interpolation of the sub-step path the simulator saves. The kernel
    interpolates in float32, the reference (np.interp of the saved path) in float64: 1e-6
    relative covers a few float32 roundings (eps 6e-8) of values near 100."""
    sim = Simulator(GLUCOSE, dt=1.0)
    grid = trace_grid(GLUCOSE.glucose_observable, horizon=40.0, time_unit="min")
    assert grid.step == 5.0 and grid.n_points == 8  # 0, 5, ..., 35 (40 is the horizon, excluded)
    theta = {k: jnp.full(2, v, jnp.float32) for k, v in GLUCOSE.typical_parameters().items()}
    x = {k: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (2,)) for k, v in GLUCOSE.initial_state(theta).items()}
    trace, want = empty_trace(grid, 2), empty_trace(grid, 2)
    for i, (t0, t1) in enumerate(((np.array([0.0, 0.0]), np.array([7.3, 10.0])), (np.array([7.3, 10.0]), [40.0] * 2))):
        t1 = np.asarray(t1)
        window = host_window(grid, t0, t1)
        args = dict(key=patient_keys(0, Stream.PROCESS, np.arange(2), i), rates={1: jnp.full(2, 0.02 * i)})
        res = sim.advance(x, theta, t0, t1, trace=(trace_spec(grid, sim.dt), interval_buffer(grid, *window)), **args)
        record(trace, *window, res.trace)
        path = sim.advance(x, theta, t0, t1, save_every=1, **args).path
        for p in range(2):
            m = np.arange(window[0][p], window[1][p])
            times, values = np.asarray(path.time[p], np.float64), np.asarray(path.values["glucose_mg_dL"][p])
            want["glucose_mg_dL"][p, m] = np.interp(np.clip(m * grid.step, t0[p], t1[p]), times, values)
        x = res.state
    assert not np.isnan(trace["glucose_mg_dL"]).any()
    np.testing.assert_allclose(trace["glucose_mg_dL"], want["glucose_mg_dL"], rtol=1e-6)


def test_inactive_patients_and_models_without_glucose_record_nothing():
    assert trace_grid(None, horizon=96.0, time_unit="h") is None
    grid = trace_grid("glucose_mg_dL", horizon=60.0, time_unit="min")
    t = np.array([30.0, 30.0])
    first, stop = host_window(grid, t, np.array([30.0, 31.0]))
    np.testing.assert_array_equal(stop - first, [0, 1])  # t1 == t0: no grid point; [30, 31): the one at 30
    # A grid point within 1e-6 steps below an interval's end belongs to the next interval.
    first, stop = host_window(grid, np.array([0.0, 10.0 - 1e-7]), np.array([10.0 - 1e-7, 20.0]))
    np.testing.assert_array_equal(np.stack([first, stop]), [[0, 2], [2, 4]])
    assert trace_grid("glucose_mg_dL", horizon=2.0, time_unit="h").step == pytest.approx(5 / 60)
