"""Goodness of fit: population and individual predictions and conditional weighted residuals.

The four panels pharmacometricians read first (Nguyen et al. 2017, *CPT:PSP* 6:87, "Model
evaluation of continuous data pharmacometric models"): observed against the population
prediction (PRED) and against the individual prediction (IPRED), and the conditional weighted
residuals (CWRES) against time and against PRED.

* **PRED** — the typical subject: population parameters at their posterior medians, random
  effects 0, the subject's own doses and covariates, no process noise (the ODE limit).
* **IPRED** — the posterior median of the subject's individual predictions at its measurement
  times (:func:`~medsim.inference.checks.predictive.posterior_predictive`, individual mode).
* **CWRES** (Hooker, Staatz & Karlsson 2007, *Pharm Res* 24:2187, eqs. 6-7): the model is
  linearised in the random effects around each subject's conditional estimate ``eta_hat`` (here
  the posterior mean of its ``eta``): with ``f(eta)`` the subject's predictions in the ODE limit
  and ``G = df/deta`` at ``eta_hat``, ``E[y] = f(eta_hat) - G eta_hat`` and
  ``Cov[y] = G Omega G' + R``, ``R`` the residual variance at ``f(eta_hat)``; the residuals are
  ``Cov[y]^(-1/2) (y - E[y])`` (symmetric square root). For a model that describes the data they
  are approximately independent standard normal; a trend against time or PRED points at a
  structural misfit. ``G`` is a central difference (step :data:`ETA_STEP` in log-parameter
  units); process noise is left out of ``Cov[y]``, as NONMEM's CWRES leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure

from medsim.inference.checks.predictive import PredictiveError, draws_of, padded_of, posterior_predictive
from medsim.models.base import residual_key
from medsim.population.draws import PosteriorDraws

ETA_STEP = 1e-3
"""Central-difference step of ``G = df/deta``: truncation error O(step^2) = 1e-6 relative, float32
rounding of the simulator about 1e-7 / step = 1e-4 relative; both far below a residual SD."""


@dataclass(frozen=True)
class GoodnessOfFit:
    """Predictions and residuals at the ``M`` measurements of one observable.

    Attributes
    ----------
    subject : (M,) str
        Subject of each measurement.
    time, observed : (M,) float
        Measurement time (model time unit) and value (observable unit).
    pred, ipred : (M,) float
        Population and individual prediction (observable unit).
    cwres : (M,) float
        Conditional weighted residuals (dimensionless; NaN where a subject's covariance was singular).
    iwres : (M,) float
        Individual weighted residuals ``(observed - IPRED) / sd(IPRED)`` (dimensionless), the
        residual SD at the posterior-median residual parameters.
    observable, unit, time_unit : str
    n_draws : int
        Posterior draws behind IPRED and ``eta_hat``.
    """

    subject: np.ndarray
    time: np.ndarray
    observed: np.ndarray
    pred: np.ndarray
    ipred: np.ndarray
    cwres: np.ndarray
    iwres: np.ndarray
    observable: str
    unit: str
    time_unit: str
    n_draws: int


def typical_draws(posterior: Any, eta: dict[str, np.ndarray] | None = None, *, n: int = 1) -> PosteriorDraws:
    """Draws at the posterior-median population, residual and BSV parameters, without process noise.

    Parameters
    ----------
    posterior : Posterior or PosteriorDraws
    eta : dict random effect -> (R, S), optional
        Random effects of the ``R`` returned draws (default: one draw with every ``eta`` 0: PRED).
    n : int
        Draws returned when the model has no random effects (otherwise ``R``).
    """
    draws = draws_of(posterior)
    model = draws.model
    if eta is None:
        eta = {p: np.zeros((1, len(draws.subject_ids))) for p in draws.eta}
    n = len(next(iter(eta.values()))) if eta else n
    noise = {p.name for p in model.params_of_kind("process_noise")}
    population = {
        k: np.full(n, 0.0 if k in noise else float(np.median(np.asarray(v)))) for k, v in draws.population.items()
    }
    return replace(
        draws,
        population=population,
        omega={k: np.full(n, float(np.median(v))) for k, v in draws.omega.items()},
        eta={k: np.asarray(v, float) for k, v in eta.items()},
        residual={k: np.full(n, float(np.median(v))) for k, v in draws.residual.items()},
        # PRED starts every subject at the model's initial state, not at its filtered state
        state={},
        state_cov=None,
        state_time=None,
    )


def population_prediction(posterior: Any, cohort: Any, *, dt: float | None = None) -> np.ndarray:
    """PRED at every measurement of ``cohort`` ((S, T), padded layout; observable unit).

    Any cohort with the model's covariates works (new subjects of a study simulated in
    population mode with ``omega = 0``, so every random effect is 0).
    """
    typical = typical_draws(posterior)
    typical = replace(typical, omega={k: np.zeros_like(v) for k, v in typical.omega.items()})
    sample = posterior_predictive(typical, cohort, key=jax.random.key(0), n_draws=None, mode="population", dt=dt)
    return sample.prediction[0]


def _inverse_sqrt(cov: np.ndarray) -> np.ndarray | None:
    values, vectors = np.linalg.eigh(cov)
    if not (values > 1e-12 * max(values.max(), 1e-300)).all():
        return None
    return (vectors / np.sqrt(values)) @ vectors.T


def goodness_of_fit(
    posterior: Any,
    cohort: Any,
    *,
    key: jax.Array,
    n_draws: int | None = 200,
    observable: str | None = None,
    dt: float | None = None,
) -> GoodnessOfFit:
    """PRED, IPRED and CWRES at the measurements of the fitted ``cohort``.

    Parameters
    ----------
    posterior : Posterior or PosteriorDraws
    cohort : Cohort or PaddedCohort
        The fitted cohort (same subjects, same order).
    key : jax PRNG key
        Of the individual predictions (IPRED).
    n_draws : int or None
        Posterior draws behind IPRED and ``eta_hat``; None: all.
    observable : str, optional
        Default: the cohort's only measured observable.
    dt : float, optional
        Simulator step; see :func:`~medsim.inference.checks.predictive.posterior_predictive`.

    Raises
    ------
    PredictiveError
        Several measured observables and none named, or subjects that are not the fitted ones.
    """
    draws = draws_of(posterior)
    model = draws.model
    padded = padded_of(cohort)
    individual = posterior_predictive(draws, padded, key=key, n_draws=n_draws, mode="individual", dt=dt)
    measured = sorted(set(individual.observable[individual.mask].tolist()))
    names = individual.observables
    if observable is None:
        if len(measured) != 1:
            raise PredictiveError(f"the cohort measures several observables {[names[i] for i in measured]}: name one")
        chosen = measured[0]
    elif observable in names and names.index(observable) in measured:
        chosen = names.index(observable)
    else:
        raise PredictiveError(f"observable {observable!r} is not measured in the cohort")
    name = names[chosen]
    at = individual.mask & (individual.observable == chosen)
    # Conditional estimates eta_hat (posterior means over the draws used), then one simulation of
    # PRED (eta = 0), f(eta_hat) and f(eta_hat +- step e_k) for every random effect k.
    effects = tuple(draws.eta)
    idx = individual.draw_index
    eta_hat = {p: np.asarray(draws.eta[p], float)[idx].mean(axis=0) for p in effects}
    n_sub, k = len(individual.subject_ids), len(effects)
    centre = np.array([eta_hat[p] for p in effects]).reshape(k, n_sub)  # (K, S); K = 0 without random effects
    rows = [np.zeros((k, n_sub)), centre]
    for j in range(k):
        for sign in (1.0, -1.0):
            shifted = centre.copy()
            shifted[j] += sign * ETA_STEP
            rows.append(shifted)
    stacked = np.stack(rows)  # (2 + 2K, K, S)
    typical = typical_draws(draws, {p: stacked[:, j] for j, p in enumerate(effects)}, n=len(stacked))
    sim = posterior_predictive(typical, padded, key=jax.random.key(0), n_draws=None, mode="individual", dt=dt)
    pred, f_hat = sim.prediction[0], sim.prediction[1]
    steps = [(sim.prediction[2 + 2 * j] - sim.prediction[3 + 2 * j]) / (2 * ETA_STEP) for j in range(k)]
    jac = np.stack(steps, -1) if k else np.zeros((*pred.shape, 0))  # (S, T, K)
    omega2 = np.array([float(np.median(draws.omega[p])) ** 2 for p in effects]) if k else np.zeros(0)
    spec = model.residual[name]
    add = typical.residual.get(residual_key(name, "add"))
    prop = typical.residual.get(residual_key(name, "prop"))
    sd = np.asarray(spec.sd(f_hat, None if add is None else add[0], None if prop is None else prop[0]), float)
    observed = np.asarray(individual.observed, float)
    cwres = np.full(observed.shape, np.nan)
    for s in range(n_sub):
        m = at[s]
        if not m.any():
            continue
        g = jac[s, m]  # (T_s, K)
        eta_s = np.array([eta_hat[p][s] for p in effects])
        mean = f_hat[s, m] - g @ eta_s
        cov = (g * omega2) @ g.T + np.diag(np.broadcast_to(sd[s, m], (int(m.sum()),)) ** 2)
        root = _inverse_sqrt(cov)
        if root is not None:
            cwres[s, m] = root @ (observed[s, m] - mean)
    ipred = np.median(individual.prediction, axis=0)
    ipred_sd = np.asarray(spec.sd(ipred, None if add is None else add[0], None if prop is None else prop[0]), float)
    ids = np.asarray(individual.subject_ids, dtype=object)
    return GoodnessOfFit(
        subject=np.broadcast_to(ids[:, None], at.shape)[at],
        time=individual.time[at],
        observed=observed[at],
        pred=pred[at],
        ipred=ipred[at],
        cwres=cwres[at],
        iwres=((observed - ipred) / np.broadcast_to(ipred_sd, ipred.shape))[at],
        observable=name,
        unit=model.observable(name).unit,
        time_unit=model.time_unit,
        n_draws=len(idx),
    )


def plot_goodness_of_fit(gof: GoodnessOfFit) -> Figure:
    """Observed vs PRED and IPRED, CWRES vs time and vs PRED (2 x 2 panels).

    Returns
    -------
    matplotlib.figure.Figure
        Not attached to pyplot.
    """
    fig = Figure(figsize=(8.5, 7.0), layout="constrained")
    axes = fig.subplots(2, 2)
    label = f"{gof.observable} [{gof.unit}]"
    for ax, x, what in ((axes[0, 0], gof.pred, "population prediction PRED"), (axes[0, 1], gof.ipred, "IPRED")):
        ax.plot(x, gof.observed, "o", color="C0", markersize=3, alpha=0.7)
        hi = float(np.nanmax(np.concatenate([x, gof.observed])))
        lo = min(0.0, float(np.nanmin(np.concatenate([x, gof.observed]))))
        ax.plot([lo, hi], [lo, hi], color="k", linewidth=0.8)
        ax.set_xlabel(f"{what} [{gof.unit}]")
        ax.set_ylabel(f"observed {label}")
    for ax, x, what in (
        (axes[1, 0], gof.time, f"time [{gof.time_unit}]"),
        (axes[1, 1], gof.pred, f"population prediction PRED [{gof.unit}]"),
    ):
        ax.plot(x, gof.cwres, "o", color="C0", markersize=3, alpha=0.7)
        for level, style in ((0.0, "-"), (1.96, "--"), (-1.96, "--")):
            ax.axhline(level, color="k", linewidth=0.8, linestyle=style)
        ax.set_xlabel(what)
        ax.set_ylabel("CWRES [dimensionless]")
    fig.suptitle(
        f"Goodness of fit: {gof.observed.size} measurements; CWRES dashed at +-1.96 "
        f"(95 % of a standard normal); IPRED from {gof.n_draws} posterior draws",
        fontsize=9,
    )
    return fig
