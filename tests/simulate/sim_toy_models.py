"""Test models with known solutions: Brownian motion with drift and geometric Brownian motion.

Both are scalar SDEs on a state ``w``, observed as ``y = w``:

* :class:`DriftingBM`: ``dw = mu dt + sigma dW`` (linear bridge scale); its running maximum has
  the closed-form law of :func:`bm_max_exceeds`.
* :class:`GBM`: ``dw = mu w dt + sigma w dW`` (log bridge scale); exact solution
  ``w_T = w_0 exp((mu - sigma^2 / 2) T + sigma W_T)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import norm

from medsim.models.base import Observable, Parameter, PhysiologyModel, State
from medsim.simulate import noise


@dataclass(frozen=True)
class DriftingBM(PhysiologyModel):
    name: str = "test_bm"
    time_unit: str = "h"
    states: tuple = (State("w", "1"),)
    parameters: tuple = (
        Parameter("mu", "1/h", 1.0, kind="covariate_effect"),
        Parameter("sigma", "1/sqrt(h)", 1.0, kind="process_noise"),
    )
    observables: tuple = (Observable("y", "1", bridge_scale="linear"),)
    dose_targets: dict = field(default_factory=lambda: {1: "w"})
    dose_scale: dict = field(default_factory=lambda: {1: 1.0})

    def initial_state(self, theta):
        return {"w": 0.0 * theta["mu"]}

    def drift(self, t, x, theta, rate):
        return {"w": theta["mu"] + 0.0 * x["w"] + rate.get("w", 0.0)}

    def diffusion(self, t, x, theta):
        return {"w": theta["sigma"] + 0.0 * x["w"]}

    def observe(self, x, theta):
        return {"y": x["w"]}


@dataclass(frozen=True)
class GBM(PhysiologyModel):
    name: str = "test_gbm"
    time_unit: str = "h"
    states: tuple = (State("w", "1"),)
    parameters: tuple = (
        Parameter("mu", "1/h", 0.1, kind="covariate_effect"),
        Parameter("sigma", "1/sqrt(h)", 0.5, kind="process_noise"),
    )
    observables: tuple = (Observable("y", "1", bridge_scale="log"),)
    dose_targets: dict = field(default_factory=lambda: {1: "w"})
    dose_scale: dict = field(default_factory=lambda: {1: 1.0})

    def initial_state(self, theta):
        return {"w": 1.0 + 0.0 * theta["mu"]}

    def drift(self, t, x, theta, rate):
        return {"w": theta["mu"] * x["w"]}

    def diffusion(self, t, x, theta):
        return {"w": theta["sigma"] * x["w"]}

    def observe(self, x, theta):
        return {"y": x["w"]}


def bm_max_exceeds(b: float, mu: float, sigma: float, horizon: float) -> float:
    """P(max_{s <= T} (mu s + sigma W_s) >= b) for b > 0 (reflection principle with drift;
    Borodin & Salminen, *Handbook of Brownian Motion*, 2002, 1.1.4)."""
    st = sigma * np.sqrt(horizon)
    return float(norm.sf((b - mu * horizon) / st) + np.exp(2 * mu * b / sigma**2) * norm.cdf((-b - mu * horizon) / st))


@jax.jit(static_argnums=(2,))
def brownian_increments(k1: jax.Array, k2: jax.Array, n_steps: int) -> jax.Array:
    """The standard normals the simulator uses for channel 0, sub-steps ``0 .. n_steps - 1``: (B, n)."""

    def body(_, i):
        return None, jnp.stack(noise.normal_pair(k1, k2, i.astype(jnp.uint32), 0), axis=1)

    _, z = jax.lax.scan(body, None, jnp.arange((n_steps + 1) // 2))
    return jnp.transpose(z, (1, 0, 2)).reshape(k1.shape[0], -1)[:, :n_steps]
