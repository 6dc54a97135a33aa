"""With the process noise switched off, the simulator is Euler's method for the model's ODE.

Checked against closed-form solutions (one-compartment PK, IV bolus + zero-order infusion, and
oral dosing) and against scipy's ``solve_ivp`` for the glucose-insulin model, with doses placed
inside sub-steps so that event splitting is exercised. Euler is first order: its global error on
a stable linear ODE is at most ``h/2 * int |x''| dt`` (Hairer, Nørsett & Wanner, *Solving ODEs I*,
Thm II.3.4 with a contractive flow), and halves when ``h`` halves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from medsim.models import get
from medsim.simulate import DoseEvents, Simulator

PK_IV = get("pk_iv_1cmt")
PK_ORAL = get("pk_oral_1cmt")
GLUCOSE = get("glucose_insulin")
KEY = jax.random.key(0)


def _theta(model, **values) -> dict:
    theta = {k: float(v) for k, v in model.typical_parameters().items()}
    theta.update(values)
    return {k: jnp.full((1,), v, jnp.float32) for k, v in theta.items()}


def _iv_exact(t: np.ndarray, k: float) -> np.ndarray:
    """Central amount (mg) for: 5 mg bolus at 0, 0.3 mg/h constant, 10 mg bolus at 1.37 h,
    6 mg infused at 4 mg/h from 3.1 h (to 4.6 h); x' = -k x + u(t) solved piecewise."""
    breaks = [(0.0, 5.0, 0.3), (1.37, 10.0, 0.3), (3.1, 0.0, 4.3), (4.6, 0.0, 0.3)]
    out = np.empty_like(t)
    for i, ti in enumerate(t):
        x, s = 0.0, 0.0
        for j, (tb, bolus, u) in enumerate(breaks):
            if tb > ti:
                break
            end = min(ti, breaks[j + 1][0]) if j + 1 < len(breaks) else ti
            x = x + bolus
            d = end - tb
            x = x * np.exp(-k * d) + u / k * (1 - np.exp(-k * d))
            s = end
        assert s == ti
        out[i] = x
    return out


@pytest.mark.parametrize("scheme", ["euler", "milstein"])
def test_pk_iv_bolus_and_infusion_match_the_analytic_solution(scheme):
    cl, v = 0.6, 1.5  # L/h, L: k = 0.4 /h, fast enough for the step error to show
    theta = _theta(PK_IV, CL=cl, V=v, sigma_central=0.0)
    events = DoseEvents.from_arrays([[0.0, 1.37, 3.1]], [[1, 1, 1]], [[5.0, 10.0, 6.0]], [[0.0, 0.0, 4.0]])
    errors = []
    for dt in (0.25, 0.125):
        res = Simulator(PK_IV, dt=dt, scheme=scheme).advance(
            PK_IV.initial_state(theta), theta, 0.0, 8.0, key=KEY, events=events, rates={1: 0.3}, save_every=1
        )
        t = np.asarray(res.path.time[0], np.float64)
        for tb in (1.37, 3.1, 4.6):  # every event time is a grid point
            assert np.any(t == np.float32(tb))
        exact = _iv_exact(t, cl / v)
        err = np.abs(np.asarray(res.path.values["conc"][0], np.float64) * v - exact)
        # Bound: h/2 * int |x''| with x'' = -k x' = -k (u - k x), from the exact path (trapezoid);
        # float32 rounding adds ~1e-6 relative.
        x2 = np.abs(cl / v * (cl / v * exact - 0.3))
        bound = dt / 2 * np.sum(np.diff(t) * x2[1:]) + 1e-5 * exact.max()
        assert err.max() <= bound, (err.max(), bound)
        errors.append(err.max())
    assert 1.8 < errors[0] / errors[1] < 2.2  # first order: halving dt halves the error


def test_pk_oral_matches_the_bateman_function():
    ka, cl, v = 1.6, 2.75, 31.9
    k = cl / v
    theta = _theta(PK_ORAL, ka=ka, CL=cl, V=v, sigma_central=0.0)
    events = DoseEvents.from_arrays([[0.0]], [[1]], [[320.0]])
    errors = []
    for dt in (0.05, 0.025):
        res = Simulator(PK_ORAL, dt=dt, scheme="milstein").advance(
            PK_ORAL.initial_state(theta), theta, 0.0, 12.0, key=KEY, events=events, save_every=1
        )
        t = np.asarray(res.path.time[0], np.float64)
        exact = 320.0 * ka / (ka - k) * (np.exp(-k * t) - np.exp(-ka * t)) / v  # mg/L
        conc = np.asarray(res.path.values["conc"][0], np.float64)
        # x'' of the central amount is bounded by D ka (ka + k) here; same global bound as above.
        bound = dt / 2 * 12.0 * 320.0 * ka * (ka + k) / v
        assert np.abs(conc - exact).max() <= bound
        errors.append(np.abs(conc - exact).max())
    assert 1.8 < errors[0] / errors[1] < 2.2


def _glucose_reference(theta: dict, basal: float) -> dict[str, float]:
    """solve_ivp (LSODA, rtol 1e-11) through the same doses, piecewise between events."""
    names = GLUCOSE.state_names
    th = {k: float(v[0]) for k, v in theta.items()}
    x0 = GLUCOSE.initial_state(th)
    y = np.array([float(x0[s]) for s in names])

    def rhs(t, yy, extra):
        f = GLUCOSE.drift(t, dict(zip(names, yy, strict=True)), th, {"insulin_sc": basal + extra})
        return [f[s] for s in names]

    for a, b, r in ((0.0, 30.5, 0.0), (30.5, 100.25, 0.0), (100.25, 140.25, 0.05), (140.25, 360.0, 0.0)):
        if a == 30.5:  # 60 g meal and 5 U bolus
            y[names.index("gut1")] += 60.0
            y[names.index("insulin_sc")] += 5.0
        y = solve_ivp(rhs, (a, b), y, args=(r,), method="LSODA", rtol=1e-11, atol=1e-12).y[:, -1]
    return dict(zip(names, y, strict=True))


def test_glucose_insulin_matches_solve_ivp():
    theta = _theta(GLUCOSE, sigma_glucose=0.0)
    basal = 1.2 / 60  # U/min
    # Meal and bolus at 30.5 min and a 2 U infusion over [100.25, 140.25) min: off the 1-min grid.
    events = DoseEvents.from_arrays([[30.5, 30.5, 100.25]], [[2, 1, 1]], [[60.0, 5.0, 2.0]], [[0.0, 0.0, 0.05]])
    ref = _glucose_reference(theta, basal)
    err = {}
    for dt in (1.0, 0.5):
        res = Simulator(GLUCOSE, dt=dt, scheme="milstein").advance(
            GLUCOSE.initial_state(theta), theta, 0.0, 360.0, key=KEY, events=events, rates={1: basal}
        )
        err[dt] = {s: float(res.state[s][0]) - ref[s] for s in GLUCOSE.state_names}
    for s in ("glucose", "insulin_p", "gut2"):
        # First order in dt: the error halves (asymptotic ratio 2; measured 1.999). A dose applied
        # at the wrong time would leave an O(1) error that does not shrink with dt.
        assert 1.9 < err[1.0][s] / err[0.5][s] < 2.1, (s, err)
    # In absolute terms: 0.19 mg/dL at dt = 1 min, well inside a CGM's 1 mg/dL resolution.
    assert abs(err[1.0]["glucose"]) < 0.5
