"""Scores of held-out glucose forecasts: interval coverage and width, RMSE, Brier, AUC, event counts.

Pure functions on arrays, used by ``benchmarks/external_t1d.py`` and tested by hand-computed
values in ``tests/benchmarks/test_t1d_metrics.py``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def interval_scores(draws: np.ndarray, truth: np.ndarray, level: float) -> dict[str, float]:
    """Coverage and mean width of central ``level`` intervals.

    Parameters
    ----------
    draws : (R, N)
        ``R`` predictive draws of each of ``N`` quantities.
    truth : (N,)
        What happened.
    level : float
        Central mass, e.g. 0.9 (quantiles ``(1 - level) / 2`` and ``(1 + level) / 2``, numpy's
        default linear interpolation).

    Returns
    -------
    dict
        ``coverage`` (share of ``truth`` inside ``[lower, upper]``), ``width`` (mean of
        ``upper - lower``), ``n``.
    """
    draws = np.asarray(draws, float)
    truth = np.asarray(truth, float)
    lower, upper = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    inside = (lower <= truth) & (truth <= upper)
    return {"coverage": float(inside.mean()), "width": float((upper - lower).mean()), "n": int(truth.size)}


#: The glucose ranges of the international consensus on CGM metrics (Battelino et al. 2019,
#: Diabetes Care 42:1593), mg/dL, as half-open ``[low, high)``: level 2 and level 1 hypoglycaemia,
#: target (70 and 180 included), level 1 hyperglycaemia (above 180 up to 250 included), level 2.
_ABOVE_180, _ABOVE_250 = float(np.nextafter(180.0, np.inf)), float(np.nextafter(250.0, np.inf))
CONSENSUS_RANGES = (
    ("<54", 0.0, 54.0),
    ("54-69", 54.0, 70.0),
    ("70-180", 70.0, _ABOVE_180),
    ("181-250", _ABOVE_180, _ABOVE_250),
    (">250", _ABOVE_250, np.inf),
)


def coverage_by_range(
    draws: np.ndarray, truth: np.ndarray, level: float, ranges=CONSENSUS_RANGES
) -> list[dict[str, float | int | str | None]]:
    """Coverage of central ``level`` intervals split by the range the true value fell in.

    Where a forecast fails matters as much as how often: an interval that misses the deep lows
    but covers the target range can show a fair overall coverage. Each range reports ``n`` (true
    values in ``[low, high)``), ``coverage``, ``below`` and ``above`` (shares of those values under
    and over the interval). A range with no true value has ``None`` for all three (unknown, not 0).
    """
    draws = np.asarray(draws, float)
    truth = np.asarray(truth, float)
    lower, upper = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    out = []
    for name, low, high in ranges:
        here = (truth >= low) & (truth < high)
        n = int(here.sum())
        shares = {"coverage": None, "below": None, "above": None}
        if n:
            below, above = truth[here] < lower[here], truth[here] > upper[here]
            shares = {
                "coverage": float(1.0 - (below | above).mean()),
                "below": float(below.mean()),
                "above": float(above.mean()),
            }
        out.append({"range": name, "n": n, **shares})
    return out


def rmse(forecast: np.ndarray, truth: np.ndarray) -> float:
    """Root mean squared error."""
    return float(np.sqrt(np.mean((np.asarray(forecast, float) - np.asarray(truth, float)) ** 2)))


def brier(p: np.ndarray, event: np.ndarray) -> float:
    """Mean squared difference between forecast probabilities and 0/1 outcomes."""
    return float(np.mean((np.asarray(p, float) - np.asarray(event, float)) ** 2))


def brier_constant(event: np.ndarray) -> float:
    """Brier score of the constant forecast at the observed event rate ``r``: ``r (1 - r)``.

    The best any forecast that gives every subject the same probability can do on these
    outcomes (the climatological reference of the Brier skill score, Wilks 2011 §8.4.2).
    """
    rate = float(np.mean(np.asarray(event, float)))
    return rate * (1.0 - rate)


def auc(p: np.ndarray, event: np.ndarray) -> float | None:
    """Area under the ROC curve: P(p of a random event > p of a random non-event), ties count 1/2.

    None when all outcomes are equal (the AUC is undefined).
    """
    p = np.asarray(p, float)
    event = np.asarray(event, bool)
    pos, neg = p[event], p[~event]
    if pos.size == 0 or neg.size == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def count_check(p: np.ndarray, event: np.ndarray, confidence: float = 0.95) -> dict[str, float | bool]:
    """Summed forecast probability against the observed count of events.

    The range is the central ``confidence`` range of a Binomial(n, k / n) count, ``k`` the
    observed count: the counts compatible with what was observed. The forecast passes when its
    expected count ``sum(p)`` lies inside.

    Returns
    -------
    dict
        ``sum_p``, ``observed``, ``n``, ``low``, ``high``, ``inside``.
    """
    p = np.asarray(p, float)
    event = np.asarray(event, bool)
    n, k = int(event.size), int(event.sum())
    low, high = stats.binom.ppf([(1 - confidence) / 2, (1 + confidence) / 2], n, k / n) if n else (0.0, 0.0)
    total = float(p.sum())
    return {
        "sum_p": total,
        "observed": k,
        "n": n,
        "low": float(low),
        "high": float(high),
        "inside": bool(low <= total <= high),
    }


def event_probability(paths: np.ndarray, threshold: float) -> np.ndarray:
    """P(minimum of the path < threshold) per subject from ``(R, S, T)`` simulated paths."""
    return (np.asarray(paths, float).min(axis=-1) < threshold).mean(axis=0)
