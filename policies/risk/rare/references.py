"""Reference problems with exact answers, for validating the rare-event estimators.

* Brownian motion with drift leaving a half-line: ``X_t = x0 + mu t + sigma W_t``,
  ``P(max_{t <= T} X_t >= b)`` in closed form (the reflection principle with a Girsanov drift;
  Borodin & Salminen, *Handbook of Brownian Motion*, 2002, 1.1.4 formula 2.1.1.4):
  ``Phi((mu T - d) / (sigma sqrt T)) + exp(2 mu d / sigma^2) Phi((-mu T - d) / (sigma sqrt T))``,
  ``d = b - x0``. The Brownian-bridge correction is exact for it on any grid (the bridge of a
  Brownian motion with constant drift does not depend on the drift), so the discretised problem
  has this exact answer whatever the number of steps.
* An Ornstein–Uhlenbeck process ``dX = -theta X dt + sigma dW`` leaving a half-line or an
  interval, sampled by its exact transition; the exit probability by a Crank–Nicolson solution of
  the backward Kolmogorov equation (:func:`exit_probability_pde`), checked against the closed form
  above at ``theta = 0`` in the tests.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import sparse, stats
from scipy.sparse.linalg import splu

from medsim.policies.risk.rare.problem import PathProblem, path_crossing_probability


def drifted_bm_exit(mu: float, sigma: float, distance: float, horizon: float) -> float:
    """``P(max_{t <= T} (mu t + sigma W_t) >= distance)`` (closed form; module docstring)."""
    s = sigma * math.sqrt(horizon)
    a = stats.norm.cdf((mu * horizon - distance) / s)
    # exp(2 mu d / s^2) Phi(.) in logs: the factor overflows where Phi underflows.
    b = math.exp(2.0 * mu * distance / sigma**2 + stats.norm.logcdf((-mu * horizon - distance) / s))
    return float(a + b)


def _bm_paths(inc: jax.Array, params: dict) -> tuple[jax.Array, jax.Array]:
    h = params["h"]
    x = jnp.cumsum(params["mu"] * h + params["sigma"] * jnp.sqrt(h) * inc[..., 0], axis=1)
    z = jnp.concatenate([jnp.zeros_like(x[:, :1]), x], axis=1)
    return path_crossing_probability(z, params["distance"], params["sigma"] ** 2 * h, upper=True)


def drifted_bm_problem(mu: float, sigma: float, distance: float, horizon: float, n_steps: int) -> PathProblem:
    """Brownian motion with drift from 0 on ``n_steps`` steps, event ``max X >= distance``."""
    params = {k: jnp.float32(v) for k, v in (("mu", mu), ("sigma", sigma), ("distance", distance))}
    params["h"] = jnp.float32(horizon / n_steps)
    name = f"bm mu={mu:g} sigma={sigma:g} b={distance:g} T={horizon:g}"
    return PathProblem(_bm_paths, n_steps, 1, name, params)


def _ou_paths(inc: jax.Array, params: dict) -> tuple[jax.Array, jax.Array]:
    decay, sd, x0, s2h = params["decay"], params["sd"], params["x0"], params["s2h"]

    def step(x, z):
        x = decay * x + sd * z
        return x, x

    start = jnp.full(inc.shape[:1], x0, inc.dtype)
    _, xs = jax.lax.scan(step, start, inc[..., 0].T)
    z = jnp.concatenate([start[:, None], xs.T], axis=1)
    s_up, q_up = path_crossing_probability(z, params["upper"], s2h, upper=True)
    s_lo, q_lo = path_crossing_probability(z, params["lower"], s2h, upper=False)
    # Per step the two bridge crossings are treated as independent; an open side has its bound at
    # +-inf (score -inf, crossing 0).
    return jnp.maximum(s_up, s_lo), 1.0 - (1.0 - q_up) * (1.0 - q_lo)


def ou_problem(
    theta: float, sigma: float, lower: float | None, upper: float | None, horizon: float, n_steps: int, x0: float = 0.0
) -> PathProblem:
    """OU from ``x0`` leaving ``(lower, upper)`` (``None``: that side open), exact transitions.

    The score is the larger of the signed distances past each bound.
    """
    if lower is None and upper is None:
        raise ValueError("ou_problem: give at least one of lower, upper")
    h = horizon / n_steps
    sd = sigma * math.sqrt(-math.expm1(-2 * theta * h) / (2 * theta)) if theta > 0 else sigma * math.sqrt(h)
    params = {
        "decay": math.exp(-theta * h),
        "sd": sd,
        "x0": x0,
        "s2h": sigma**2 * h,
        "lower": -np.inf if lower is None else lower,
        "upper": np.inf if upper is None else upper,
    }
    name = f"ou theta={theta:g} sigma={sigma:g} ({lower}, {upper}) T={horizon:g}"
    return PathProblem(_ou_paths, n_steps, 1, name, {k: jnp.float32(v) for k, v in params.items()})


def exit_probability_pde(
    theta: float,
    sigma: float,
    lower: float | None,
    upper: float | None,
    horizon: float,
    x0: float = 0.0,
    mu: float = 0.0,
    n_space: int = 4000,
    n_time: int = 4000,
) -> float:
    """P(leave ``(lower, upper)`` before ``horizon``) for ``dX = (mu - theta X) dt + sigma dW``.

    Solves the backward equation ``u_s = (mu - theta x) u_x + sigma^2 / 2 u_xx`` (``s`` = time
    left) for ``u = P(exit within s | X = x)`` with ``u = 1`` on the bounds and ``u(0, x) = 0``
    inside, by central differences in space and Crank–Nicolson in time after four implicit Euler
    steps (Rannacher 1984, which damps the jump at the corner). An open side is truncated 12
    stationary standard deviations (or 12 sigma sqrt(T)) away, where ``u = 0``. Error
    O(dx^2 + ds^2).
    """
    spread = sigma / math.sqrt(2 * theta) if theta > 0 else sigma * math.sqrt(horizon)
    lo = lower if lower is not None else min(x0, upper) - 12 * spread - abs(mu) * horizon
    hi = upper if upper is not None else max(x0, lower) + 12 * spread + abs(mu) * horizon
    x = np.linspace(lo, hi, n_space + 1)
    dx = x[1] - x[0]
    xi = x[1:-1]
    a = mu - theta * xi
    d = 0.5 * sigma**2 / dx**2
    lower_diag = d - a / (2 * dx)
    upper_diag = d + a / (2 * dx)
    main = -2 * d * np.ones_like(xi)
    op = sparse.diags([lower_diag[1:], main, upper_diag[:-1]], [-1, 0, 1], format="csc")
    # Boundary values: 1 on an exit bound, 0 on a truncated open side.
    bc = np.zeros_like(xi)
    bc[0] = lower_diag[0] * (1.0 if lower is not None else 0.0)
    bc[-1] = upper_diag[-1] * (1.0 if upper is not None else 0.0)
    eye = sparse.identity(xi.size, format="csc")
    ds = horizon / n_time
    u = np.zeros_like(xi)
    cn = splu((eye - ds / 2 * op).tocsc())  # also implicit Euler with step ds / 2
    for _ in range(4):  # four half steps of implicit Euler = 2 ds
        u = cn.solve(u + ds / 2 * bc)
    rhs_op = (eye + ds / 2 * op).tocsr()
    for _ in range(n_time - 2):
        u = cn.solve(rhs_op @ u + ds * bc)
    return float(np.interp(x0, xi, u))
