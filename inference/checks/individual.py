"""Individual fits: each subject's measurements against its posterior individual predictions.

For every fitted subject the latent observable is simulated on a time grid for ``R`` posterior
draws of that subject's parameters (:func:`~medsim.inference.checks.predictive.posterior_predictive` in
``individual`` mode); the plot shows the measurements, the median prediction and a central band
(90 % by default) per subject, one small panel each. The band is the posterior uncertainty of the
latent trajectory (parameter uncertainty plus, for an SDE model, process noise simulated forward
from time 0 without conditioning on the measurements); measurement error is not included, so
points may legitimately scatter outside it by about the residual SD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure

from medsim.inference.checks.predictive import PredictiveError, draws_of, padded_of, posterior_predictive


@dataclass(frozen=True)
class IndividualFits:
    """Per-subject prediction bands on a grid (``S`` subjects, ``G`` grid points, ``N`` measurements).

    Attributes
    ----------
    subject_ids : tuple of str
    grid : (S, G) float
        Grid times (model time unit), from 0 to each subject's last measurement.
    median, lower, upper : (S, G) float
        Median and central ``level`` band of the individual predictions (observable unit).
    level : float
    obs_time, obs_value : (S, N) float
    obs_mask : (S, N) bool
    observable, unit, time_unit : str
    n_draws : int
        Posterior draws simulated.
    """

    subject_ids: tuple[str, ...]
    grid: np.ndarray
    median: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float
    obs_time: np.ndarray
    obs_value: np.ndarray
    obs_mask: np.ndarray
    observable: str
    unit: str
    time_unit: str
    n_draws: int


def individual_fits(
    posterior: Any,
    cohort: Any,
    *,
    key: jax.Array,
    n_draws: int | None = 200,
    n_grid: int = 80,
    level: float = 0.9,
    observable: str | None = None,
    dt: float | None = None,
) -> IndividualFits:
    """Median and central ``level`` band of each fitted subject's predictions on a time grid.

    Parameters
    ----------
    posterior : Posterior or PosteriorDraws
    cohort : Cohort or PaddedCohort
        The fitted cohort (same subjects, same order).
    key : jax PRNG key
    n_draws : int or None
        Posterior draws simulated (evenly spaced); None: all.
    n_grid : int
        Grid points per subject.
    level : float
        Probability mass of the central band (0.9: the 5th to 95th percentile).
    observable : str, optional
        Observable to predict (default: the one the cohort measures).
    dt : float, optional
        Simulator step; see :func:`~medsim.inference.checks.predictive.posterior_predictive`.

    Returns
    -------
    IndividualFits
    """
    if not 0 < level < 1:
        raise PredictiveError(f"level must be in (0, 1), got {level}")
    if n_grid < 2:
        raise PredictiveError(f"n_grid must be >= 2, got {n_grid}")
    draws = draws_of(posterior)
    padded = padded_of(cohort)
    mask = np.asarray(padded.obs_mask, bool)
    obs_time = np.asarray(padded.obs_time, float)
    end = np.where(mask, obs_time, 0.0).max(axis=1)
    grid = np.linspace(0.0, 1.0, n_grid)[None, :] * np.maximum(end, np.finfo(float).tiny)[:, None]
    sample = posterior_predictive(
        draws, padded, key=key, n_draws=n_draws, mode="individual", times=grid, observable=observable, dt=dt
    )
    name = sample.observables[int(sample.observable[0, 0])]
    tail = 100 * (1 - level) / 2
    lower, median, upper = np.percentile(sample.prediction, [tail, 50.0, 100 - tail], axis=0)
    return IndividualFits(
        subject_ids=sample.subject_ids,
        grid=grid,
        median=median,
        lower=lower,
        upper=upper,
        level=level,
        obs_time=obs_time,
        obs_value=np.asarray(padded.obs_value, float),
        obs_mask=mask,
        observable=name,
        unit=draws.model.observable(name).unit,
        time_unit=draws.model.time_unit,
        n_draws=len(sample.draw_index),
    )


def plot_individual_fits(fits: IndividualFits, *, columns: int = 4, log_y: bool = False) -> Figure:
    """Small multiples, one panel per subject: measurements, median prediction and band.

    Parameters
    ----------
    fits : IndividualFits
    columns : int
        Panels per row.
    log_y : bool
        Logarithmic concentration axis (useful for elimination phases).

    Returns
    -------
    matplotlib.figure.Figure
        Not attached to pyplot (save it with ``fig.savefig``).
    """
    n = len(fits.subject_ids)
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(2.6 * columns, 2.1 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, sharex=False, sharey=True, squeeze=False)
    for s, ax in enumerate(axes.flat):
        if s >= n:
            ax.set_visible(False)
            continue
        ax.fill_between(fits.grid[s], fits.lower[s], fits.upper[s], color="C0", alpha=0.25, linewidth=0)
        ax.plot(fits.grid[s], fits.median[s], color="C0", linewidth=1.2)
        m = fits.obs_mask[s]
        ax.plot(fits.obs_time[s, m], fits.obs_value[s, m], "o", color="k", markersize=3)
        ax.set_title(f"subject {fits.subject_ids[s]}", fontsize=8)
        ax.tick_params(labelsize=7)
        if log_y:
            ax.set_yscale("log")
    for ax in axes[-1]:
        ax.set_xlabel(f"time [{fits.time_unit}]", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{fits.observable} [{fits.unit}]", fontsize=8)
    fig.suptitle(
        f"Individual fits: measurements, median and {100 * fits.level:.0f}% band of individual predictions "
        f"({fits.n_draws} posterior draws)",
        fontsize=9,
    )
    return fig
