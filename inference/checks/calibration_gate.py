"""The held-out calibration check of a fitted model, judged by the calibration gate.

A posterior fitted on each subject's earlier measurements (:func:`~medsim.inference.checks.heldout.split_after`
or :func:`~medsim.inference.checks.heldout.split_last`) predicts the held-out later ones from the
recorded doses (:func:`~medsim.inference.checks.predictive.posterior_predictive`, individual mode:
each subject's own random effects, process noise and residual error simulated). The
predictive draws are scored (:mod:`medsim.inference.checks.scores`) for calibration and sharpness:

* coverage of the central 50/80/90/95 % intervals, with the design effect of points within a
  subject (cluster-robust variance of the hit rate, subjects as clusters);
* mean interval width, and the 90 % width relative to the held-out measurements' 5–95 % range;
* interval score and CRPS, each against the climatological forecast (the held-out
  measurements' own distribution, the same for every point: in-sample, so a conservative
  reference);
* the held-out log score: the mean over points of ``log (1/R) sum_r N(y; f_r, sd_r)``, the
  Monte Carlo log predictive density with the residual error integrated exactly (for model
  comparison on the same held-out points);
* PIT histogram;
* for event bounds, the 90 % coverage of the held-out measurements outside the safe range (where
  a risk is decided; :func:`unsafe_side_figures`);
* for event bounds (a subject's held-out measurements leaving the safe range): the predicted
  probability (share of replicate data sets with an event), Brier score against the constant
  forecast at the cohort's event rate, AUC and a reliability curve.

:func:`medsim.models.gate.judge` turns the figures into the typed
:class:`~medsim.models.gate.CalibrationGate`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from medsim.inference.checks import scores
from medsim.inference.checks.predictive import PredictiveError, padded_of, posterior_predictive
from medsim.models.gate import LEVELS, CalibrationGate, judge
from medsim.simulate.types import Bound

_MAX_REFERENCE = 2000  # climatological CRPS: at most this many reference quantiles (memory n x ref)


def design_effect(inside: np.ndarray, subject: np.ndarray) -> float:
    """Cluster-robust over binomial variance of a hit rate (subjects as clusters), at least 1.

    ``var_cluster = S / (S - 1) sum_s (h_s - p n_s)^2 / N^2`` (the ratio-estimator variance of
    ``p = sum h_s / N``), divided by the binomial ``p (1 - p) / N``; 1 when there is only one
    subject or ``p`` is 0 or 1 (no variance to compare).
    """
    inside = np.asarray(inside, float)
    ids = np.unique(subject)
    n, p = inside.size, inside.mean()
    if ids.size < 2 or p in (0.0, 1.0):
        return 1.0
    resid = np.array([inside[subject == s].sum() - p * (subject == s).sum() for s in ids])
    var_cluster = ids.size / (ids.size - 1) * (resid**2).sum() / n**2
    return float(max(1.0, var_cluster / (p * (1 - p) / n)))


def misses(lo: np.ndarray, hi: np.ndarray, y: np.ndarray, cens: np.ndarray | None = None) -> tuple:
    """``(below, above)``: points under and over their interval ``[lo, hi]``.

    A censored reading (``cens`` 1: the true value is at or below the limit ``y``, a CGM floor or
    a quantification limit; -1: at or above ``y``, a sensor ceiling) is a miss only when the
    interval cannot hold any value on its side of the limit: a floor reading of 39 mg/dL is a miss
    below an interval starting at 45 (the truth is at most 39), but not a miss above one ending at
    35 (the truth may be lower still).
    """
    below, above = y < lo, y > hi
    if cens is not None:
        below = below & (cens != -1)
        above = above & (cens != 1)
    return below, above


def interval_figures(
    draws: np.ndarray, y: np.ndarray, subject: np.ndarray, cens: np.ndarray | None = None
) -> dict[str, float]:
    """Coverage, width, interval score, CRPS and PIT figures of held-out points.

    Parameters
    ----------
    draws : (R, n) predictive draws of the ``n`` held-out measurements
    y : (n,) measurements
    subject : (n,) subject index of each point (clusters of the design effect)
    cens : (n,) int, optional
        Censoring codes of the points (:func:`misses`); coverage counts a censored point as
        covered when its interval reaches its side of the limit. The other scores take the
        limit as the value.
    """
    out: dict[str, float] = {}
    for level in LEVELS:
        lo, hi = scores.central_intervals(draws, level)
        below, above = misses(lo, hi, y, cens)
        inside = ~(below | above)
        out[f"coverage_{level:g}"] = float(inside.mean())
        out[f"width_{level:g}"] = float((hi - lo).mean())
        out[f"design_effect_{level:g}"] = design_effect(inside, subject)
    lo90, hi90 = scores.central_intervals(draws, 0.9)
    q05, q95 = np.quantile(y, [0.05, 0.95])
    spread = float(q95 - q05)
    out["spread_5_95"] = spread
    out["relative_width_0.9"] = out["width_0.9"] / spread if spread > 0 else float("inf")
    out["interval_score_0.9"] = float(scores.interval_score(lo90, hi90, y, 0.9).mean())
    out["interval_score_0.9_climatology"] = float(scores.interval_score(q05, q95, y, 0.9).mean())
    reference = np.quantile(y, np.linspace(0, 1, min(y.size, _MAX_REFERENCE)))
    out["crps"] = float(scores.crps(draws, y).mean())
    climatology = np.broadcast_to(reference[:, None], (reference.size, y.size))
    out["crps_climatology"] = float(scores.crps(climatology, y).mean())
    clim = out["crps_climatology"]
    out["crps_skill"] = 1.0 - out["crps"] / clim if clim > 0 else float("nan")
    out["rmse"] = float(np.sqrt(((draws.mean(axis=0) - y) ** 2).mean()))
    return out


def unsafe_side_figures(
    draws: np.ndarray, y: np.ndarray, subject: np.ndarray, cens: np.ndarray | None = None
) -> dict[str, float | None]:
    """90 % coverage of the held-out measurements that fell outside the safe range.

    A risk is decided where the measurements leave the safe range, and a model can cover the
    bulk of the data while missing exactly those (a forecast that cannot go as low as a deep
    hypoglycaemia does). ``n_unsafe`` points, their coverage and its design effect (subjects as
    clusters); coverage None when there is no such point. Censored readings as in :func:`misses`.
    """
    n = int(y.size)
    if n == 0:
        return {"n_unsafe": 0.0, "coverage_0.9_unsafe": None, "below_0.9_unsafe": None, "above_0.9_unsafe": None}
    lo, hi = scores.central_intervals(draws, 0.9)
    below, above = misses(lo, hi, y, cens)
    inside = ~(below | above)
    return {
        "n_unsafe": float(n),
        "coverage_0.9_unsafe": float(inside.mean()),
        "below_0.9_unsafe": float(below.mean()),
        "above_0.9_unsafe": float(above.mean()),
        "design_effect_0.9_unsafe": design_effect(inside, subject),
    }


def log_score(prediction: np.ndarray, sd: np.ndarray, y: np.ndarray) -> float | None:
    """Mean over points of ``log (1/R) sum_r N(y; prediction_r, sd_r)`` (None without residual error)."""
    if not np.all(sd > 0):
        return None
    z = (y - prediction) / sd
    log_density = -0.5 * z**2 - np.log(sd) - 0.5 * np.log(2 * np.pi)
    r = prediction.shape[0]
    top = log_density.max(axis=0)
    return float((top + np.log(np.exp(log_density - top).sum(axis=0)) - np.log(r)).mean())


def event_figures(probability: np.ndarray, event: np.ndarray) -> tuple[dict[str, float | None], tuple]:
    """Brier score and skill over the constant forecast, AUC and reliability of event forecasts."""
    rate = float(event.mean())
    b = scores.brier(probability, event)
    constant = rate * (1 - rate)  # Brier score of forecasting the event rate for everyone
    figures: dict[str, float | None] = {
        "n_events": float(event.sum()),
        "n_no_events": float((~event).sum()),
        "event_rate": rate,
        "mean_probability": float(probability.mean()),
        "brier": b,
        "brier_constant": constant,
        "brier_skill": 1.0 - b / constant if constant > 0 else None,
        "auc": scores.auc(probability, event),
    }
    return figures, scores.reliability(probability, event)


def censoring(cohort: Any, shape: tuple[int, int]) -> np.ndarray:
    """The padded layout's censoring codes (0 everywhere for a cohort that records none)."""
    cens = getattr(padded_of(cohort), "obs_cens", None)
    if cens is None:
        return np.zeros(shape, np.int64)
    if np.shape(cens) != tuple(shape):
        raise PredictiveError(f"censoring codes of shape {np.shape(cens)} do not match the held-out layout {shape}")
    return np.asarray(cens, np.int64)


def forecast_start(posterior: Any, cohort: Any, heldout: np.ndarray) -> str:
    """Where a held-out forecast starts: ``"filtered"`` or ``"initial"`` (see :func:`heldout_check`)."""
    from medsim.inference.checks.predictive import draws_of

    draws = draws_of(posterior)
    if not draws.state or draws.state_time is None:
        return "initial"
    time = np.asarray(padded_of(cohort).obs_time, float)
    t_start = np.asarray(draws.state_time, float)[:, None]
    if time.shape[0] != t_start.shape[0]:
        return "initial"
    return (
        "filtered" if bool((time[heldout] >= np.broadcast_to(t_start, time.shape)[heldout] - 1e-6).all()) else "initial"
    )


def heldout_check(
    posterior: Any,
    cohort: Any,
    heldout: np.ndarray,
    *,
    key: jax.Array,
    bounds: Sequence[Bound] = (),
    n_draws: int | None = 200,
    dt: float | None = None,
    description: str = "",
    start: str = "auto",
) -> CalibrationGate:
    """Score a posterior's predictions of held-out measurements and judge them.

    Parameters
    ----------
    posterior : Posterior or PosteriorDraws
        Fitted without the held-out measurements, to the same subjects in the same order.
    cohort : Cohort
        The full cohort (doses of the held-out window included).
    heldout : (S, N) bool
        Held-out measurements in the padded layout (:func:`~medsim.inference.checks.heldout.window_mask`).
    key : jax PRNG key
    bounds : sequence of Bound
        Safe-range bounds defining events; empty: no event forecasts.
    n_draws : int or None
        Posterior draws simulated.
    dt : float, optional
        Simulator step.
    description : str
        What was held out (stored in the record).
    start : {"auto", "filtered", "initial"}
        Where each subject's forecast starts (:func:`posterior_predictive`): ``"filtered"``, from
        its filtered state after the last fitted event, as a digital twin forecasts; ``"initial"``,
        from time 0. ``"auto"``: filtered where the posterior stores filtered states and every
        held-out measurement comes after its subject's, else initial. Recorded in the result.

    Returns
    -------
    CalibrationGate

    Raises
    ------
    PredictiveError
        No held-out measurement, or bounds on an observable the model does not have.
    """
    held = np.asarray(heldout, bool)
    if not held.any():
        raise PredictiveError("nothing is held out: the held-out mask selects no measurement")
    start = forecast_start(posterior, cohort, held) if start == "auto" else start
    sample = posterior_predictive(posterior, cohort, key=key, n_draws=n_draws, mode="individual", dt=dt, start=start)
    if not sample.mask[held].all():
        raise PredictiveError("start='filtered': some held-out measurements precede their subject's filtered state")
    y = np.asarray(sample.observed, float)[held]
    draws = sample.replicate[:, held]
    subject_all = np.broadcast_to(np.arange(held.shape[0])[:, None], held.shape)
    subject = subject_all[held]
    cens_all = censoring(cohort, held.shape)
    figures: dict[str, float | None] = dict(interval_figures(draws, y, subject, cens_all[held]))
    sd = sample.residual_sd[:, held] if sample.residual_sd is not None else np.zeros_like(draws)
    figures["log_score"] = log_score(sample.prediction[:, held], sd, y)
    pit_counts = np.histogram(scores.pit(draws, y), bins=10, range=(0.0, 1.0))[0]
    reliability: tuple = ()
    names = sample.observables
    units = {o.name: o.unit for o in getattr(getattr(posterior, "model", None), "observables", ())}
    if bounds:
        missing = [b.name for b in bounds if b.observable not in names]
        if missing:
            raise PredictiveError(f"event bounds {missing} name observables the model lacks; it has {list(names)}")
        outside = np.zeros(sample.replicate.shape, bool)
        observed_out = np.zeros(held.shape, bool)
        measured = np.zeros(held.shape, bool)
        for b in bounds:
            at = held & (sample.observable == names.index(b.observable))
            measured |= at
            outside |= at & b.outside(sample.replicate)
            observed_out |= at & b.outside(np.asarray(sample.observed, float))
        has = measured.any(axis=1)
        figures.update(
            unsafe_side_figures(
                sample.replicate[:, observed_out],
                np.asarray(sample.observed, float)[observed_out],
                subject_all[observed_out],
                cens_all[observed_out],
            )
        )
        event = observed_out.any(axis=1)[has]
        probability = outside.any(axis=2).mean(axis=0)[has]
        event_figs, reliability = event_figures(probability, event)
        figures.update(event_figs)
    observed_names = sorted({names[i] for i in np.unique(sample.observable[held])})
    unit = ", ".join(units.get(n, "") for n in observed_names if units.get(n))
    data_hash = cohort.data_hash() if callable(getattr(cohort, "data_hash", None)) else ""
    return judge(
        figures,
        n_points=int(held.sum()),
        n_subjects=int(held.any(axis=1).sum()),
        unit=unit,
        reliability=reliability,
        pit_counts=tuple(int(c) for c in pit_counts),
        heldout=description or f"{int(held.sum())} held-out measurements",
        method=(
            f"individual posterior predictive of {', '.join(observed_names)} ({sample.prediction.shape[0]} draws, "
            + (
                "from each subject's filtered state after its last fitted event)"
                if start == "filtered"
                else "from time 0)"
            )
        ),
        events=", ".join(b.name for b in bounds) + (" (any held-out measurement outside)" if bounds else ""),
        data_hash=str(data_hash),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
