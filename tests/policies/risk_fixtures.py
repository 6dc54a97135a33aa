"""Rollouts with closed-form answers for the risk tests, built with numpy.

The monitored observable ``x`` is a Brownian motion with drift, ``dx = mu dt + sigma dW``. Its
first-passage probability over ``[0, H]`` is known exactly, and on a fixed grid the
Brownian-bridge crossing probability ``exp(-2 (b - x_i)(b - x_{i+1}) / (sigma^2 dt))`` is exact
given the grid points (whatever the drift), so the bridge estimator is unbiased at any step.
Per-interval statistics are computed exactly as the simulator contract defines them
(:class:`medsim.simulate.types.IntervalStats`), from a path on a fine grid.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from medsim.policies.result import RolloutResult
from medsim.simulate.types import Bound


def bm_passage_probability(x0: float, bound: float, mu: float, sigma: float, horizon: float) -> float:
    """P(max over [0, H] of x0 + mu t + sigma W_t >= bound), bound > x0.

    Reflection principle with drift (Borodin & Salminen, *Handbook of Brownian Motion*, 2nd ed.,
    part II, 1.1.4; Karatzas & Shreve §3.5.C)::

        P = Phi((-a + mu H) / (sigma sqrt H)) + exp(2 mu a / sigma^2) Phi((-a - mu H) / (sigma sqrt H)),  a = b - x0
    """
    a = bound - x0
    s = sigma * np.sqrt(horizon)
    reflected = np.exp(2 * mu * a / sigma**2) * stats.norm.cdf((-a - mu * horizon) / s)
    return float(stats.norm.cdf((-a + mu * horizon) / s) + reflected)


def bm_paths(
    n: int, n_steps: int, horizon: float, *, x0: float, mu, sigma: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paths on a uniform grid: times (S+1,) and values (N, S+1); ``mu`` scalar or (N,)."""
    dt = horizon / n_steps
    t = np.linspace(0.0, horizon, n_steps + 1)
    mu = np.broadcast_to(np.asarray(mu, float), (n,))[:, None]
    inc = mu * dt + sigma * np.sqrt(dt) * rng.standard_normal((n, n_steps))
    x = np.concatenate([np.full((n, 1), x0), x0 + np.cumsum(inc, axis=1)], axis=1)
    return t, x


def _outside(b: Bound, x: np.ndarray) -> np.ndarray:
    return x > b.value if b.side == "upper" else x < b.value


def rollout_from_paths(
    t: np.ndarray,
    x: np.ndarray,
    *,
    sigma: float,
    bounds: tuple[Bound, ...],
    n_intervals: int,
    policy: str = "bm",
    draw: np.ndarray | None = None,
    measure_every: int = 1,
    noise_sd: float = 0.0,
    seed: int = 0,
    rng: np.random.Generator | None = None,
    efficacy: dict[str, np.ndarray] | None = None,
    out_of_support: np.ndarray | None = None,
    n_paths: int = 0,
) -> RolloutResult:
    """A RolloutResult whose ``K = n_intervals`` equal interaction intervals cover the path grid.

    Parameters
    ----------
    t : (S+1,) grid times; x : (N, S+1) values of the observable ``"x"``.
    sigma : diffusion of x (for the bridge probabilities).
    measure_every : a noisy measurement is taken at every this-many-th interaction start.
    """
    n, s1 = x.shape
    steps = s1 - 1
    if steps % n_intervals:
        raise ValueError("the grid must split evenly into the intervals")
    m = steps // n_intervals
    k = n_intervals
    dt = t[1] - t[0]
    seg = np.stack([x[:, i * m : (i + 1) * m + 1] for i in range(k)], axis=1)  # (N, K, m+1)
    seg_t = np.stack([t[i * m : (i + 1) * m + 1] for i in range(k)], axis=0)  # (K, m+1)
    j_count = len(bounds)
    log_surv = np.zeros((n, k, j_count))
    grid = np.zeros((n, k, j_count), bool)
    end = np.zeros((n, k, j_count), bool)
    t_out = np.zeros((n, k, j_count))
    first = np.full((n, k, j_count), np.inf)
    depth = np.zeros((n, k, j_count))
    for j, b in enumerate(bounds):
        out = _outside(b, seg)
        d0, d1 = seg[..., :-1] - b.value, seg[..., 1:] - b.value
        with np.errstate(over="ignore"):
            p = np.exp(-2.0 * d0 * d1 / (sigma**2 * dt))
        p = np.where(out[..., :-1] | out[..., 1:], 1.0, np.minimum(p, 1.0))
        with np.errstate(divide="ignore"):
            log_surv[..., j] = np.log1p(-p).sum(axis=-1)
        grid[..., j] = out[..., 1:].any(axis=-1)
        end[..., j] = out[..., -1]
        t_out[..., j] = (0.5 * dt * (out[..., :-1].astype(float) + out[..., 1:])).sum(axis=-1)
        inner = out[..., 1:]
        idx = np.argmax(inner, axis=-1)
        times = np.broadcast_to(seg_t[None, :, 1:], inner.shape)
        hit_time = np.take_along_axis(times, idx[..., None], axis=-1)[..., 0]
        first[..., j] = np.where(inner.any(axis=-1), hit_time, np.inf)
        exceed = seg - b.value if b.side == "upper" else b.value - seg
        depth[..., j] = np.maximum(exceed.max(axis=-1), 0.0)
    t_start = np.broadcast_to(seg_t[:, 0], (n, k)).copy()
    t_end = np.broadcast_to(seg_t[:, -1], (n, k)).copy()
    true_start = seg[..., 0]
    rng = rng if rng is not None else np.random.default_rng(seed + 1)
    measured = true_start + noise_sd * rng.standard_normal(true_start.shape)
    taken = (np.arange(k) % measure_every) == 0
    measured = np.where(taken[None, :], measured, np.nan)
    path_time = np.broadcast_to(t, (n_paths, s1)).copy() if n_paths else None
    return RolloutResult(
        policy=policy,
        bounds=tuple(bounds),
        horizon=float(t[-1]),
        time_unit="h",
        draw=np.arange(n) if draw is None else np.asarray(draw),
        subject=np.full(n, ""),
        t_start=t_start,
        t_end=t_end,
        mask=np.ones((n, k), bool),
        measured={"x": measured},
        true_start={"x": true_start},
        obs_min={"x": seg.min(axis=-1)},
        obs_max={"x": seg.max(axis=-1)},
        log_survival=log_surv,
        grid_violation=grid,
        end_violation=end,
        time_outside=t_out,
        first_outside=first,
        depth=depth,
        treatment={"bolus_cmt1": np.zeros((n, k))},
        efficacy=efficacy or {},
        out_of_support=out_of_support,
        path_time=path_time,
        path={"x": x[:n_paths].copy()} if n_paths else {},
        seed=seed,
        provenance={"model": "brownian_drift", "model_version": "1"},
    )


def bm_rollout(
    *,
    n: int,
    n_intervals: int,
    substeps: int,
    horizon: float = 1.0,
    x0: float = 0.0,
    mu=0.0,
    sigma: float = 1.0,
    bounds: tuple[Bound, ...] = (Bound("x", 1.0, "upper"),),
    seed: int = 0,
    **kwargs,
) -> RolloutResult:
    """Simulate Brownian paths and wrap them as a rollout (see :func:`rollout_from_paths`)."""
    rng = np.random.default_rng(seed)
    t, x = bm_paths(n, n_intervals * substeps, horizon, x0=x0, mu=mu, sigma=sigma, rng=rng)
    return rollout_from_paths(t, x, sigma=sigma, bounds=bounds, n_intervals=n_intervals, seed=seed, rng=rng, **kwargs)
