"""Out-of-support flag: how much simulated time lies where the fitted cohort had no data.

A posterior only speaks for the region its data covered; risk estimates for trajectories (or
treatments) far outside it are extrapolation. Offline safe RL guards against this with an
out-of-distribution check on state-action pairs (OGSRL, arXiv 2505.16242). The rollout records,
per interaction interval, the fraction of time outside the cohort's observed ranges
(``RolloutResult.out_of_support``); here it is weighted by interval length into each patient's
share of simulated time, averaged over patients, and flagged above a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.result import RolloutResult
from policies.risk import intervals
from policies.risk.estimate import Estimate

DEFAULT_THRESHOLD = 0.05


@dataclass(frozen=True)
class SupportFlag:
    """Share of simulated time outside the fitted cohort's support.

    Attributes
    ----------
    share_of_time : Estimate
        Mean over patients of the fraction of their simulated time outside the support.
    patients_affected : Estimate
        Share of patients with any time outside the support (Clopper–Pearson).
    threshold : float
    flagged : bool
        ``share_of_time.value > threshold``.
    message : str
    """

    share_of_time: Estimate
    patients_affected: Estimate
    threshold: float
    flagged: bool
    message: str


def support_flag(
    result: RolloutResult, *, threshold: float = DEFAULT_THRESHOLD, level: float, seed: int | None
) -> SupportFlag | None:
    """Out-of-support summary of ``result`` (None when the rollout had no support information)."""
    if result.out_of_support is None:
        return None
    mask = np.asarray(result.mask, bool)
    length = np.where(mask, np.asarray(result.t_end, float) - np.asarray(result.t_start, float), 0.0)
    frac = np.clip(np.nan_to_num(np.asarray(result.out_of_support, float)), 0.0, 1.0)
    total = length.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, (frac * length).sum(axis=1) / total, 0.0)
    cl = np.asarray(result.draw, int)
    est = intervals.mean(share, cl, level=level, seed=seed, unit_interval=True)
    affected = intervals.proportion(share > 0, cl, level=level, seed=seed)
    flagged = bool(est.value > threshold)
    pct = f"{100 * est.value:.3g}%"
    message = (
        f"OUT OF SUPPORT: {pct} of simulated time lies outside the fitted cohort's data "
        f"(threshold {100 * threshold:g}%); risk there is extrapolated by the model"
        if flagged
        else f"{pct} of simulated time outside the fitted cohort's support (threshold {100 * threshold:g}%)"
    )
    return SupportFlag(est, affected, float(threshold), flagged, message)
