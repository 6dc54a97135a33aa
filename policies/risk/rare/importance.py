"""Importance sampling by a change of drift, with a cross-entropy-fitted control.

Shifting the mean of the standard-normal increments by a control ``u_t`` (a drift change
``sigma u_t / sqrt(h)`` of the underlying SDE) and weighting each path by its likelihood ratio
(Girsanov's theorem, discretised: ``w = exp(-sum_t u_t xi_t + 1/2 sum_t u_t^2)`` at the shifted
increments ``xi``) keeps ``E[w q]`` equal to the nominal ``E[q]``. The control is constant or
linear in time per noise channel, ``u_t = a + b (t + 1/2) / T``, and is fitted by the multilevel
cross-entropy method (Rubinstein & Kroese 2004, *The Cross-Entropy Method*, Alg. 3.4.1;
used for closed-loop systems under test by O'Kelly et al. 2018, NeurIPS): at each stage the paths with the
top ``rho`` share of scores (or, once the event is reached, all paths weighted by their crossing
probability) give the weighted mean increment per step, and ``(a, b)`` is its least-squares fit.

The estimate is the mean of ``w q`` over ``M`` fresh paths with the fitted control; its interval
is the CLT interval of that mean. It is only as good as the control: where the likely way to fail
is not a shift of the increments (several distinct failure routes, a policy that reacts), the
weights degenerate, and the effective sample size reported with the estimate says so.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.quantiles import norm_ppf
from medsim.policies.risk.rare.problem import PathProblem
from medsim.policies.risk.rare.result import RareEstimate

CONTROLS = ("constant", "linear")


@partial(jax.jit, static_argnums=(0, 1))
def _sample(problem: PathProblem, m: int, key: jax.Array, control: jax.Array, params):
    problem = problem.with_params(params)
    xi = jax.random.normal(key, (m, *problem.shape)) + control[None]
    log_w = -jnp.sum(xi * control[None], axis=(1, 2)) + 0.5 * jnp.sum(control**2)
    score, crossing = problem.evaluate(xi)
    return xi, score.max(axis=1), crossing, log_w


def _fit(xi: np.ndarray, h: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean increment per step and channel, and its least-squares fit on ``basis``."""
    h = h / h.sum()
    mean = np.einsum("m,mtc->tc", h, xi)
    coef, *_ = np.linalg.lstsq(basis, mean, rcond=None)  # (n_basis, C)
    return basis @ coef, coef


def importance_sampling(
    problem: PathProblem,
    *,
    seed: int,
    n_paths: int = 10000,
    control: str = "linear",
    ce_paths: int = 2000,
    ce_rho: float = 0.1,
    max_stages: int = 30,
    level: float = 0.95,
) -> RareEstimate:
    """Estimate ``E[crossing]`` of ``problem`` by drift-change importance sampling.

    Parameters
    ----------
    problem : PathProblem
    seed : int
    n_paths : int
        Weighted paths of the final estimate (``M``).
    control : {"constant", "linear"}
        Family of the control in time.
    ce_paths : int
        Paths per cross-entropy stage.
    ce_rho : float
        Elite share of a cross-entropy stage.
    max_stages : int
        Cross-entropy stages at most; the fit stops one stage after the event level is reached.
    level : float
        Confidence level of the interval.

    Raises
    ------
    ValueError
        On an unknown control, or bad counts.
    """
    if control not in CONTROLS:
        raise ValueError(f"control: expected one of {CONTROLS}, got {control!r}")
    if not (isinstance(n_paths, int) and n_paths >= 2 and isinstance(ce_paths, int) and ce_paths >= 10):
        raise ValueError(f"n_paths >= 2 and ce_paths >= 10 expected, got {n_paths!r}, {ce_paths!r}")
    if not (0.0 < ce_rho < 1.0):
        raise ValueError(f"ce_rho: expected a share in (0, 1), got {ce_rho!r}")
    T, C = problem.shape
    s = (np.arange(T) + 0.5) / T
    basis = np.stack([np.ones(T), s], axis=1) if control == "linear" else np.ones((T, 1))
    root = jax.random.key(int(seed) % 2**32)
    static = problem.without_params()
    u = np.zeros((T, C), np.float32)
    coef = np.zeros((basis.shape[1], C))
    cost = 0.0
    reached = False
    for stage in range(max_stages):
        xi, top, q, log_w = jax.tree_util.tree_map(
            np.asarray, _sample(static, ce_paths, jax.random.fold_in(root, stage + 1), jnp.asarray(u), problem.params)
        )
        cost += ce_paths
        gamma = min(0.0, float(np.quantile(top, 1.0 - ce_rho)))
        w = np.exp(log_w.astype(float) - log_w.max())
        h = w * (q if gamma >= 0.0 else (top >= gamma))
        if not h.sum() > 0:
            break
        fitted, coef = _fit(xi.astype(float), h, basis)
        u = fitted.astype(np.float32)
        if reached:
            break
        reached = gamma >= 0.0
    xi, top, q, log_w = jax.tree_util.tree_map(
        np.asarray, _sample(static, n_paths, jax.random.fold_in(root, 0), jnp.asarray(u), problem.params)
    )
    cost += n_paths
    y = np.exp(log_w.astype(float)) * q.astype(float)
    m = float(y.mean())
    se = float(y.std(ddof=1) / math.sqrt(n_paths))
    ess = float(y.sum() ** 2 / (y**2).sum()) if (y > 0).any() else 0.0
    method = f"importance sampling ({control} cross-entropy control, {n_paths} paths; CLT interval)"
    if not se > 0:
        est = Estimate.without_interval(m, n_paths, method, "no weighted path reached the bound", seed, level)
    else:
        half = float(norm_ppf(0.5 + level / 2.0)) * se
        est = Estimate(m, max(m - half, 0.0), m + half, n_paths, method, seed, level, se)
    return RareEstimate(
        probability=est,
        relative_error=se / m if m > 0 else math.nan,
        path_equivalents=cost,
        estimator="is",
        problem=problem.name,
        iterations=float(stage + 1),
        ess=ess,
        control=tuple(float(c) for c in coef.T.ravel()),
    )
