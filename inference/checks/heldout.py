"""Held-out measurements: fit without each subject's later measurements, then check they are predicted.

:func:`split_last` removes the last ``n_last`` measurements of every subject, :func:`split_after`
every measurement after a time (or after a fraction of each subject's observation span); after
fitting the rest, :func:`heldout_coverage` simulates the fitted subjects forward
(:func:`~medsim.inference.checks.predictive.posterior_predictive`, individual mode, residual error
included) and counts how often a held-out measurement falls inside its central posterior
predictive interval. For a calibrated model the count is binomial with the nominal rate, up to
the dependence between subjects through the shared population parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from medsim.inference.checks.coverage import binomial_interval
from medsim.inference.checks.predictive import PredictiveError, padded_of, posterior_predictive


@dataclass(frozen=True)
class HeldoutCoverage:
    """Which held-out measurements fell inside their predictive interval.

    Attributes
    ----------
    inside : (S, N) bool
        True where a held-out measurement is inside its central ``level`` interval.
    heldout : (S, N) bool
        The held-out measurements (padded layout of the full cohort).
    lower, upper : (S, N) float
        Interval bounds (observable unit; meaningful where ``heldout``).
    level : float
    interval : dict
        ``binomial_interval(hits, n)``: observed rate and its exact 99 % interval.
    """

    inside: np.ndarray
    heldout: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float
    interval: dict


def heldout_mask(cohort: Any, n_last: int) -> np.ndarray:
    """(S, N) mask of each subject's last ``n_last`` measurements (padded layout).

    Raises
    ------
    PredictiveError
        If a subject would keep no measurement to fit.
    """
    padded = padded_of(cohort)
    mask = np.asarray(padded.obs_mask, bool)
    counts = mask.sum(axis=1)
    short = [str(padded.ids[s]) for s in np.nonzero(counts <= n_last)[0]]
    if n_last < 1 or short:
        raise PredictiveError(f"holding out the last {n_last} measurements leaves nothing to fit for subjects {short}")
    position = np.cumsum(mask, axis=1)  # 1-based rank of each real measurement within its subject
    return mask & (position > (counts - n_last)[:, None])


def window_mask(cohort: Any, *, after: float | None = None, fraction: float | None = None) -> np.ndarray:
    """(S, N) mask of the measurements in each subject's held-out time window (padded layout).

    Parameters
    ----------
    cohort : Cohort or PaddedCohort
    after : float, optional
        Hold out measurements at times strictly after ``after`` (model time unit).
    fraction : float in (0, 1), optional
        Hold out measurements after ``t_first + (1 - fraction) (t_last - t_first)`` of each
        subject's own measurement times: the last ``fraction`` of its observation span.

    Raises
    ------
    PredictiveError
        Not exactly one of ``after`` / ``fraction``, a fraction outside (0, 1), a window that
        leaves a subject nothing to fit, or one that holds out nothing at all.
    """
    if (after is None) == (fraction is None):
        raise PredictiveError("give exactly one of after= (a time) or fraction= (a share of each subject's span)")
    padded = padded_of(cohort)
    mask = np.asarray(padded.obs_mask, bool)
    time = np.asarray(padded.obs_time, float)
    if fraction is not None:
        if not 0.0 < fraction < 1.0:
            raise PredictiveError(f"held-out fraction must be in (0, 1), got {fraction}")
        first = np.where(mask, time, np.inf).min(axis=1)
        last = np.where(mask, time, -np.inf).max(axis=1)
        cut = first + (1.0 - fraction) * (last - first)
    else:
        cut = np.full(mask.shape[0], float(after))
    held = mask & (time > cut[:, None])
    short = [str(padded.ids[s]) for s in np.nonzero((mask & ~held).sum(axis=1) == 0)[0]]
    if short:
        raise PredictiveError(f"the held-out window leaves nothing to fit for subjects {short[:10]}")
    if not held.any():
        raise PredictiveError("the held-out window contains no measurement of any subject")
    return held


def split_after(cohort: Any, *, after: float | None = None, fraction: float | None = None) -> tuple[Any, np.ndarray]:
    """``cohort`` without its held-out time window (:func:`window_mask`), and that window's mask.

    Inputs end where each subject's window starts (:func:`without`); predictions of the window
    use the full cohort's recorded inputs.
    """
    held = window_mask(cohort, after=after, fraction=fraction)
    what = f"after t = {after:g}" if after is not None else f"the last {fraction:.0%} of each subject's span"
    return without(cohort, held, f"without measurements {what}"), held


def split_last(cohort: Any, n_last: int) -> Any:
    """``cohort`` without each subject's last ``n_last`` measurements (inputs end where they start).

    Parameters
    ----------
    cohort : medsim.data.Cohort
    n_last : int

    Returns
    -------
    medsim.data.Cohort
    """
    return without(cohort, heldout_mask(cohort, n_last), f"without the last {n_last} measurements per subject")


def without(cohort: Any, held: np.ndarray, description: str) -> Any:
    """``cohort`` without the measurements ``held`` (S, N) marks, and without the inputs from each
    subject's first held-out measurement on; covariates kept.

    The fitted record then ends where the subject's held-out window begins, so the filtered state
    stored with the fit is where a forecast of the window starts (as a digital twin forecasts from
    its last measurement). Infusions running at that time are cut there (amount = rate x time
    delivered); boluses at or after it belong to the window. A subject with nothing held out keeps
    every input.
    """
    from medsim.data import Cohort

    padded = padded_of(cohort)
    held = np.asarray(held, bool)
    keep = np.asarray(padded.obs_mask, bool) & ~held
    cut = np.where(held.any(axis=1), np.where(held, np.asarray(padded.obs_time, float), np.inf).min(axis=1), np.inf)
    time = np.asarray(padded.dose_time, float)
    rate = np.asarray(padded.dose_rate, float)
    dose = np.asarray(padded.dose_mask, bool) & (time < cut[:, None])
    amount = np.asarray(padded.dose_amount, float)
    with np.errstate(invalid="ignore"):  # padding slots (time inf) of a subject with no cut: inf - inf, not kept
        amount = np.where(rate > 0, np.minimum(amount, rate * (cut[:, None] - time)), amount)

    def rows(values: Any, mask: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(v)[m] for v, m in zip(values, mask, strict=True)]

    return Cohort.from_arrays(
        padded.ids,
        rows(padded.obs_time, keep),
        rows(padded.obs_value, keep),
        rows(padded.obs_cmt, keep),
        dose_time=rows(time, dose),
        dose_amount=rows(amount, dose),
        dose_cmt=rows(padded.dose_cmt, dose),
        dose_rate=rows(rate, dose),
        covariates=dict(padded.covariates),
        obs_cens=None if padded.obs_cens is None else rows(padded.obs_cens, keep),
        units=dict(getattr(cohort, "units", {}) or {}),
        name=f"{getattr(cohort, 'name', '')} {description}".strip(),
    )


def heldout_coverage(
    posterior: Any,
    cohort: Any,
    n_last: int,
    *,
    key: jax.Array,
    level: float = 0.9,
    n_draws: int | None = 200,
    dt: float | None = None,
    confidence: float = 0.99,
) -> HeldoutCoverage:
    """Coverage of held-out measurements by central posterior predictive intervals.

    Parameters
    ----------
    posterior : Posterior or PosteriorDraws
        Fitted to ``split_last(cohort, n_last)``.
    cohort : Cohort
        The full cohort (same subjects, same order).
    n_last : int
        Measurements held out per subject.
    key : jax PRNG key
    level : float
        Central interval mass.
    n_draws : int or None
        Posterior draws simulated.
    dt : float, optional
        Simulator step.
    confidence : float
        Confidence of the reported binomial interval.

    Returns
    -------
    HeldoutCoverage
    """
    if not 0 < level < 1:
        raise PredictiveError(f"level must be in (0, 1), got {level}")
    held = heldout_mask(cohort, n_last)
    sample = posterior_predictive(posterior, cohort, key=key, n_draws=n_draws, mode="individual", dt=dt)
    lower, upper = np.quantile(sample.replicate, [(1 - level) / 2, (1 + level) / 2], axis=0)
    y = np.asarray(padded_of(cohort).obs_value, float)
    inside = held & (lower <= y) & (y <= upper)
    hits, n = int(inside.sum()), int(held.sum())
    return HeldoutCoverage(
        inside=inside,
        heldout=held,
        lower=lower,
        upper=upper,
        level=level,
        interval=binomial_interval(hits, n, confidence=confidence),
    )
