"""The simulator step a model declares for medsim's predictive checks (``predictive_dt``).

Held-out gates, VPCs, fit reports and twin forecasts simulate with ``default_dt(model)`` when a
call names no step. A model that declares ``predictive_dt`` gets that step; the test holds the
noise-free glucose it simulates there to a fine-step reference, with the bound the model file
states.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medsim.inference.checks.predictive import default_dt
from medsim.models import get
from medsim.simulate import DoseEvents, simulate_schedule


def test_default_dt_is_the_declared_step_scaled_by_the_rate_fraction():
    model = get("t1d_ou")
    assert default_dt(model) == model.predictive_dt == 0.1
    assert default_dt(model, rate_dt=0.004) == pytest.approx(0.02)  # SBC's finer step (inference.calibration)
    pk = get("pk_oral_1cmt")  # declares none: 0.02 over its fastest typical rate (ka = 1.6 /h)
    assert pk.predictive_dt is None
    assert default_dt(pk) == pytest.approx(0.02 / 1.6, rel=1e-5)


#: model, its insulin-sensitivity parameter, the overdose patient's bolus factor, and the bound
#: (mg/dL) on the declared step's noise-free glucose against a 0.005-min reference. Measured at the
#: declared step: t1d_ou 0.047 (0.1 min), glucose_insulin 0.063 (0.1 min), uva_padova 0.088 (0.05
#: min; 0.093 with every patient's intestinal absorption at its cap, kabs = 1.25 /min). Each bound
#: leaves room for float32 and fails a step twice to five times coarser: 0.5 min gives t1d_ou 0.24
#: and glucose_insulin 0.33 mg/dL (0.2 min: 0.13); 0.1 min gives uva_padova 0.19.
DECLARED_STEPS = [
    ("t1d_ou", "S_I", 1.5, 0.1),
    ("glucose_insulin", "S_I", 2.5, 0.1),
    ("uva_padova", "Vmx", 2.5, 0.15),
]


@pytest.mark.parametrize(("name", "sensitivity", "overdose", "bound"), DECLARED_STEPS)
def test_declared_step_is_within_its_bound_of_a_fine_step(name, sensitivity, overdose, bound):
    model = get(name)
    assert model.predictive_dt is not None
    theta = model.individual_parameters(model.typical_parameters(), {}, model.reference_covariates())
    # Four patients: insulin sensitivity 0.5x, 1x, 2x typical, and typical with every bolus
    # `overdose` times too large (glucose well below 70 mg/dL, where the fast dynamics of a low
    # matter most). Noise-free: every process-noise scale is zero.
    scale_si = np.array([0.5, 1.0, 2.0, 1.0])
    bolus = np.array([1.0, 1.0, 1.0, overdose])
    params = {k: jnp.full((4,), v, jnp.float32) for k, v in theta.items()}
    params |= {sensitivity: jnp.asarray(float(theta[sensitivity]) * scale_si, jnp.float32)}
    params |= {p.name: jnp.zeros(4) for p in model.params_of_kind("process_noise")}
    basal = float(theta["BASAL"]) / 60.0  # U/min
    meals = [(420.0, 50.0, 5.0), (750.0, 70.0, 7.0), (1140.0, 60.0, 6.0)]  # time, carbohydrate g, bolus U
    time = [[0.0] + [t for t, _, _ in meals] * 2] * 4
    cmt = [[1] + [model.meal_cmt] * 3 + [1] * 3] * 4
    amount = [[basal * 1440.0] + [g for _, g, _ in meals] + [u * b for _, _, u in meals] for b in bolus]
    rate = [[basal] + [0.0] * 6] * 4
    events = DoseEvents.from_arrays(time, cmt, amount, rate)
    grid = np.tile(np.arange(3.0, 1440.0 + 1e-6, 3.0, dtype=np.float32), (4, 1))

    def glucose(dt):
        out = simulate_schedule(model, params, events, grid, key=jax.random.key(0), dt=dt)
        return np.asarray(out[model.glucose_observable], np.float64)

    declared, fine = glucose(default_dt(model)), glucose(0.005)
    assert fine[3].min() < 60.0 < 170.0 < fine.max()  # the overdose patient goes low, meals go high
    # Euler's global error is first order in dt: the 0.005-min reference is 10-20x closer to the
    # solution than the declared step, so the difference is the declared step's error to ~10 %.
    err = np.abs(declared - fine)
    assert err.max() < bound, err.max(axis=1)
