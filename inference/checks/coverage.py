"""Statistics for calibration checks: exact binomial intervals and rank-uniformity tests."""

from __future__ import annotations

import numpy as np
from scipy import stats


def binomial_interval(hits: int, n: int, *, confidence: float = 0.99) -> dict[str, float]:
    """Observed coverage ``hits / n`` with its Clopper–Pearson (exact) interval.

    Returns
    -------
    dict
        ``{"hits", "n", "rate", "lower", "upper", "confidence"}``; a nominal coverage outside
        ``[lower, upper]`` is rejected at level ``1 - confidence`` (Clopper & Pearson 1934).
    """
    if n < 1 or not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n and n >= 1, got hits={hits}, n={n}")
    ci = stats.binomtest(hits, n).proportion_ci(confidence_level=confidence, method="exact")
    return {
        "hits": int(hits),
        "n": int(n),
        "rate": hits / n,
        "lower": float(ci.low),
        "upper": float(ci.high),
        "confidence": confidence,
    }


def rank_uniformity(ranks: np.ndarray, n_draws: int, *, n_bins: int = 10) -> dict[str, float]:
    """Chi-square test that SBC ranks are uniform on ``{0, ..., n_draws}``.

    The ``n_draws + 1`` possible ranks are grouped into ``n_bins`` bins of equal width (the bin
    count must divide ``n_draws + 1`` so that every bin has the same probability; Talts et al.
    2018, §4.1). With ``C`` ranks the expected count per bin is ``C / n_bins``; the chi-square
    approximation wants it to be at least about 5.

    Returns
    -------
    dict
        ``{"chi2", "dof", "p_value", "n", "counts"}``.
    """
    ranks = np.asarray(ranks, int)
    if (n_draws + 1) % n_bins:
        raise ValueError(f"n_bins={n_bins} must divide n_draws + 1 = {n_draws + 1}")
    if ranks.size == 0 or (ranks < 0).any() or (ranks > n_draws).any():
        raise ValueError(f"ranks must lie in 0..{n_draws}")
    counts = np.bincount(ranks // ((n_draws + 1) // n_bins), minlength=n_bins)
    result = stats.chisquare(counts)
    return {
        "chi2": float(result.statistic),
        "dof": n_bins - 1,
        "p_value": float(result.pvalue),
        "n": int(ranks.size),
        "counts": counts.tolist(),
    }
