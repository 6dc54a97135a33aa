"""Time to the first violation, with censoring at the end of each patient's simulated horizon.

The first-violation time of a patient is the first sub-step grid time outside the bound (see
:func:`medsim.policies.risk.curve.first_grid_time`); a patient who never leaves the safe set is
censored at the end of its simulated time. Kaplan–Meier (1958) estimates the distribution
function F(t) = P(first violation <= t); Greenwood's variance on the log(-log S) scale gives
pointwise intervals (Kalbfleisch & Prentice 2002, §1.4), and a quantile's interval is the set
of times where that band crosses the quantile level (Brookmeyer & Crowley 1982, Biometrics 38:29).
Quantiles beyond the share that violate within the horizon are ``+inf`` ("later than the
horizon"). Among patients who did violate, plain order-statistic quantiles are given too.
Greenwood's variance is undefined from the first time at which every patient still at risk
violates (the estimate of S drops to 0); a quantile whose interval would rest on that part of
the curve has none ("interval not estimable"), never the zero-width one the band collapses to.

Grid times detect a crossing up to one sub-step late and miss excursions shorter than a
sub-step; the bridge estimator covers those (:mod:`medsim.policies.risk.curve`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsim.policies.risk import intervals
from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.quantiles import norm_ppf

QUANTILES = (0.05, 0.1, 0.25, 0.5)


@dataclass(frozen=True)
class FirstViolation:
    """Time-to-first-violation summaries for one bound (or ``"any"``), in the model time unit.

    Attributes
    ----------
    bound : str
    n_events : int
        Patients with a grid violation within their horizon.
    km_quantiles : dict str -> Estimate
        ``"q05"`` ... ``"q50"`` of the first-violation time over all patients (Kaplan–Meier;
        ``+inf`` when fewer than that share violate).
    conditional_quantiles : dict str -> Estimate
        ``"q25"``, ``"q50"``, ``"q75"`` of the first-violation time among patients who violated.
    """

    bound: str
    n_events: int
    km_quantiles: dict[str, Estimate]
    conditional_quantiles: dict[str, Estimate]


def kaplan_meier(time: np.ndarray, event: np.ndarray, *, level: float) -> tuple[np.ndarray, ...]:
    """Kaplan–Meier distribution function at the distinct event times.

    Parameters
    ----------
    time : (N,) float
        Observed time: first violation time where ``event``, censoring time otherwise.
    event : (N,) bool

    Returns
    -------
    t : (E,) distinct event times
    f, f_lower, f_upper : (E,) F(t) and its pointwise interval (log(-log S) scale)
    """
    time = np.asarray(time, float)
    event = np.asarray(event, bool)
    t, d = np.unique(time[event], return_counts=True)
    if t.size == 0:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    at_risk = time.size - np.searchsorted(np.sort(time), t, side="left")
    surv = np.cumprod(1.0 - d / at_risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        green = np.cumsum(d / (at_risk * (at_risk - d)))
        z = norm_ppf(0.5 + level / 2.0)
        # Greenwood on log(-log S): var = green / (log S)^2; the band is S^exp(+-z sd). A larger
        # log(-log S) is a smaller S, so the lower end of S takes the + sign.
        sd = np.sqrt(green) / np.abs(np.log(surv))
        s_lo = surv ** np.exp(z * sd)
        s_hi = surv ** np.exp(-z * sd)
    s_lo = np.where(surv > 0, np.nan_to_num(s_lo, nan=0.0), 0.0)
    s_hi = np.where(surv > 0, np.nan_to_num(s_hi, nan=1.0), np.nan_to_num(s_hi, nan=0.0))
    f = 1.0 - surv
    return t, f, np.clip(1.0 - s_hi, 0.0, f), np.clip(1.0 - s_lo, f, 1.0)


def _first_reaching(t: np.ndarray, f: np.ndarray, q: float) -> float:
    hit = np.nonzero(f >= q - 1e-12)[0]
    return float(t[hit[0]]) if hit.size else np.inf


def _variance_undefined_from(time: np.ndarray, event: np.ndarray) -> float:
    """First event time at which every patient still at risk violates (Greenwood undefined from there)."""
    t, d = np.unique(time[event], return_counts=True)
    at_risk = time.size - np.searchsorted(np.sort(time), t, side="left")
    bad = np.nonzero(d >= at_risk)[0]
    return float(t[bad[0]]) if bad.size else np.inf


def first_violation(
    bound: str,
    first_time: np.ndarray,
    censor_time: np.ndarray,
    *,
    level: float,
    seed: int | None,
) -> FirstViolation:
    """Summaries of the first-violation time (``first_time`` (N,), inf = none; ``censor_time`` (N,))."""
    first_time = np.asarray(first_time, float)
    censor_time = np.asarray(censor_time, float)
    event = first_time <= censor_time
    observed = np.where(event, first_time, censor_time)
    t, f, f_lo, f_hi = kaplan_meier(observed, event, level=level)
    n = first_time.size
    undefined_from = _variance_undefined_from(observed, event)
    km = {}
    for q in QUANTILES:
        value = _first_reaching(t, f, q)
        lo = _first_reaching(t, f_hi, q)
        hi = _first_reaching(t, f_lo, q)
        key = f"q{round(q * 100):02d}"
        if t.size == 0:
            why = f"none of the {n} patients violated within the horizon, and the Kaplan-Meier band needs events"
            km[key] = Estimate.without_interval(value, n, "kaplan-meier", why, seed, level)
            continue
        if np.isfinite(undefined_from) and np.isfinite(value) and max(value, hi) >= undefined_from:
            why = (
                f"Greenwood variance undefined from t = {undefined_from:g}, where every one of the patients still "
                f"at risk violated ({int(event.sum())} events in {n} patients)"
            )
            km[key] = Estimate.without_interval(value, n, "kaplan-meier", why, seed, level)
            continue
        km[key] = Estimate(value, min(lo, value), max(hi, value), n, "kaplan-meier", seed, level)
    cond = {
        f"q{round(q * 100):02d}": intervals.quantile(first_time[event], q, level=level, seed=seed)
        for q in (0.25, 0.5, 0.75)
    }
    return FirstViolation(bound=bound, n_events=int(event.sum()), km_quantiles=km, conditional_quantiles=cond)
