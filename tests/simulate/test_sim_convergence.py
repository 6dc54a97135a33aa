"""Measured strong and weak convergence orders on geometric Brownian motion.

The exact solution ``w_T = exp((mu - sigma^2/2) T + sigma W_T)`` is evaluated on the very Brownian
increments the simulator drew (rebuilt from the documented counter-based stream), so the strong
error needs no reference simulation. Expected orders (Kloeden & Platen 1992, Thms 10.2.2, 10.3.5,
14.5.1): Euler–Maruyama strong 1/2, Milstein strong 1, both weak 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sim_toy_models import GBM, brownian_increments

from medsim.simulate import Simulator, noise

STEPS = (8, 16, 32, 64)  # sub-steps over T = 1
N_PATHS = 4000
MODEL = GBM()  # one model object: its compiled kernels are shared across step sizes


def _errors(scheme: str, mu: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean absolute (strong) and mean signed (weak) end-point errors per step count."""
    model = MODEL
    theta = {"mu": jnp.full(N_PATHS, mu), "sigma": jnp.full(N_PATHS, sigma)}
    x0 = model.initial_state(theta)
    key = jax.random.key(2024)
    k1, k2 = noise.patient_key_words(key, N_PATHS)
    strong, weak = [], []
    for n in STEPS:
        res = Simulator(model, dt=1.0 / n, scheme=scheme).advance(x0, theta, 0.0, 1.0, key=key)
        w_t = np.asarray(brownian_increments(k1, k2, n), np.float64).sum(axis=1) / np.sqrt(n)
        exact = np.exp(mu - sigma**2 / 2 + sigma * w_t)
        err = np.asarray(res.state["w"], np.float64) - exact
        strong.append(np.abs(err).mean())
        weak.append(err.mean())  # the exact solution on the same path is a control variate
    return np.asarray(strong), np.asarray(weak)


def _slope(err: np.ndarray) -> float:
    return float(np.polyfit(np.log(1.0 / np.asarray(STEPS)), np.log(np.abs(err)), 1)[0])


@pytest.mark.parametrize(("scheme", "order"), [("euler", 0.5), ("milstein", 1.0)])
def test_strong_order(scheme, order):
    strong, _ = _errors(scheme, mu=0.1, sigma=0.5)
    # Tolerance 0.12: the Monte Carlo SE of each mean |error| is ~1.2 % (4000 paths, CV of |e|
    # ~0.75), i.e. ~0.01 on the slope over this dt range; the rest allows the pre-asymptotic
    # curvature seen for Milstein at dt = 1/8 (its slope rises towards 1 as dt shrinks).
    assert abs(_slope(strong) - order) < 0.12, strong
    assert np.all(np.diff(strong) < 0)


@pytest.mark.parametrize("scheme", ["euler", "milstein"])
def test_weak_order_one(scheme):
    # mu = 1 makes the weak error large ((1 + mu h)^n vs e^mu: 0.15 at h = 1/8) and sigma = 0.2
    # keeps the control-variate noise small (SE of the mean error < 3e-4 vs 2e-2 at h = 1/64).
    _, weak = _errors(scheme, mu=1.0, sigma=0.2)
    assert abs(_slope(weak) - 1.0) < 0.1, weak
    # For GBM both schemes have E[w_n] = (1 + mu h)^n exactly, so the weak error is known in closed
    # form: e - (1 + 1/n)^n; agreement within 4 standard errors of the control-variate mean.
    expected = np.array([(1 + 1 / n) ** n for n in STEPS]) - np.e
    assert np.all(np.abs(weak - expected) < 4 * 3e-4), (weak, expected)
