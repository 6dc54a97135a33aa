"""P(first violation <= t) over the horizon, with pointwise intervals.

Two curves per bound and for the joint event, on a common time grid:

* bridge: for patient n, ``F_n(t) = 1 - exp(sum of log_survival over the intervals that ended by
  t)``, raised to 1 once a grid point has been outside. Crossing probabilities are only known
  per interaction interval, so between interval ends the curve holds its last value: it is exact
  at each patient's interval ends and lags by at most one interval in between. Averaged over
  patients with a cluster-robust t interval (see :mod:`medsim.policies.risk.intervals`).
* grid: the share of patients whose first grid point outside came by t (Wilson bands).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsim.policies.result import RolloutResult
from medsim.policies.risk import intervals
from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.events import bound_indices, tightest_groups
from medsim.policies.spec import SafetySpec

_BLOCK = 8  # time points per pass over the patients


@dataclass(frozen=True)
class RiskCurve:
    """Cumulative probability of a first violation by each time of ``time``.

    Attributes
    ----------
    bound : str
        Bound name, or ``"any"``.
    time : tuple of float
        Time grid (model time unit), from 0 to the horizon.
    bridge : tuple of Estimate
        Bridge-based estimate at each time.
    grid : tuple of Estimate
        0/1 grid estimate at each time (Wilson).
    """

    bound: str
    time: tuple[float, ...]
    bridge: tuple[Estimate, ...]
    grid: tuple[Estimate, ...]


def first_grid_time(result: RolloutResult, spec: SafetySpec) -> np.ndarray:
    """(N, J) first time a grid point was outside each spec bound (``+inf`` if never).

    A patient who starts outside violates at its first interaction time; a patient that could not
    be simulated violates at the time it was frozen (:mod:`medsim.policies.risk.failed`).
    """
    idx = bound_indices(result, spec)
    mask = np.asarray(result.mask, bool)
    first = np.where(mask[:, :, None], np.asarray(result.first_outside, float)[:, :, idx], np.inf)
    out = np.nan_to_num(first, nan=np.inf).min(axis=1)
    t0 = np.asarray(result.t_start, float)[:, 0]
    for j, b in enumerate(spec.bounds):
        with np.errstate(invalid="ignore"):
            start = np.asarray(b.outside(np.asarray(result.true_start[b.observable], float)[:, 0])) & mask[:, 0]
        out[:, j] = np.where(start, t0, out[:, j])
    if result.failed_time is not None:
        out = np.minimum(out, np.asarray(result.failed_time, float)[:, None])
    return out


def censoring_time(result: RolloutResult) -> np.ndarray:
    """(N,) end of each patient's simulated time (last valid interval end)."""
    ends = np.where(np.asarray(result.mask, bool), np.asarray(result.t_end, float), -np.inf)
    return np.max(ends, axis=1, initial=0.0)


def cumulative_bridge(result: RolloutResult, spec: SafetySpec, time: np.ndarray) -> np.ndarray:
    """(N, G, J) bridge probability of a violation of each bound by each time of ``time`` (G,)."""
    idx = bound_indices(result, spec)
    mask = np.asarray(result.mask, bool)
    n, k = mask.shape
    log_surv = np.where(mask[:, :, None], np.asarray(result.log_survival, float)[:, :, idx], 0.0)
    log_surv = np.where(np.isnan(log_surv), -np.inf, log_surv)  # undefined bridge: a crossing, as in events
    cum = np.concatenate([np.zeros((n, 1, idx.size)), np.cumsum(log_surv, axis=1)], axis=1)
    # Count, per patient, the intervals that ended by each grid time: one searchsorted over all
    # patients at once, by shifting each patient's (sorted) interval ends into its own band.
    ends = np.where(mask, np.asarray(result.t_end, float), np.nan)
    top = float(np.nanmax(np.concatenate([ends.ravel(), time]))) + 1.0
    span = 3.0 * top
    offset = np.arange(n)[:, None] * span
    shifted = np.where(np.isfinite(ends), ends, 2.0 * top) + offset
    order = np.sort(shifted, axis=1).ravel()
    queries = (offset + time[None, :] * (1.0 + 1e-12) + 1e-12).ravel()
    count = (np.searchsorted(order, queries, side="right") - np.repeat(np.arange(n) * k, time.size)).reshape(n, -1)
    count = np.clip(count, 0, k)
    taken = np.take_along_axis(cum, count[:, :, None], axis=1)
    return -np.expm1(taken)


def risk_curves(
    result: RolloutResult, spec: SafetySpec, *, n_points: int = 49, level: float, seed: int | None
) -> tuple[RiskCurve, tuple[RiskCurve, ...]]:
    """Joint and per-bound cumulative violation curves on ``n_points`` times in ``[0, horizon]``.

    Time points are processed in blocks so that memory stays at a few (N, block) arrays however
    many patients there are.
    """
    time = np.linspace(0.0, float(result.horizon), n_points)
    first = first_grid_time(result, spec)
    deciding = tightest_groups(spec)
    cl = np.asarray(result.draw, int)
    names = ["any", *(b.name for b in spec.bounds)]
    parts: dict[str, list[tuple[np.ndarray, ...]]] = {name: [] for name in names}
    for start in range(0, n_points, _BLOCK):
        t = time[start : start + _BLOCK]
        hit = first[:, None, :] <= t[None, :, None] * (1.0 + 1e-12)
        bridge = np.maximum(cumulative_bridge(result, spec, t), hit)
        joint = np.maximum(np.minimum(1.0, bridge[:, :, deciding].sum(axis=2)), hit.any(axis=2))
        series = [(joint, hit.any(axis=2))] + [(bridge[:, :, j], hit[:, :, j]) for j in range(len(spec.bounds))]
        for name, (p, h) in zip(names, series, strict=True):
            se, lo, hi = intervals.mean_bounds(p, cl, level=level, unit_interval=True)
            gse, glo, ghi = intervals.proportion_bounds(h, cl, level=level, method="wilson")
            parts[name].append((se.mean, lo, hi, se.honest, gse.mean, glo, ghi, gse.honest))
    n = int(first.shape[0])
    codes = intervals.cluster_codes(cl, n)
    method = "clt-cluster" if 2 <= int(codes.max()) + 1 < n else "clt"

    def curve(name: str) -> RiskCurve:
        m, lo, hi, se, gm, glo, ghi, gse = (np.concatenate(a) for a in zip(*parts[name], strict=True))
        return RiskCurve(
            bound=name,
            time=tuple(float(x) for x in time),
            bridge=tuple(Estimate(m[g], lo[g], hi[g], n, method, seed, level, se[g]) for g in range(time.size)),
            grid=tuple(Estimate(gm[g], glo[g], ghi[g], n, "wilson", seed, level, gse[g]) for g in range(time.size)),
        )

    return curve("any"), tuple(curve(b.name) for b in spec.bounds)
