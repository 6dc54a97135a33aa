"""Out-of-support flag: how much simulated time lies where the fitted cohort had no data.

A posterior only speaks for the region its data covered; risk estimates for trajectories (or
treatments) far outside it are extrapolation. Offline safe RL guards against this with an
out-of-distribution check on state-action pairs (OGSRL, arXiv 2505.16242). The rollout records,
per interaction interval, the fraction of time outside the cohort's observed ranges
(``RolloutResult.out_of_support``); here it is weighted by interval length into each patient's
share of simulated time, averaged over patients, and flagged above a threshold. Without support
ranges (an older posterior file, model priors) the flag says "not checked" and why: an unknown
share is never reported as 0 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsim.policies.result import RolloutResult
from medsim.policies.risk import intervals
from medsim.policies.risk.estimate import Estimate

DEFAULT_THRESHOLD = 0.05


@dataclass(frozen=True)
class SupportFlag:
    """Share of simulated time outside the fitted cohort's support, or why it was not checked.

    Attributes
    ----------
    share_of_time : Estimate or None
        Mean over patients of the fraction of their simulated time outside the support; None
        when the support was not checked (never 0: unknown is not "inside").
    patients_affected : Estimate or None
        Share of patients with any time outside the support (Clopper–Pearson); None when not checked.
    threshold : float
    flagged : bool
        ``share_of_time.value > threshold`` (False when not checked).
    message : str
    checked : bool
        False when no cohort support was available to compare against.
    reason : str
        Why the support was not checked (empty when it was).
    """

    share_of_time: Estimate | None
    patients_affected: Estimate | None
    threshold: float
    flagged: bool
    message: str
    checked: bool = True
    reason: str = ""


NOT_CHECKED = (
    "no cohort support ranges were given to the rollout (a posterior file that records none, model priors, or "
    "patients from another source)"
)


def support_flag(
    result: RolloutResult,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    level: float,
    seed: int | None,
    unknown_reason: str | None = None,
) -> SupportFlag:
    """Out-of-support summary of ``result``.

    A rollout without support information (``result.out_of_support is None``) gives a flag that
    says so (``checked=False``, ``reason`` = ``unknown_reason`` or a generic one), never 0 %.
    """
    if result.out_of_support is None:
        why = unknown_reason or NOT_CHECKED
        return SupportFlag(None, None, float(threshold), False, f"not checked: {why}", checked=False, reason=why)
    mask = np.asarray(result.mask, bool)
    length = np.where(mask, np.asarray(result.t_end, float) - np.asarray(result.t_start, float), 0.0)
    # an undefined fraction (NaN from the simulator) counts as outside: unknown is never "inside"
    frac = np.clip(np.nan_to_num(np.asarray(result.out_of_support, float), nan=1.0), 0.0, 1.0)
    total = length.sum(axis=1)
    if result.failed_time is not None:  # a failed patient's time after its failure counts as outside
        after = np.where(result.failed, float(result.horizon) - np.asarray(result.failed_time, float), 0.0)
        after = np.clip(after, 0.0, None)
        total = total + after
        length = np.concatenate([length, after[:, None]], axis=1)
        frac = np.concatenate([frac, np.ones((frac.shape[0], 1))], axis=1)
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
