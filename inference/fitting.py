"""``medsim.inference.fit``: cohort + model -> Posterior, with diagnostics and provenance."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from medsim.inference.assemble import build_inference_data
from medsim.inference.backends import BACKENDS, Progress, run_nuts
from medsim.inference.backends.numpyro_svi import GUIDES, max_coarse_steps, parse_starts, run_svi_starts
from medsim.inference.cohort_support import SUPPORT_ATTR, cohort_support
from medsim.inference.diagnostics import diagnose_posterior_attrs
from medsim.inference.hierarchical import data_information, with_centering
from medsim.inference.likelihood.filtering import filter_layout
from medsim.inference.likelihood.timeline import build_timeline
from medsim.inference.noise_profile import noise_profile
from medsim.inference.posterior import FORMAT_VERSION, Posterior, json_attr
from medsim.inference.priors import PriorError
from medsim.inference.problem import FitData, prepare
from medsim.inference.provenance import package_versions, utc_timestamp
from medsim.models.base import PhysiologyModel


class FitConfigError(ValueError):
    """Fit options that are invalid or not available (names the option and the allowed values)."""


def fit(
    cohort: Any,
    model: PhysiologyModel,
    *,
    backend: Literal["numpyro", "pymc"] = "numpyro",
    method: Literal["nuts", "svi"] = "nuts",
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    seed: int = 0,
    process_noise: bool = True,
    progress: Progress | None = None,
    chain_method: Literal["auto", "vectorized", "parallel", "sequential"] = "auto",
    svi_steps: int = 5000,
    target_accept: float = 0.9,
    substeps: int = 4,
    max_substep: float | None = None,
    centered: Sequence[str] | Mapping[str, float] | Literal["auto", "partial"] = "auto",
    guide: Literal["mvn", "lowrank"] = "mvn",
    svi_particles: int = 1,
    svi_learning_rate: float = 0.01,
    svi_start: str | Sequence[str] = "prior",
    svi_coarse_steps: int = 0,
    svi_coarse_substeps: int | None = None,
    fix: Mapping[str, float | None] | Sequence[str] | None = None,
) -> Posterior:
    """Fit the hierarchical SDE model ``model`` to ``cohort``.

    Parameters
    ----------
    cohort : medsim.data.Cohort or PaddedCohort
    model : PhysiologyModel
    backend : {"numpyro", "pymc"}
        ``"pymc"`` runs PyMC's NUTS on the same prior and likelihood (method ``"nuts"`` only).
    method : {"nuts", "svi"}
        NUTS (exact up to Monte Carlo error, with diagnostics) or SVI (fast, approximate).
    chains, draws, warmup : int
        NUTS chains, kept draws per chain and warmup iterations per chain. SVI returns one
        "chain" of ``draws`` draws from the fitted guide and ignores ``chains``/``warmup``.
    seed : int
        Same seed, same draws.
    process_noise : bool
        False fits the ODE limit (process-noise scales fixed at 0).
    progress : callable(done, total), optional
        Progress callback (sampler iterations summed over chains, or SVI steps).
    chain_method : {"auto", "vectorized", "parallel", "sequential"}
        How numpyro's NUTS runs its chains (see :mod:`medsim.inference.backends.numpyro_nuts`); ``"auto"`` uses a
        device per chain when JAX has them, else runs the chains one after the other.
    svi_steps : int
        Optimisation steps of SVI.
    guide : {"mvn", "lowrank"}
        SVI's guide: full-covariance or low-rank multivariate normal
        (:mod:`medsim.inference.backends.numpyro_svi`).
    svi_particles : int
        Monte Carlo draws per ELBO gradient.
    svi_learning_rate : float
        Adam's first step size (it decays tenfold over the run).
    svi_start : "prior", "ode", or several of them (a sequence or "prior,ode")
        Where SVI's guide starts: the prior medians, or the median of a first SVI fit of the ODE
        limit (process-noise scales at 0; the random effects then carry the differences between
        subjects). Several: each is fitted, the highest ELBO kept, and the diagnostics flag
        optima of equal ELBO that disagree (:func:`medsim.inference.svi_diagnostics.start_checks`);
        an SDE fit whose slow disturbances can stand in for between-subject variability
        (``docs/fitting.md``) should be run from both. Recorded in the posterior (``svi_start``,
        ``svi_starts``).
    svi_coarse_steps : int
        The first ``svi_coarse_steps`` of the ``svi_steps`` run on the cohort prepared with
        ``svi_coarse_substeps`` filter steps per interval (fewer than ``substeps``: a cheaper
        gradient); the rest, and the reported ELBO, checks and draws, on the fit's own filter
        (:mod:`medsim.inference.backends.numpyro_svi`, "Coarse first steps"). 0: none. Recorded in
        the posterior (``svi_coarse_steps``, ``svi_coarse_substeps``).
    svi_coarse_substeps : int, optional
        Default ``substeps // 2``.
    target_accept : float
        NUTS step-size adaptation target. 0.9: with the scaled random-effect coordinates and the
        signed process-noise scale the theophylline SDE fit has no funnel left to need smaller
        steps (every check passed at 5 of 5 seeds, ``docs/fitting.md``); raise it towards 0.99
        when a fit reports divergences.
    substeps, max_substep
        Filter discretisation (see :func:`medsim.inference.likelihood.build_timeline`).
    centered : "auto", "scaled", "rule", "partial", "none", mapping parameter -> weight, or sequence of str
        The random effects' sampler coordinates (the prior is the same whatever they are):
        ``"auto"`` is, for NUTS, the scaled coordinate of each, centred where the subjects' own
        data determine it and non-centred as its BSV goes to 0 (:mod:`medsim.inference.priors`), and for
        SVI the non-centred one (in the scaled coordinates SVI collapsed the BSV SDs of the
        best-informed effects to 0 on glucose cohorts; ``docs/fitting.md``, "SVI"); ``"scaled"``
        is the scaled coordinate for either method;
        ``"rule"`` centres fully those that the data determine better than the prior does
        (:func:`medsim.inference.hierarchical.choose_centering`); ``"partial"`` gives each a weight in
        [0, 1] instead (partially non-centred); a mapping sets the weights; a sequence names the
        fully centred effects (``()`` or ``"none"``: all non-centred). Recorded in the
        posterior's ``priors``.
    fix : mapping structural parameter -> value (None: the model's typical value), or names
        Structural parameters held fixed, NONMEM's ``FIX``: no typical-value site and no
        between-subject variability (:meth:`~medsim.inference.priors.PriorSpec.fix`). Recorded in
        the posterior's ``priors`` (``fixed``). For parameters the data cannot inform (they would
        trade off against those they do), at a literature value.

    Returns
    -------
    Posterior
        Diagnostics at fit time are stored in its attributes (``diagnostics``,
        ``diagnostics_ok``); a failing fit is returned, flagged, not raised.

    Raises
    ------
    FitConfigError
        Unknown or unavailable backend/method, or non-positive sizes.
    FitDataError, TimelineError
        A cohort the model cannot be fitted to.
    """
    if backend not in BACKENDS:
        raise FitConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if method not in BACKENDS[backend]:
        raise FitConfigError(f"backend {backend!r} has no method {method!r}; choose one of {BACKENDS[backend]}")
    if draws < 1 or (method == "nuts" and (chains < 1 or warmup < 0)):
        raise FitConfigError(f"need chains >= 1, draws >= 1 and warmup >= 0; got {chains}, {draws}, {warmup}")
    if method == "svi" and (svi_steps < 1 or svi_particles < 1 or guide not in GUIDES):
        raise FitConfigError(
            f"need svi_steps >= 1, svi_particles >= 1 and guide in {GUIDES}; "
            f"got {svi_steps}, {svi_particles}, {guide!r}"
        )
    starts = _starts(svi_start)
    if starts != ("prior",) and method != "svi":
        raise FitConfigError(f"svi_start {','.join(starts)!r} applies to method 'svi', not {method!r}")
    if "ode" in starts and not process_noise:
        raise FitConfigError("svi_start 'ode' starts an SDE fit at its ODE limit; this fit is the ODE limit")
    coarse_substeps = check_svi_coarse(method, svi_steps, substeps, svi_coarse_steps, svi_coarse_substeps)
    if method == "svi" and isinstance(centered, str) and centered.strip() in ("auto", ""):
        centered = "none"  # SVI's coordinates (docstring)
    try:
        data, information = prepare_fit(
            cohort,
            model,
            process_noise=process_noise,
            centered=centered,
            metric=backend == "numpyro" and method == "nuts",
            substeps=substeps,
            max_substep=max_substep,
            fix=_fix_map(fix),
        )
    except PriorError as err:
        raise FitConfigError(str(err)) from None
    if method == "svi":
        data = dataclasses.replace(data, priors=data.priors.with_log_noise())
    if backend == "pymc":
        try:
            from medsim.inference.backends.pymc_backend import run_pymc
        except ImportError as err:
            raise FitConfigError(f"backend 'pymc' is not available in this installation ({err})") from None
        out = run_pymc(
            data, chains=chains, draws=draws, warmup=warmup, seed=seed, target_accept=target_accept, progress=progress
        )
    elif method == "nuts":
        out = run_nuts(
            data,
            chains=chains,
            draws=draws,
            warmup=warmup,
            seed=seed,
            chain_method=chain_method,
            target_accept=target_accept,
            information=information,
            progress=progress,
        )
    else:
        coarse = None
        if svi_coarse_steps:  # the same cohort and priors on a filter with fewer steps per interval
            timeline = data.timeline
            coarse = dataclasses.replace(
                data,
                timeline=build_timeline(
                    model,
                    cohort.padded() if hasattr(cohort, "padded") else cohort,
                    substeps=coarse_substeps,
                    max_substep=max_substep,
                    dtype=timeline.time.dtype,
                    layout=timeline.layout,
                    gradient=timeline.gradient,
                ),
            )
        out = run_svi_starts(
            data,
            starts,
            draws=draws,
            steps=svi_steps,
            seed=seed,
            progress=progress,
            guide=guide,
            particles=svi_particles,
            learning_rate=svi_learning_rate,
            coarse=coarse,
            coarse_steps=svi_coarse_steps,
        )
    stored_apart = ("elbo_trace", "spread_check", "median", "sites", "starts", "coarse_offset")
    info = {k: v for k, v in out.info.items() if k not in stored_apart}
    attrs = provenance_attrs(data, backend=backend, method=method, seed=seed, info=info)
    attrs.update(
        chains=chains if method == "nuts" else 1,
        draws=draws,
        warmup=warmup if method == "nuts" else 0,
        wall_time_s=float(out.wall_time_s),
    )
    attrs[SUPPORT_ATTR] = json_attr(cohort_support(cohort, model))
    if data.assumed_covariates:  # optional covariates the cohort lacks, at the model's reference value
        attrs["assumed_covariates"] = json_attr({n: float(data.covariates[n][0]) for n in data.assumed_covariates})
    if max_substep is not None:  # a refit (the held-out gate's) must use the same filter step
        attrs["max_substep"] = float(max_substep)
    if method == "svi":
        attrs["elbo"] = float(out.info["elbo"])
        attrs["svi_steps"] = int(svi_steps)
        attrs["elbo_trace"] = json_attr(  # a rejected step (not finite) as null: the file stays strict JSON
            [round(float(v), 2) if np.isfinite(v) else None for v in out.info["elbo_trace"]]
        )
        attrs["noise_profile"] = json_attr(noise_profile(data, out.samples))
        attrs["spread_check"] = json_attr(out.info["spread_check"])
        attrs["svi_start"] = ",".join(starts)
        if svi_coarse_steps:
            attrs["svi_coarse_steps"] = int(svi_coarse_steps)
            attrs["svi_coarse_substeps"] = int(coarse_substeps)
            attrs["svi_coarse_offset"] = json_attr(out.info["coarse_offset"])
        if "starts" in out.info:  # every start's ELBO and population sites, the kept one first
            attrs["svi_starts"] = json_attr(out.info["starts"])
    idata = build_inference_data(data, out.samples, out.sample_stats or None, attrs)
    diagnostics = diagnose_posterior_attrs(idata, method)
    idata.posterior.attrs["diagnostics"] = json_attr(diagnostics.to_dict())
    idata.posterior.attrs["diagnostics_ok"] = int(diagnostics.ok)
    return Posterior(idata=idata, model=model)


def prepare_fit(
    cohort: Any,
    model: PhysiologyModel,
    *,
    process_noise: bool = True,
    centered: Sequence[str] | Mapping[str, float] | str = "auto",
    metric: bool = True,
    substeps: int = 4,
    max_substep: float | None = None,
    fix: Mapping[str, float | None] | None = None,
) -> tuple[FitData, dict[str, np.ndarray] | None]:
    """What :func:`fit` samples: the prepared cohort with its random effects' coordinates set
    (``centered`` as in :func:`fit`), and each subject's information about its random effects
    (:func:`medsim.inference.hierarchical.data_information`), which sets the ``"auto"``, ``"rule"`` and
    ``"partial"`` coordinates and, with ``metric``, numpyro's first mass matrix (pass it to
    :func:`~medsim.inference.backends.run_nuts`); one compiled gradient serves both. ``None`` when
    neither needs it.

    Raises
    ------
    PriorError
        ``centered`` names something that is not a random effect, or a weight outside [0, 1];
        ``fix`` names something that cannot be fixed (:meth:`~medsim.inference.priors.PriorSpec.fix`).
    FitDataError, TimelineError
        A cohort the model cannot be fitted to.
    """
    data = prepare(
        cohort, model, process_noise=process_noise, substeps=substeps, max_substep=max_substep, fix=fix
    )
    rule = isinstance(centered, str) and centered.strip() in ("auto", "scaled", "rule", "partial", "")
    information = data_information(data) if rule or metric else None
    return with_centering(data, centered, information=information), information


def _starts(svi_start: str | Sequence[str]) -> tuple[str, ...]:
    """``fit(svi_start=...)`` as a tuple of distinct names from :data:`STARTS`."""
    try:
        return parse_starts(svi_start)
    except ValueError as err:
        raise FitConfigError(f"svi_start: {err}") from None


def check_svi_coarse(
    method: str, steps: int, substeps: int, coarse_steps: int, coarse_substeps: int | None
) -> int | None:
    """``fit``'s coarse first steps checked before any work: their filter's steps per interval."""
    if not coarse_steps and coarse_substeps is None:
        return None
    if method != "svi":
        raise FitConfigError(f"svi_coarse_steps and svi_coarse_substeps apply to method 'svi', not {method!r}")
    most = max_coarse_steps(steps)
    if not 0 < coarse_steps <= most:
        raise FitConfigError(
            f"svi_coarse_steps must be in [1, {most}] for svi_steps {steps} (at least {steps - most} steps end the "
            f"fit on its own filter); got {coarse_steps}"
        )
    if substeps < 2:
        raise FitConfigError(f"substeps {substeps}: a filter with one step per interval has no coarser one")
    chosen = substeps // 2 if coarse_substeps is None else int(coarse_substeps)
    if not 1 <= chosen < substeps:
        raise FitConfigError(
            f"svi_coarse_substeps must be in [1, {substeps - 1}] (fewer filter steps per interval than substeps "
            f"{substeps}); got {chosen}"
        )
    return chosen


def _fix_map(fix: Mapping[str, float | None] | Sequence[str] | None) -> dict[str, float | None]:
    """``fit(fix=...)`` as a mapping (a sequence of names: each at the model's typical value)."""
    if fix is None:
        return {}
    if isinstance(fix, str):
        raise PriorError(f"fix: expected a mapping or a sequence of names, got the string {fix!r}")
    if isinstance(fix, Mapping):
        return dict(fix)
    names = [str(n) for n in fix]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PriorError(f"fix names {twice} more than once")
    return dict.fromkeys(names)


def provenance_attrs(data: FitData, *, backend: str, method: str, seed: int, info: dict) -> dict[str, Any]:
    """The provenance attributes every posterior carries (see :mod:`medsim.inference.posterior`)."""
    return {
        "medsim_posterior": FORMAT_VERSION,
        "model_name": data.model.name,
        "model_version": str(data.model.version),
        "cohort_name": data.cohort_name,
        "data_hash": data.data_hash,
        "priors": data.priors.to_json(),
        "process_noise": int(data.priors.process_noise or not data.model.params_of_kind("process_noise")),
        "backend": backend,
        "method": method,
        "seed": int(seed),
        "sampler": json_attr(info),
        "filter": json_attr(
            {
                "substeps": data.timeline.substeps,
                "slots": data.timeline.n_slots,
                "layout": filter_layout(data.model, data.timeline, covariance=data.priors.process_noise),
                "dtype": str(np.dtype(data.timeline.time.dtype)),
            }
        ),
        "versions": json_attr(package_versions()),
        "created": utc_timestamp(),
    }
