"""The ambulatory glucose profile (AGP): glucose percentiles over the time of day.

The AGP (Mazze RS et al. 1987, *Diabetes Care* 10:111; the standard CGM report of the consensus,
Battelino et al. 2019, Fig. 1) pools every reading of every day by its clock time and shows the
5th, 25th, 50th, 75th and 95th percentiles in each time-of-day bin. Here the readings of all
virtual patients are pooled, and the uncertainty of the median from the finite sample of
posterior draws (epistemic) and patients is shown as a cluster-bootstrap interval: posterior
draws are resampled with replacement, each carrying all its patients, and the median is
recomputed in every bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERCENTILES = (5, 25, 50, 75, 95)
#: Time-of-day bins per hour (15-minute bins, as AGP reports draw them).
BINS_PER_HOUR = 4
_BOOTSTRAP = 200


@dataclass(frozen=True)
class AmbulatoryProfile:
    """Glucose percentiles by time of day for one policy.

    Attributes
    ----------
    clock_h : tuple of float
        Centre of each time-of-day bin (h after midnight).
    percentiles : dict str -> tuple of float
        ``"p05"``, ``"p25"``, ``"p50"``, ``"p75"``, ``"p95"`` per bin (mg/dL; nan for bins
        without readings, e.g. when the horizon is shorter than a day).
    median_lower, median_upper : tuple of float
        Two-sided ``level`` interval of the median per bin (cluster bootstrap over posterior
        draws; nan when fewer than two draws).
    level : float
    n_patients, n_draws : int
    method : str
    """

    clock_h: tuple[float, ...]
    percentiles: dict[str, tuple[float, ...]]
    median_lower: tuple[float, ...]
    median_upper: tuple[float, ...]
    level: float
    n_patients: int
    n_draws: int
    method: str


def _weighted_medians(values: np.ndarray, draw: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Lower weighted median of sorted ``values`` (m,) under each bootstrap replicate.

    The weight of ``values[i]`` in replicate ``r`` is ``counts[r, draw[i]]`` (``counts`` (R, D)
    integer resampling counts of the D clusters, ``draw`` (m,) each value's cluster). The median
    is the first value whose cumulative weight reaches half the replicate's total weight
    (``values[0]`` for a replicate of total weight 0).

    Exact (integer arithmetic) and ``O(R (D m / B + B))`` for blocks of ``B ~ sqrt(D m)`` sorted values,
    instead of the ``O(R m)`` of a cumulative sum over all values: the cumulative weight of each
    replicate at the end of every block is ``counts @ (per-cluster counts of values up to the
    block)``; the block where it reaches half the total is then summed value by value.
    """
    m = values.size
    n_reps, n_clusters = counts.shape
    # Balances the two stages (a gathered weight costs a few multiply-adds of the product).
    width = max(16, int(np.ceil(np.sqrt(n_clusters * m) / 4)))
    n_blocks = -(-m // width)
    block = np.arange(m) // width
    per_block = np.bincount(draw * n_blocks + block, minlength=n_clusters * n_blocks).reshape(n_clusters, n_blocks)
    counts = counts.astype(np.int64)
    at_end = counts @ np.cumsum(per_block, axis=1)  # (R, n_blocks) weight up to each block's end
    total = at_end[:, -1:]
    # Integer weights: "cumulative weight < half the total" is "2 x cumulative weight < total", exactly.
    first = np.minimum((2 * at_end < total).sum(axis=1), n_blocks - 1)  # block holding the median
    before = np.where(first > 0, at_end[np.arange(n_reps), first - 1], 0)
    pos = first[:, None] * width + np.arange(width)[None, :]
    inside = pos < m
    flat = np.arange(n_reps)[:, None] * n_clusters + draw[np.minimum(pos, m - 1)]
    weight = np.where(inside, np.take(counts.ravel(), flat), 0)
    cum = before[:, None] + np.cumsum(weight, axis=1)
    below = ((2 * cum < total) & inside).sum(axis=1)
    return values[np.minimum(first * width + below, m - 1)]


def ambulatory_profile(
    trace: np.ndarray,
    step_h: float,
    draw: np.ndarray,
    *,
    clock_start_h: float = 0.0,
    start_h: float = 0.0,
    level: float = 0.95,
    seed: int = 0,
) -> AmbulatoryProfile | None:
    """AGP of ``trace`` ((N, T) mg/dL on the grid ``0, step_h, ...`` in hours); None without readings.

    ``start_h`` drops readings before the monitoring window; ``clock_start_h`` is the clock time
    at time 0; ``draw`` (N,) the posterior draw of each patient (the bootstrap's clusters).
    """
    g = np.asarray(trace, np.float64)
    n, t_count = g.shape
    t = np.arange(t_count) * step_h
    g = np.where((t >= start_h - 1e-9)[None, :], g, np.nan)
    if not np.isfinite(g).any():
        return None
    n_bins = 24 * BINS_PER_HOUR
    b = (np.floor(((clock_start_h + t) % 24.0) * BINS_PER_HOUR + 1e-9).astype(np.int64)) % n_bins
    draw = np.asarray(draw)
    labels = np.where(draw < 0, -1 - np.arange(n), draw)
    codes = np.unique(labels, return_inverse=True)[1].reshape(n)
    n_draws = int(codes.max()) + 1
    rng = np.random.default_rng([int(seed), 0xA6])
    counts = rng.multinomial(n_draws, np.full(n_draws, 1.0 / n_draws), size=_BOOTSTRAP) if n_draws >= 2 else None
    pct = np.full((len(PERCENTILES), n_bins), np.nan)
    lo = np.full(n_bins, np.nan)
    hi = np.full(n_bins, np.nan)
    a = (1.0 - level) / 2.0
    for k in range(n_bins):
        block = g[:, b == k]
        ok = np.isfinite(block)
        if not ok.any():
            continue
        vals = block[ok]
        pct[:, k] = np.percentile(vals, PERCENTILES)
        if counts is not None:
            rows = np.nonzero(ok)[0]
            # Any sort: the median is the smallest value whose weight up to it reaches half, so the
            # order of equal readings (whose draws differ) cannot change it; numpy's default sort
            # is ~3x faster here than a stable one.
            order = np.argsort(vals)
            med = _weighted_medians(vals[order], codes[rows[order]], counts)
            lo[k], hi[k] = np.quantile(med, [a, 1.0 - a])
    centres = (np.arange(n_bins) + 0.5) / BINS_PER_HOUR
    return AmbulatoryProfile(
        clock_h=tuple(float(c) for c in centres),
        percentiles={f"p{p:02d}": tuple(float(v) for v in pct[i]) for i, p in enumerate(PERCENTILES)},
        median_lower=tuple(float(v) for v in lo),
        median_upper=tuple(float(v) for v in hi),
        level=float(level),
        n_patients=int(n),
        n_draws=n_draws,
        method=f"pooled readings per {60 // BINS_PER_HOUR}-min time-of-day bin; median interval: cluster "
        f"bootstrap over posterior draws ({_BOOTSTRAP} resamples)",
    )
