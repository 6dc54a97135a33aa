"""Noise-free observables on per-patient observation schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medsim.models import get
from medsim.simulate import DoseEvents, simulate_schedule

MODEL = get("pk_iv_1cmt")
CL, V, DT = 0.6, 1.5, 0.01


def _theta(n: int, sigma: float = 0.0) -> dict:
    theta = {k: float(v) for k, v in MODEL.typical_parameters().items()}
    theta.update(CL=CL, V=V, sigma_central=sigma)
    return {k: jnp.full((n,), v, jnp.float32) for k, v in theta.items()}


def test_ode_solution_at_each_patients_times():
    obs = np.array([[0.5, 1.3, 2.0, 2.0], [0.0, 0.25, 3.0, 4.5]], np.float32)  # row 0 padded
    # 10 mg at 0 for both; patient 0 gets 8 mg more at 1.3 h, exactly at an observation time.
    events = DoseEvents.from_arrays([[0.0, 1.3], [0.0, np.inf]], [[1, 1], [1, 1]], [[10.0, 8.0], [10.0, 0.0]])
    out = simulate_schedule(MODEL, _theta(2), events, obs, key=jax.random.key(0), dt=DT)
    conc = np.asarray(out["conc"], np.float64)
    assert conc.shape == (2, 4)
    k = CL / V
    t = obs.astype(np.float64)
    exact = 10.0 / V * np.exp(-k * t)
    exact[0, 2:] += 8.0 / V * np.exp(-k * (t[0, 2:] - 1.3))  # the 1.3 h sample is pre-dose (trough)
    exact[1, 0] = 0.0  # likewise the sample at 0 h, taken with the first dose
    # Euler's global error for x' = -k x is <= h/2 * k^2 * t * x0 (first order); 1e-5 covers float32.
    bound = DT / 2 * k**2 * t * 18.0 / V + 1e-5
    assert np.all(np.abs(conc - exact) <= bound), (conc, exact)
    assert conc[0, 2] == conc[0, 3]  # padding repeats the last time and value


def test_process_noise_and_key_reproducibility():
    obs = np.tile(np.array([[1.0, 2.0, 6.0]], np.float32), (64, 1))
    events = DoseEvents.from_arrays(np.zeros((64, 1)), np.ones((64, 1)), np.full((64, 1), 10.0))
    a = simulate_schedule(MODEL, _theta(64, 0.2), events, obs, key=jax.random.key(1), dt=0.05)
    b = simulate_schedule(MODEL, _theta(64, 0.2), events, obs, key=jax.random.key(1), dt=0.05)
    np.testing.assert_array_equal(np.asarray(a["conc"]), np.asarray(b["conc"]))
    log_c = np.log(np.asarray(a["conc"], np.float64))
    # After the bolus, log(amount) is a Brownian motion with drift -k - sigma^2/2 and scale sigma, so
    # sd(log conc at 6 h) = 0.2 * sqrt(6) = 0.49; 64 paths estimate an sd to +-9 % (1 SE), and the
    # window 0.35-0.65 is about +-3.5 SE.
    assert 0.35 < np.std(log_c[:, 2]) < 0.65


@pytest.mark.parametrize(
    ("obs", "match"),
    [
        (np.array([1.0, 2.0]), r"expected shape \(B, T\)"),
        (np.array([[1.0, 0.5]]), r"obs_time\[0, 1\] is before obs_time\[0, 0\]"),
        (np.array([[-1.0, 0.5]]), r"obs_time\[0, 0\] = -1.0"),
        (np.array([[1.0, np.nan]]), "finite"),
    ],
)
def test_bad_schedules_are_named(obs, match):
    with pytest.raises(ValueError, match=match):
        simulate_schedule(MODEL, _theta(1), None, obs, key=jax.random.key(0), dt=DT)
