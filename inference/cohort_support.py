"""The fitted cohort's support: the ranges its data covered, recorded in the posterior file.

A posterior speaks only for the region its data covered. :func:`cohort_support` records, at fit
time, the observed range of each measured observable, of the doses per compartment (bolus
amounts, infusion rates), of each covariate and the observed time span;
:func:`support_ranges` turns the record into the ranges a rollout checks
(``medsim.policies.rollout``: observables and treatments, keyed ``"conc"``, ``"bolus_cmt1"``,
``"rate_cmt1"``). The record travels as the JSON attribute ``cohort_support`` of the posterior
group; files written before it existed have none, and their support reads as unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medsim.models.base import PhysiologyModel

SUPPORT_ATTR = "cohort_support"
SUPPORT_VERSION = 1


def _range(values: np.ndarray) -> list[float] | None:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return [float(values.min()), float(values.max())] if values.size else None


def cohort_support(cohort: Any, model: PhysiologyModel) -> dict[str, Any]:
    """The observed ranges of ``cohort`` (a Cohort or PaddedCohort) for ``model``.

    Returns
    -------
    dict
        ``{"version", "time_unit", "time_span": [t0, t1], "observables": {name: [lo, hi]},
        "bolus": {cmt: [lo, hi]}, "rate": {cmt: [lo, hi]}, "covariates": {name: [lo, hi]}}``
        (JSON-ready; an observable, compartment or covariate without data is absent). Infusion
        ranges start at 0: giving no infusion is within any cohort's experience.
    """
    padded = cohort.padded() if hasattr(cohort, "padded") else cohort
    observables = {}
    for cmt, name in model.obs_targets.items():
        rng = _range(padded.obs_value[padded.obs_mask & (padded.obs_cmt == cmt)])
        if rng is not None:
            lo, hi = observables.get(name, rng)
            observables[name] = [min(lo, rng[0]), max(hi, rng[1])]
    bolus, rate = {}, {}
    for cmt in model.dose_targets:
        given = padded.dose_mask & (padded.dose_cmt == cmt)
        b = _range(padded.dose_amount[given & (padded.dose_rate == 0)])
        r = _range(padded.dose_rate[given & (padded.dose_rate > 0)])
        if b is not None:
            bolus[str(cmt)] = b
        if r is not None:
            rate[str(cmt)] = [0.0, r[1]]
    covariates = {k: rng for k, v in padded.covariates.items() if (rng := _range(v)) is not None}
    times = [padded.obs_time[padded.obs_mask], padded.dose_time[padded.dose_mask]]
    span = _range(np.concatenate([np.ravel(t) for t in times]))
    return {
        "version": SUPPORT_VERSION,
        "time_unit": model.time_unit,
        "time_span": span,
        "observables": observables,
        "bolus": bolus,
        "rate": rate,
        "covariates": covariates,
    }


def support_ranges(record: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """The ranges a rollout checks (observables and treatments) from a :func:`cohort_support` record."""
    out = {str(k): (float(lo), float(hi)) for k, (lo, hi) in record.get("observables", {}).items()}
    for kind in ("bolus", "rate"):
        out.update({f"{kind}_cmt{c}": (float(lo), float(hi)) for c, (lo, hi) in record.get(kind, {}).items()})
    return out
