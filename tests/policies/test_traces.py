"""CGM-grid traces sampled from the simulator's sub-step paths (policies.traces)."""

from __future__ import annotations

import numpy as np
import pytest

from medsim.policies.traces import empty_trace, sample_interval, trace_grid


def test_grid_points_of_irregular_intervals_are_filled_once_by_interpolation():
    """Two patients with different, off-grid interaction times; the observable is linear in time
    on each sub-step, so linear interpolation is exact (to float rounding, 1e-9 relative)."""
    grid = trace_grid("glucose_mg_dL", horizon=20.0, time_unit="min")
    assert grid.step == 5.0 and grid.n_points == 4  # 0, 5, 10, 15 (20 is the horizon, excluded)
    trace = empty_trace(grid, 2)

    def f(t):
        return 100.0 + 3.0 * t

    for t0, t1 in ((np.array([0.0, 0.0]), np.array([7.3, 10.0])), (np.array([7.3, 10.0]), np.array([20.0, 20.0]))):
        steps = [np.append(np.arange(a, b, 1.0), [b, b]) for a, b in zip(t0, t1, strict=True)]  # padded ends
        width = max(s.size for s in steps)
        times = np.stack([np.pad(s, (0, width - s.size), mode="edge") for s in steps])
        sample_interval(grid, trace, t0, t1, times, {"glucose_mg_dL": f(times)})
    np.testing.assert_allclose(trace["glucose_mg_dL"], f(np.array([[0, 5, 10, 15]] * 2, float)), rtol=1e-9)


def test_inactive_patients_and_models_without_glucose_record_nothing():
    assert trace_grid(None, horizon=96.0, time_unit="h") is None
    grid = trace_grid("glucose_mg_dL", horizon=60.0, time_unit="min")
    trace = empty_trace(grid, 1)
    t = np.array([30.0])
    sample_interval(grid, trace, t, t, np.full((1, 3), 30.0), {"glucose_mg_dL": np.full((1, 3), 90.0)})
    assert np.isnan(trace["glucose_mg_dL"]).all()
    assert trace_grid("glucose_mg_dL", horizon=2.0, time_unit="h").step == pytest.approx(5 / 60)
