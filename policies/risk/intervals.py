"""Confidence intervals for proportions and means of clustered virtual patients.

Virtual patients that share a posterior draw share their parameters' epistemic part, so they are
not independent: the standard error of a mean over patients must be computed with the draws as
clusters (the cluster-robust "sandwich" variance of a mean; Cameron & Miller 2015, J. Human
Resources 50:317, eq. 11, with the G/(G-1) small-sample factor). Binomial intervals use the
*effective* sample size n / deff (Kish's design effect deff = (SE_cluster / SE_naive)^2; Korn &
Graubard 1998, Survey Methodology 24:193), which reduces to the exact Clopper–Pearson interval
when patients are independent.

All functions take an explicit ``axis=0`` patient axis; extra axes (bounds, time points) are
carried along.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.quantiles import beta_ppf, binom_ppf, norm_ppf, t_ppf


@dataclass(frozen=True)
class StandardErrors:
    """Standard errors of a mean over patients (arrays over the non-patient axes).

    Attributes
    ----------
    mean : array
    naive : array
        ``sd / sqrt(n)``: patients treated as independent.
    cluster : array
        Cluster-robust SE with posterior draws as clusters (nan with fewer than 2 clusters).
    honest : array
        ``max(naive, cluster)``: the one intervals use. Taking the larger guards against an
        unlucky small cluster SE when the clusters are few.
    n : int
        Number of patients.
    n_clusters : int
    design_effect : array
        ``(honest / naive)^2`` (>= 1; 1 where the naive SE is 0).
    """

    mean: np.ndarray
    naive: np.ndarray
    cluster: np.ndarray
    honest: np.ndarray
    n: int
    n_clusters: int
    design_effect: np.ndarray

    @property
    def df(self) -> int:
        """Degrees of freedom of the t reference distribution (clusters - 1, or n - 1)."""
        return max(1, (self.n_clusters if self.n_clusters >= 2 else self.n) - 1)

    @property
    def n_effective(self) -> np.ndarray:
        return self.n / self.design_effect


def cluster_codes(cluster: np.ndarray | None, n: int) -> np.ndarray:
    """Integer cluster codes 0..G-1; negative labels (no draw) become singleton clusters."""
    if cluster is None:
        return np.arange(n)
    cluster = np.asarray(cluster)
    if cluster.shape != (n,):
        raise ValueError(f"cluster labels have shape {cluster.shape}, expected ({n},)")
    labels = np.where(cluster < 0, -1 - np.arange(n), cluster) if np.issubdtype(cluster.dtype, np.integer) else cluster
    return np.unique(labels, return_inverse=True)[1].reshape(n)


def standard_errors(x: np.ndarray, cluster: np.ndarray | None = None, *, axis: int = 0) -> StandardErrors:
    """Naive and cluster-robust standard errors of the mean of ``x`` along ``axis``.

    Parameters
    ----------
    x : (N, ...) float
        One value per patient (``axis`` is moved to the front).
    cluster : (N,) int or None
        Posterior-draw index per patient (negative = no draw; singleton cluster).
    """
    x = np.moveaxis(np.asarray(x, dtype=float), axis, 0)
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot estimate from zero patients")
    mean = x.mean(axis=0)
    naive = x.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(mean.shape, np.nan)
    codes = cluster_codes(cluster, n)
    g = int(codes.max()) + 1
    if g >= 2:
        flat = (x - mean).reshape(n, -1)
        cols = [np.bincount(codes, weights=flat[:, c], minlength=g) for c in range(flat.shape[1])]
        sums = np.stack(cols, axis=1).reshape(g, *x.shape[1:])
        clustered = np.sqrt(g / (g - 1) * (sums**2).sum(axis=0)) / n
    else:
        clustered = np.full(mean.shape, np.nan)
    honest = np.fmax(naive, clustered)
    with np.errstate(divide="ignore", invalid="ignore"):
        deff = np.where(naive > 0, (honest / naive) ** 2, 1.0)
    deff = np.maximum(np.nan_to_num(deff, nan=1.0), 1.0)
    return StandardErrors(mean, naive, clustered, honest, n, g, deff)


def clopper_pearson(successes, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper–Pearson 1934) two-sided interval; fractional counts allowed (effective n)."""
    x = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    a = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(x > 0, beta_ppf(a, np.maximum(x, 1e-300), n - x + 1.0), 0.0)
        hi = np.where(x < n, beta_ppf(1.0 - a, x + 1.0, np.maximum(n - x, 1e-300)), 1.0)
    return np.asarray(lo, float), np.asarray(hi, float)


def wilson(successes, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson (1927) score interval."""
    x = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    z = norm_ppf(0.5 + level / 2.0)
    p = x / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def proportion_bounds(
    x: np.ndarray, cluster: np.ndarray | None, *, level: float, method: str = "clopper-pearson", axis: int = 0
) -> tuple[StandardErrors, np.ndarray, np.ndarray]:
    """Interval for the share of patients with ``x`` true, at the design-effect sample size.

    Returns the standard errors and the lower/upper arrays over the non-patient axes.
    """
    se = standard_errors(np.asarray(x, dtype=float), cluster, axis=axis)
    n_eff = se.n_effective
    k_eff = se.mean * n_eff
    fn = {"clopper-pearson": clopper_pearson, "wilson": wilson}[method]
    lo, hi = fn(k_eff, n_eff, level)
    return se, lo, hi


def proportion(
    x: np.ndarray, cluster: np.ndarray | None, *, level: float, seed: int | None, method: str = "clopper-pearson"
) -> Estimate:
    """Share of patients with a 0/1 outcome, as an :class:`Estimate` (``x``: (N,) bool)."""
    se, lo, hi = proportion_bounds(x, cluster, level=level, method=method)
    return Estimate(float(se.mean), float(lo), float(hi), se.n, method, seed, level, float(se.honest))


def mean_bounds(
    x: np.ndarray, cluster: np.ndarray | None, *, level: float, unit_interval: bool = False, axis: int = 0
) -> tuple[StandardErrors, np.ndarray, np.ndarray]:
    """CLT interval for a mean over patients from the honest (cluster-robust) SE, t reference.

    With ``unit_interval`` (values in [0, 1], e.g. bridge crossing probabilities) the interval
    never claims more than the zero-event Clopper–Pearson bound at the effective sample size
    allows: ``upper >= 1 - (alpha/2)^(1/n_eff)``. A subpopulation of that share whose members
    all violate would be missed by ``n_eff`` independent patients with probability alpha/2, and
    no estimator can rule it out; the CLT alone would report a zero-width interval at zero.
    """
    se = standard_errors(x, cluster, axis=axis)
    t = t_ppf(0.5 + level / 2.0, se.df)
    half = t * np.nan_to_num(se.honest, nan=np.inf)
    lo, hi = se.mean - half, se.mean + half
    if unit_interval:
        a = (1.0 - level) / 2.0
        floor = 1.0 - a ** (1.0 / se.n_effective)
        lo = np.clip(np.minimum(lo, 1.0 - floor), 0.0, 1.0)
        hi = np.clip(np.maximum(hi, floor), 0.0, 1.0)
    return se, lo, hi


def mean(
    x: np.ndarray,
    cluster: np.ndarray | None,
    *,
    level: float,
    seed: int | None,
    unit_interval: bool = False,
    nonnegative: bool = False,
) -> Estimate:
    """Mean over patients with its CLT interval (``x``: (N,) float; see :func:`mean_bounds`).

    ``nonnegative`` clips the lower end at 0 for quantities that cannot be negative (durations,
    depths): the symmetric CLT interval would otherwise reach below 0 when most values are 0.

    Without spread to estimate a standard error from (one patient, or all values equal) the
    estimate carries no interval and says why, unless ``unit_interval`` gives an honest one
    (the zero-event bound, or [0, 1] for one patient); a zero-width interval is never returned.
    """
    x = np.asarray(x, dtype=float)
    se, lo, hi = mean_bounds(x, cluster, level=level, unit_interval=unit_interval)
    if nonnegative:
        lo = np.maximum(lo, 0.0)
    method = "clt-cluster" if se.n_clusters >= 2 and se.n_clusters < se.n else "clt"
    if not float(hi) - float(lo) > 0 or not np.isfinite(float(hi) - float(lo)):
        why = (
            "one patient: no spread to estimate a standard error from"
            if se.n < 2
            else f"all {se.n} values equal {float(se.mean):g}: no spread to estimate a standard error from"
        )
        return Estimate.without_interval(float(se.mean), se.n, method, why, seed, level, float(se.honest))
    return Estimate(float(se.mean), float(lo), float(hi), se.n, method, seed, level, float(se.honest))


def quantile_ranks(n: int, q: float, level: float) -> tuple[int, int]:
    """1-based order-statistic ranks ``(l, u)`` with ``P(X_(l) <= xi_q <= X_(u)) >= level``.

    ``#{X_i <= xi_q} ~ Binomial(n, q)`` for continuous X, so the ranks are binomial quantiles
    (distribution-free; e.g. Hahn & Meeker, *Statistical Intervals*, 2017, §5.2). ``l = 0`` or
    ``u = n + 1`` mean the interval is unbounded on that side.
    """
    a = (1.0 - level) / 2.0
    lo = int(binom_ppf(a, n, q))
    hi = int(binom_ppf(1.0 - a, n, q)) + 1
    return lo, hi


def quantile(x: np.ndarray, q: float, *, level: float, seed: int | None, method: str = "order-statistic") -> Estimate:
    """Sample ``q``-quantile of ``x`` (N,) with its distribution-free order-statistic interval.

    Too few values to bound the quantile on either side at ``level`` give no interval (saying
    so) rather than ``[-inf, inf]``. Ties may make the interval zero-width; for a variable with
    atoms (a grid time, a movement of exactly 0) that interval still has its coverage.
    """
    xs = np.sort(np.asarray(x, dtype=float).ravel())
    n = xs.size
    if n == 0:
        return Estimate.without_interval(np.nan, 0, method, "no values", seed, level)
    lo_rank, hi_rank = quantile_ranks(n, q, level)
    if lo_rank < 1 and hi_rank > n:
        value = float(np.quantile(xs, q, method="inverted_cdf"))
        why = f"only {n} value{'s' if n != 1 else ''}: too few to bound the {q:g}-quantile at level {level:g}"
        return Estimate.without_interval(value, n, method, why, seed, level)
    lo = xs[lo_rank - 1] if lo_rank >= 1 else -np.inf
    hi = xs[hi_rank - 1] if hi_rank <= n else np.inf
    value = float(np.quantile(xs, q, method="inverted_cdf"))
    return Estimate(value, min(lo, value), max(hi, value), n, method, seed, level)
