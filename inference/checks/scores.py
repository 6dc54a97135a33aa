"""Scores of probabilistic forecasts against what was then measured: calibration and sharpness.

Every function takes predictive draws ``(R, ...)`` (draw axis first) or predicted probabilities
and the observations, and returns plain numbers or arrays; nothing here knows about models.

* :func:`pit` — probability integral transform ``F(y)`` from draws (uniform when calibrated).
* :func:`central_intervals` / :func:`coverage` — central ``level`` intervals and whether they hold
  the observation.
* :func:`interval_score` — Gneiting & Raftery (2007, *JASA* 102:359, eq. 43): width plus
  ``2 / alpha`` times the distance by which the observation misses the interval; a proper
  score for the central ``1 - alpha`` interval, smaller is better.
* :func:`crps` — continuous ranked probability score of the empirical predictive distribution,
  ``E|X - y| - E|X - X'| / 2`` (Gneiting & Raftery 2007, eq. 20), in the observable's unit.
* :func:`brier` / :func:`auc` / :func:`reliability` — for event forecasts: mean squared error
  of probabilities (Brier 1950), the area under the ROC curve as the Mann–Whitney probability
  that an event got a higher forecast than a non-event (ties count one half), and the binned
  reliability curve (mean forecast against observed frequency per bin).
"""

from __future__ import annotations

import numpy as np

from medsim.models.gate import ReliabilityBin


def pit(draws: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """PIT values ``P(X < y) + P(X = y) / 2`` of the empirical predictive distribution.

    Parameters
    ----------
    draws : (R, ...) array
        Predictive draws, draw axis first.
    observed : (...) array

    Returns
    -------
    (...) array in [0, 1]
        Ties count one half (mid-rank), so a point mass at the observation gives 0.5, not 0 or 1.
    """
    draws, y = np.asarray(draws, float), np.asarray(observed, float)
    below = (draws < y).mean(axis=0)
    equal = (draws == y).mean(axis=0)
    return below + 0.5 * equal


def central_intervals(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper end of the central ``level`` interval of the draws (empirical quantiles)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    lo, hi = np.quantile(np.asarray(draws, float), [(1 - level) / 2, (1 + level) / 2], axis=0)
    return lo, hi


def coverage(draws: np.ndarray, observed: np.ndarray, level: float) -> np.ndarray:
    """(...) bool: the observation lies inside its central ``level`` predictive interval."""
    lo, hi = central_intervals(draws, level)
    y = np.asarray(observed, float)
    return (lo <= y) & (y <= hi)


def interval_score(lower: np.ndarray, upper: np.ndarray, observed: np.ndarray, level: float) -> np.ndarray:
    """Interval score of central ``level`` intervals (Gneiting & Raftery 2007, eq. 43).

    ``(u - l) + (2 / alpha) (l - y) 1{y < l} + (2 / alpha) (y - u) 1{y > u}`` with
    ``alpha = 1 - level``, in the observable's unit; smaller is better.
    """
    alpha = 1.0 - level
    lo, hi, y = np.asarray(lower, float), np.asarray(upper, float), np.asarray(observed, float)
    return (hi - lo) + (2.0 / alpha) * np.maximum(lo - y, 0.0) + (2.0 / alpha) * np.maximum(y - hi, 0.0)


def crps(draws: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """CRPS of the empirical distribution of ``R`` draws at each observation.

    ``E|X - y| - E|X - X'| / 2`` with both expectations over the ``R`` draws (``X, X'``
    independent, the ``R^2`` pairs including ``X = X'``); the second term is computed from the
    sorted draws, ``E|X - X'| = (2 / R^2) sum_i (2 i - R - 1) x_(i)``, in ``O(R log R)``.

    Parameters
    ----------
    draws : (R, ...) array
    observed : (...) array

    Returns
    -------
    (...) array, observable unit; 0 for a point forecast that hits.
    """
    x = np.sort(np.asarray(draws, float), axis=0)
    y = np.asarray(observed, float)
    r = x.shape[0]
    first = np.abs(x - y).mean(axis=0)
    weights = (2.0 * np.arange(1, r + 1) - r - 1).reshape((r,) + (1,) * (x.ndim - 1))
    spread = 2.0 * (weights * x).sum(axis=0) / r**2
    return first - 0.5 * spread


def brier(probability: np.ndarray, event: np.ndarray) -> float:
    """Mean squared difference between forecast probabilities and 0/1 outcomes (Brier 1950)."""
    p, o = np.asarray(probability, float), np.asarray(event, float)
    if p.shape != o.shape or p.size == 0:
        raise ValueError(f"brier: need equal, non-empty shapes; got {p.shape} and {o.shape}")
    return float(np.mean((p - o) ** 2))


def auc(probability: np.ndarray, event: np.ndarray) -> float | None:
    """Area under the ROC curve: P(forecast of an event > forecast of a non-event), ties 1/2.

    Returns None when only one class occurs (the AUC is undefined).
    """
    p, o = np.asarray(probability, float), np.asarray(event, bool)
    pos, neg = p[o], p[~o]
    if pos.size == 0 or neg.size == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def reliability(probability: np.ndarray, event: np.ndarray, *, n_bins: int = 5) -> tuple[ReliabilityBin, ...]:
    """Binned reliability curve: equal-width forecast bins on [0, 1]."""
    p, o = np.asarray(probability, float), np.asarray(event, float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        at = index == b
        n = int(at.sum())
        out.append(
            ReliabilityBin(
                lower=float(edges[b]),
                upper=float(edges[b + 1]),
                mean_forecast=float(p[at].mean()) if n else None,
                observed_rate=float(o[at].mean()) if n else None,
                n=n,
            )
        )
    return tuple(out)
