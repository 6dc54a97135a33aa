"""The filter's state after each subject's last event (where a personalized forecast starts).

Against the exact Kalman filter of a linear SDE (``inference_linear``), and against the
pointwise likelihood the same filter computes for fitting (``cohort_loglik``).
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pytest
from inference_linear import LinearOral, exact_kalman_filter
from test_ekf_exact import DOSES, NOISE, THETA, TIMES, VALUES, linear_cohort

from medsim.inference.likelihood import build_timeline, cohort_loglik
from medsim.inference.likelihood.filtered import cohort_filter, filtered_state


@pytest.fixture(scope="module", autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def test_final_state_matches_the_exact_kalman_filter():
    model = LinearOral()
    tl = build_timeline(model, linear_cohort(), dtype=np.float64, substeps=32, max_substep=100.0)
    state = filtered_state(model, tl, THETA, NOISE, {"conc_add": 0.3})
    _, m, p, last = exact_kalman_filter({**THETA, **NOISE}, 0.3, TIMES, VALUES, DOSES)
    assert state.state_names == ("gut", "central")
    assert state.time[0] == pytest.approx(last)  # the last observation, 16 h
    # 32 RK4 steps per interval: the log-likelihood is within 2e-5 nats of exact
    # (test_ekf_exact); the moments carry the same 4th-order error, ~1e-6 relative here
    np.testing.assert_allclose(state.mean[0], m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.cov[0], p, rtol=1e-5, atol=1e-6)


def test_same_pass_gives_the_fitting_likelihood():
    model = LinearOral()
    tl = build_timeline(model, linear_cohort(), dtype=np.float64, substeps=4, max_substep=1.0)
    residual = {"conc_add": 0.3}
    pointwise, _ = jax.jit(partial(cohort_filter, model))(tl, THETA, NOISE, residual)
    expected = jax.jit(partial(cohort_loglik, model, tl))(THETA, NOISE, residual)
    # same algorithm; the layouts differ in summation order only (float64 round-off)
    np.testing.assert_allclose(np.asarray(pointwise), np.asarray(expected), rtol=1e-10, atol=1e-10)


def test_ode_limit_has_zero_covariance():
    model = LinearOral()
    tl = build_timeline(model, linear_cohort(), dtype=np.float64)
    state = filtered_state(model, tl, THETA, None, {"conc_add": 0.3})
    assert np.all(state.cov == 0.0)
    # without noise the filter does not move the mean: the ODE solution, 300 mg oral at 0 h,
    # 100 mg IV at 12 h, 50 mg infused over 6-8 h
    assert state.mean[0, 0] == pytest.approx(300 * np.exp(-THETA["ka"] * 16), rel=1e-6)
