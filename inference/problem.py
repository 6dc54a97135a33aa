"""What a fit needs from a cohort and a model, checked and converted once.

:func:`prepare` takes a ``medsim.data.Cohort`` (or anything with its ``padded()``,
``data_hash()`` and ``name``; a bare ``PaddedCohort`` also works) and returns a
:class:`FitData`: the event timeline for the likelihood, the subjects' covariates, the prior
specification and the observation arrays the posterior file keeps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax
import numpy as np

from medsim.inference.likelihood.ekf import cohort_loglik
from medsim.inference.likelihood.timeline import Timeline, build_timeline
from medsim.inference.priors import PriorSpec, build_priors
from medsim.models.base import PhysiologyModel


class FitDataError(ValueError):
    """A cohort that the chosen model cannot be fitted to (names the subject, column or covariate)."""


@dataclass(frozen=True)
class FitData:
    """A cohort prepared for fitting ``model`` (``S`` subjects, ``N`` padded observations).

    Attributes
    ----------
    model : PhysiologyModel
    priors : PriorSpec
    timeline : Timeline
    subject_ids : tuple of str, length S
    covariates : dict name -> (S,) float
        The model's covariates, per subject.
    extra_covariates : dict name -> (S,) float
        The cohort's other covariates (kept in the posterior file for reference).
    assumed_covariates : tuple of str
        Optional covariates the cohort lacks, set to the model's reference value for every subject.
    obs_time, obs_value : (S, N) float
        Observation times (model time unit) and values (observable unit).
    obs_observable : (S, N) int
        Index into ``timeline.observables``.
    obs_mask : (S, N) bool
    cohort_name, data_hash : str
    """

    model: PhysiologyModel
    priors: PriorSpec
    timeline: Timeline
    subject_ids: tuple[str, ...]
    covariates: dict[str, np.ndarray]
    extra_covariates: dict[str, np.ndarray]
    obs_time: np.ndarray
    obs_value: np.ndarray
    obs_observable: np.ndarray
    obs_mask: np.ndarray
    cohort_name: str
    data_hash: str
    assumed_covariates: tuple[str, ...] = ()

    @property
    def n_subjects(self) -> int:
        return len(self.subject_ids)

    @property
    def observed(self) -> tuple[str, ...]:
        return self.timeline.observed_observables()

    @cached_property
    def loglik(self) -> Callable[..., jax.Array]:
        """Jitted :func:`~medsim.inference.likelihood.ekf.cohort_loglik` of this cohort and model:
        ``loglik(individual_params, noise, residual) -> (S, N)``. Compiled once per shape when
        called eagerly (sampler start-up); inlined when traced inside a larger jitted function."""
        model = self.model
        # The timeline is an argument (not a closure constant) so that a FitData whose timeline
        # is itself traced (e.g. vmapped over simulated cohorts) never leaks tracers into the cache.
        jitted = jax.jit(
            lambda timeline, theta, noise, residual: cohort_loglik(model, timeline, theta, noise, residual)
        )
        return lambda theta, noise, residual: jitted(self.timeline, theta, noise, residual)


def prepare(
    cohort: Any,
    model: PhysiologyModel,
    *,
    process_noise: bool = True,
    substeps: int = 4,
    max_substep: float | None = None,
    dtype: Any = np.float32,
    layout: str = "auto",
    gradient: str = "auto",
    fix: Mapping[str, float | None] | None = None,
) -> FitData:
    """Check ``cohort`` against ``model`` and build everything a fit needs.

    Parameters
    ----------
    cohort : Cohort or PaddedCohort
    model : PhysiologyModel
    process_noise : bool
        False fits the ODE limit (process-noise scales fixed at 0).
    substeps, max_substep : see :func:`~medsim.inference.likelihood.timeline.build_timeline`.
    dtype : numpy floating dtype of the likelihood arrays.
    layout : {"auto", "entries", "matrix"}
        Storage of the filter's mean and covariance (see :mod:`medsim.inference.likelihood.ekf`);
        ``"auto"`` picks by the number of states. Kept in ``FitData.timeline.layout``.
    gradient : {"auto", "forward", "reverse"}
        How samplers differentiate the likelihood
        (:func:`~medsim.inference.likelihood.filtering.resolve_gradient`); same derivatives either
        way. Kept in ``FitData.timeline.gradient``.
    fix : mapping structural parameter -> value or None, optional
        Parameters held fixed (:meth:`~medsim.inference.priors.PriorSpec.fix`), ``None`` at the
        model's typical value.

    Raises
    ------
    FitDataError
        No subjects or observations, a covariate the model needs is missing or not finite.
    TimelineError
        Records the model cannot represent, or an unknown ``layout`` (see :func:`build_timeline`).
    PriorError
        ``fix`` names something that cannot be fixed, or a value that is not positive.
    """
    padded = cohort.padded() if hasattr(cohort, "padded") else cohort
    ids = tuple(str(i) for i in padded.ids)
    obs_mask = np.asarray(padded.obs_mask, bool)
    if not ids or not obs_mask.any():
        raise FitDataError("the cohort has no subjects with observations; nothing to fit")
    empty = [ids[s] for s in range(len(ids)) if not obs_mask[s].any()]
    if empty:
        raise FitDataError(f"subjects without observations cannot be fitted: {empty[:10]}")
    available = {k: np.asarray(v, float) for k, v in dict(padded.covariates).items()}
    covariates, assumed = {}, []
    for c in model.covariates:
        if c.name not in available and c.optional:
            covariates[c.name] = np.full(len(ids), float(c.reference))
            assumed.append(c.name)
            continue
        if c.name not in available:
            raise FitDataError(
                f"model {model.name!r} needs covariate {c.name!r} [{c.unit}], which the cohort lacks "
                f"(it has {sorted(available)})"
            )
        values = available[c.name]
        bad = [ids[s] for s in np.nonzero(~np.isfinite(values))[0]]
        if bad:
            raise FitDataError(f"covariate {c.name!r} is missing or not finite for subjects {bad[:10]}")
        covariates[c.name] = values
    timeline = build_timeline(
        model, padded, substeps=substeps, max_substep=max_substep, dtype=dtype, layout=layout, gradient=gradient
    )
    obs_observable = np.zeros(obs_mask.shape, np.int32)
    for s in range(len(ids)):
        obs_observable[s] = np.asarray(timeline.obs_observable)[s, np.asarray(timeline.obs_slot)[s]]
    observed = timeline.observed_observables()
    priors = build_priors(model, observed, process_noise=process_noise)
    if fix:
        priors = priors.fix(fix_values(model, fix))
    return FitData(
        model=model,
        priors=priors,
        timeline=timeline,
        subject_ids=ids,
        covariates=covariates,
        extra_covariates={k: v for k, v in available.items() if k not in covariates},
        obs_time=np.asarray(padded.obs_time, float),
        obs_value=np.asarray(padded.obs_value, float),
        obs_observable=obs_observable,
        obs_mask=obs_mask,
        cohort_name=str(getattr(cohort, "name", "") or ""),
        data_hash=cohort.data_hash() if hasattr(cohort, "data_hash") else padded_hash(padded),
        assumed_covariates=tuple(assumed),
    )


def fix_values(model: PhysiologyModel, fix: Mapping[str, float | None]) -> dict[str, float]:
    """``fix`` with each ``None`` replaced by the model's typical value of that parameter (names
    the model lacks are kept for :meth:`~medsim.inference.priors.PriorSpec.fix` to report)."""
    known = {p.name: p.typical for p in model.parameters}
    return {k: known[k] if v is None and k in known else v for k, v in fix.items()}


def check_fix(model: PhysiologyModel, fix: Mapping[str, float | None]) -> dict[str, float]:
    """:func:`fix_values`, checked against ``model`` before any data is read: raises
    :class:`~medsim.inference.priors.PriorError` as :meth:`~medsim.inference.priors.PriorSpec.fix`
    would in the fit."""
    values = fix_values(model, fix)
    build_priors(model, ()).fix(values)
    return values


def padded_hash(padded: Any) -> str:
    """sha256 of the padded arrays (for cohorts given without their own ``data_hash``)."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(str(i) for i in padded.ids).encode())
    for name in ("obs_time", "obs_value", "obs_cmt", "obs_mask", "dose_time", "dose_cmt", "dose_amount", "dose_rate"):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(getattr(padded, name), np.float64).tobytes())
    for name in sorted(padded.covariates):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(padded.covariates[name], np.float64).tobytes())
    return digest.hexdigest()
