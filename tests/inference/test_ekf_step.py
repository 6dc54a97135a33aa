"""The filter step a glucose model declares (``filter_max_substep``) against a fine-step reference.

A fit that names no ``max_substep`` integrates the filter with the model's declared step; the
test holds the log-likelihood of every observation at that step to a fine-step reference, with
the bounds the model files state (float64, typical parameters).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import medsim.data
from medsim.inference.checks.heldout import split_after
from medsim.inference.likelihood import build_timeline, cohort_loglik
from medsim.models import get
from medsim.synthetic import glucose_cohort


@pytest.fixture(scope="module", autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def pointwise(model, padded, noise, residual, **step):
    timeline = build_timeline(model, padded, dtype=np.float64, **step)
    theta = model.typical_parameters()
    return np.asarray(jax.jit(lambda n: cohort_loglik(model, timeline, theta, n, residual))(noise))


def test_glucose_insulin_declared_step_is_within_5e3_nats_per_observation():
    model = get("glucose_insulin")
    padded = glucose_cohort(2, 1.0, seed=3, obs_every=60.0).cohort.padded()
    # the default is the declared step
    assert build_timeline(model, padded).n_slots == build_timeline(model, padded, max_substep=10.0).n_slots
    residual = {"glucose_mg_dL_add": 5.0, "glucose_mg_dL_prop": 0.05}
    noise = {"sigma_glucose": 0.02}  # 5x the typical process noise, so the covariance shapes every density
    declared = pointwise(model, padded, noise, residual)
    reference = pointwise(model, padded, noise, residual, max_substep=0.5)
    # Measured here: at most 1.7e-3 nats, at an observation 4 SDs from its prediction. An error of
    # e nats at z SDs is a shift of the predicted glucose by e / z residual SDs: 5e-3 bounds it
    # at 1e-3 SD (0.006 mg/dL at SD 5 mg/dL), far below the measurement noise.
    assert np.abs(declared - reference).max() < 5e-3


@pytest.mark.slow  # the 10-state model's filter compiles in ~10 s
def test_t1d_ou_declared_step_is_within_003_nats_per_cgm_reading():
    model = get("t1d_ou")
    half_day = split_after(medsim.data.load("t1d_sim").subset(("adult#001",)), after=720.0)[0]
    padded = half_day.padded()
    noise = {p.name: p.typical for p in model.params_of_kind("process_noise")}
    declared = pointwise(model, padded, noise, {})
    reference = pointwise(model, padded, noise, {}, max_substep=0.5)
    # Measured at 3.75-min steps (15-min CGM, the declared 4 min) against 32 steps per reading:
    # at most 0.012 nats per reading over the demo's 6 patients x 2 days; bound 0.03.
    assert np.abs(declared - reference).max() < 0.03
