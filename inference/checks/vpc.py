"""Visual predictive check (VPC): observed percentiles against the model's prediction bands.

The study is re-run ``R`` times on new subjects (the fitted subjects' doses, covariates and
measurement times; random effects drawn afresh from each posterior draw's ``omega``; residual
error added), see :func:`~medsim.inference.checks.predictive.posterior_predictive` in ``population``
mode. Measurements are binned by time; in each bin the 10th, 50th and 90th percentiles of the
observed values are compared with the distribution of the same percentiles over the simulated
replicates, summarised by its median and a central band (Holford 2005, "The visual predictive
check", PAGE 14, abstr. 738; Bergstrand et al. 2011, *AAPS J* 13:143). An observed percentile
outside its band more often than ``1 - level`` of the bins points at misfit in that part of the
distribution (e.g. the 90th percentile: between-subject variability too small).

When subjects got different doses (amounts, times, routes or rates), a bin mixes measurements
that the model expects to differ, and the plain VPC's bands widen with the dose spread rather
than the variability. The *prediction-corrected* VPC (Bergstrand et al. 2011, eq. 1 with a
lower bound of 0) then scales every observed and simulated value by ``PRED_bin / PRED_ij``: the
median population prediction in its bin over its own population prediction
(:func:`medsim.inference.checks.gof.population_prediction`). Measurements whose ``PRED`` is 0 (before
the first dose reaches the compartment) cannot be corrected and are left out (counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure

from medsim.inference.checks.predictive import PredictiveError, draws_of, padded_of, posterior_predictive


@dataclass(frozen=True)
class VPCResult:
    """Binned observed percentiles and simulated prediction bands (``B`` bins, ``P`` percentiles).

    Attributes
    ----------
    bin_edges : (B + 1,) float
        Time-bin edges (model time unit); bins are ``[e_k, e_k+1)``, the last one closed.
    bin_time : (B,) float
        Median measurement time in each bin (where the bin is drawn).
    n_per_bin : (B,) int
        Measurements per bin.
    percentiles : (P,) float
        Percentiles compared (e.g. 10, 50, 90).
    observed : (P, B) float
        Observed percentiles per bin (NaN in an empty bin).
    simulated_median, simulated_lower, simulated_upper : (P, B) float
        Median and central ``level`` band of the simulated percentiles over replicates.
    outside : (P, B) bool
        Observed percentile outside its band.
    level : float
    obs_time, obs_value : (M,) float
        The ``M`` measurements of the observable (for the scatter).
    observable, unit, time_unit : str
    n_replicates : int
    prediction_corrected : bool
        Values are prediction-corrected (pcVPC, see the module docstring).
    n_excluded : int
        Measurements left out of a pcVPC because their population prediction was 0.
    """

    bin_edges: np.ndarray
    bin_time: np.ndarray
    n_per_bin: np.ndarray
    percentiles: np.ndarray
    observed: np.ndarray
    simulated_median: np.ndarray
    simulated_lower: np.ndarray
    simulated_upper: np.ndarray
    outside: np.ndarray
    level: float
    obs_time: np.ndarray
    obs_value: np.ndarray
    observable: str
    unit: str
    time_unit: str
    n_replicates: int
    prediction_corrected: bool = False
    n_excluded: int = 0


PRED_FLOOR = 1e-6
"""Population predictions below this fraction of the largest one count as 0 in a pcVPC."""


def doses_vary(cohort: Any) -> bool:
    """True when the subjects' dosing schedules differ (number, time, compartment, amount or rate)."""
    padded = padded_of(cohort)
    mask = np.asarray(padded.dose_mask, bool)
    columns = [np.asarray(getattr(padded, f), float) for f in ("dose_time", "dose_cmt", "dose_amount", "dose_rate")]
    first = [c[0][mask[0]] for c in columns]
    for s in range(1, mask.shape[0]):
        if mask[s].sum() != mask[0].sum():
            return True
        if not all(np.allclose(c[s][mask[s]], f, rtol=1e-6, atol=0.0) for c, f in zip(columns, first, strict=True)):
            return True
    return False


def _prediction_correct(values: np.ndarray, pred: np.ndarray, which: np.ndarray, n_bins: int) -> np.ndarray:
    """``values * PRED_bin / PRED`` (Bergstrand et al. 2011 eq. 1, lower bound 0); ``values`` (..., M)."""
    pred_bin = np.array([np.median(pred[which == b]) if (which == b).any() else np.nan for b in range(n_bins)])
    return values * (pred_bin[which] / pred)


def time_bins(times: np.ndarray, n_bins: int) -> np.ndarray:
    """Time-bin edges that keep clusters of sampling times together ("natural breaks").

    Sampling designs are dense early and sparse late, and nominal times repeat across subjects,
    so equal-count bins would merge the 12 h and 24 h samples of a single-dose study. Instead the
    times are partitioned into at most ``n_bins`` contiguous groups minimising the within-group
    sum of squares of ``u = log(1 + t / t_ref)`` (optimal 1-D k-means by dynamic programming;
    Jenks 1967, Wang & Song 2011 *R Journal* 3:29), with ``t_ref`` the 10th percentile of the
    positive times so that the scale does not depend on the time unit. Edges sit half-way (in
    ``t``) between the groups, the first and last at the extreme times.

    Parameters
    ----------
    times : (M,) float
        Measurement times (model time unit).
    n_bins : int

    Returns
    -------
    (B + 1,) float, B <= n_bins
    """
    if n_bins < 1:
        raise PredictiveError(f"n_bins must be >= 1, got {n_bins}")
    values, counts = np.unique(np.asarray(times, float), return_counts=True)
    if len(values) == 1:
        return np.array([values[0], values[0] + 1.0])
    positive = np.repeat(values, counts)
    positive = positive[positive > 0]
    t_ref = float(np.percentile(positive, 10)) if positive.size else 1.0
    u = np.log1p(np.maximum(values, 0.0) / t_ref)
    k = min(n_bins, len(values))
    starts = _optimal_groups(u, counts.astype(float), k)
    inner = [(values[i - 1] + values[i]) / 2 for i in starts[1:]]
    return np.array([values[0], *inner, values[-1]])


def _optimal_groups(u: np.ndarray, w: np.ndarray, k: int) -> list[int]:
    """Start indices of the ``k`` contiguous groups of sorted ``u`` (weights ``w``) with least SSE."""
    n = len(u)
    c0 = np.concatenate([[0.0], np.cumsum(w)])
    c1 = np.concatenate([[0.0], np.cumsum(w * u)])
    c2 = np.concatenate([[0.0], np.cumsum(w * u * u)])

    def sse(i: np.ndarray, j: int) -> np.ndarray:  # weighted SSE of u[i:j], vectorised over i
        m = c0[j] - c0[i]
        s = c1[j] - c1[i]
        return c2[j] - c2[i] - s * s / np.maximum(m, 1e-300)

    cost = np.full((k + 1, n + 1), np.inf)
    cost[0, 0] = 0.0
    split = np.zeros((k + 1, n + 1), int)
    for g in range(1, k + 1):
        for j in range(g, n + 1):
            i = np.arange(g - 1, j)
            total = cost[g - 1, i] + sse(i, j)
            best = int(np.argmin(total))
            cost[g, j], split[g, j] = total[best], i[best]
    starts, j = [], n
    for g in range(k, 0, -1):
        j = split[g, j]
        starts.append(j)
    return starts[::-1]


def _bin_of(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, times, side="right") - 1, 0, len(edges) - 2)


def _binned_percentiles(values: np.ndarray, bins: np.ndarray, n_bins: int, q: np.ndarray) -> np.ndarray:
    """(..., P, B) percentiles of ``values`` (..., M) within each bin (NaN where empty)."""
    out = np.full((*values.shape[:-1], len(q), n_bins), np.nan)
    for b in range(n_bins):
        at = bins == b
        if at.any():
            out[..., b] = np.moveaxis(np.percentile(values[..., at], q, axis=-1), 0, -1)
    return out


def vpc(
    posterior: Any,
    cohort: Any,
    *,
    key: jax.Array,
    n_replicates: int = 200,
    bins: int | Sequence[float] = 8,
    percentiles: Sequence[float] = (10.0, 50.0, 90.0),
    level: float = 0.9,
    observable: str | None = None,
    dt: float | None = None,
    prediction_corrected: bool | None = None,
) -> VPCResult:
    """Visual predictive check of ``cohort`` against a fitted model.

    Parameters
    ----------
    posterior : Posterior or PosteriorDraws
    cohort : Cohort or PaddedCohort
        Usually the fitted cohort; any cohort with the model's covariates works.
    key : jax PRNG key
    n_replicates : int
        Simulated studies, one per posterior draw (evenly spaced over the chains).
    bins : int or sequence of float
        Number of quantile bins of the measurement times, or explicit edges (model time unit).
    percentiles : sequence of float
        Percentiles (0-100) of the measurements compared per bin.
    level : float
        Probability mass of the simulated bands.
    observable : str, optional
        Observable checked (default: the cohort's only measured observable).
    dt : float, optional
        Simulator step; see :func:`~medsim.inference.checks.predictive.posterior_predictive`.
    prediction_corrected : bool, optional
        Prediction-correct the values (pcVPC); default: when the subjects' doses differ
        (:func:`doses_vary`).

    Returns
    -------
    VPCResult
    """
    if not 0 < level < 1:
        raise PredictiveError(f"level must be in (0, 1), got {level}")
    q = np.asarray(percentiles, float)
    if q.ndim != 1 or q.size == 0 or (q <= 0).any() or (q >= 100).any():
        raise PredictiveError(f"percentiles must be values in (0, 100), got {list(percentiles)}")
    model = draws_of(posterior).model
    sample = posterior_predictive(posterior, cohort, key=key, n_draws=n_replicates, mode="population", dt=dt)
    measured = sorted(set(sample.observable[sample.mask].tolist()))
    if observable is None:
        if len(measured) != 1:
            names = [sample.observables[i] for i in measured]
            raise PredictiveError(f"the cohort measures several observables {names}: name the one to check")
        chosen = measured[0]
    elif observable in sample.observables and sample.observables.index(observable) in measured:
        chosen = sample.observables.index(observable)
    else:
        raise PredictiveError(f"observable {observable!r} is not measured in the cohort")
    at = sample.mask & (sample.observable == chosen)
    obs_time = sample.time[at]
    obs_value = sample.observed[at]
    simulated = sample.replicate[:, at]  # (R, M)
    corrected = doses_vary(cohort) if prediction_corrected is None else bool(prediction_corrected)
    excluded = 0
    if corrected:
        from medsim.inference.checks.gof import population_prediction

        pred = population_prediction(posterior, cohort, dt=dt)[at]
        keep = pred > PRED_FLOOR * max(float(np.max(pred)), 0.0)
        if not keep.any():
            raise PredictiveError("every population prediction is 0: nothing to prediction-correct")
        excluded = int((~keep).sum())
        obs_time, obs_value, simulated, pred = obs_time[keep], obs_value[keep], simulated[:, keep], pred[keep]
    edges = time_bins(obs_time, bins) if isinstance(bins, int) else np.asarray(bins, float)
    if edges.ndim != 1 or len(edges) < 2 or (np.diff(edges) <= 0).any():
        raise PredictiveError(f"bins: expected increasing edges, got {edges.tolist()}")
    which = _bin_of(obs_time, edges)
    n_bins = len(edges) - 1
    if corrected:
        obs_value = _prediction_correct(obs_value, pred, which, n_bins)
        simulated = _prediction_correct(simulated, pred, which, n_bins)
    observed = _binned_percentiles(obs_value, which, n_bins, q)
    sim = _binned_percentiles(simulated, which, n_bins, q)  # (R, P, B)
    tail = 100 * (1 - level) / 2
    with np.errstate(invalid="ignore"):
        lower, median, upper = np.nanpercentile(sim, [tail, 50.0, 100 - tail], axis=0)
    counts = np.bincount(which, minlength=n_bins)
    bin_time = np.array([np.median(obs_time[which == b]) if counts[b] else np.nan for b in range(n_bins)])
    name = sample.observables[chosen]
    return VPCResult(
        bin_edges=edges,
        bin_time=bin_time,
        n_per_bin=counts,
        percentiles=q,
        observed=observed,
        simulated_median=median,
        simulated_lower=lower,
        simulated_upper=upper,
        outside=(observed < lower) | (observed > upper),
        level=level,
        obs_time=obs_time,
        obs_value=obs_value,
        observable=name,
        unit=model.observable(name).unit,
        time_unit=model.time_unit,
        n_replicates=sim.shape[0],
        prediction_corrected=corrected,
        n_excluded=excluded,
    )


def plot_vpc(result: VPCResult, *, log_y: bool = False) -> Figure:
    """The VPC figure: measurements, observed percentile lines and simulated percentile bands.

    Returns
    -------
    matplotlib.figure.Figure
        Not attached to pyplot (save it with ``fig.savefig``).
    """
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(result.obs_time, result.obs_value, "o", color="0.55", markersize=2.5, label="measurements")
    keep = result.n_per_bin > 0
    t = result.bin_time[keep]
    for i, p in enumerate(result.percentiles):
        colour = "C3" if p == 50 else "C0"
        ax.fill_between(
            t,
            result.simulated_lower[i, keep],
            result.simulated_upper[i, keep],
            color=colour,
            alpha=0.2,
            linewidth=0,
            label=f"simulated P{p:g} ({100 * result.level:.0f}% band)",
        )
        ax.plot(
            t, result.observed[i, keep], "-" if p == 50 else "--", color="k", linewidth=1.2, label=f"observed P{p:g}"
        )
    for edge in result.bin_edges:
        ax.axvline(edge, color="0.85", linewidth=0.6, zorder=0)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(f"time [{result.time_unit}]")
    corrected = "prediction-corrected " if result.prediction_corrected else ""
    ax.set_ylabel(f"{corrected}{result.observable} [{result.unit}]")
    ax.set_title(
        f"{'Prediction-corrected visual' if result.prediction_corrected else 'Visual'} predictive check\n"
        f"({result.n_replicates} simulated studies; "
        f"{int(result.outside.sum())} of {int(np.isfinite(result.observed).sum())} observed percentiles outside"
        + (f"; {result.n_excluded} measurements with PRED 0 left out" if result.n_excluded else "")
        + ")",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper right")
    return fig
