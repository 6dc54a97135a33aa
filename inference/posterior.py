"""The fitted posterior: an ArviZ InferenceData plus the model it belongs to, saved as netCDF.

Provenance attributes of the ``posterior`` group (all strings or numbers, so netCDF can hold
them)::

    medsim_posterior   format version ("1"): marks the file as a medsim posterior
    model_name, model_version
    cohort_name, data_hash
    priors             PriorSpec as JSON (inference.priors)
    process_noise      1 (SDE) or 0 (ODE limit)
    backend, method    "numpyro", "nuts" | "svi"
    seed, chains, draws, warmup
    sampler            backend settings (JSON)
    diagnostics        Diagnostics at fit time (JSON); diagnostics_ok 1/0
    elbo               final ELBO (SVI only)
    elbo_trace         the ELBO at every optimisation step (JSON list, SVI only)
    noise_profile      process-noise posterior against its likelihood profile (JSON, SVI only)
    svi_coarse_steps, svi_coarse_substeps, svi_coarse_offset
                       SVI's first steps on a coarser filter and their optimum's estimated
                       offset (JSON); absent when the fit took none
    wall_time_s        sampling wall time, seconds
    created            UTC timestamp (ISO 8601)
    versions           package versions (JSON)
    cohort_support     observed ranges of the fitted cohort (JSON, inference.cohort_support);
                       absent in files written before it was recorded: support then unknown
    calibration        held-out calibration gate (JSON of medsim.models.gate.CalibrationGate),
                       written by ``medsim check --heldout``; absent: never checked

Files are written to a temporary name in the destination folder and renamed (atomic on POSIX);
they are read without pickle (netCDF through h5netcdf).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsim.inference.assemble import FILTERED_COV, FILTERED_PREFIX, FILTERED_TIME, import_arviz
from medsim.inference.cohort_support import SUPPORT_ATTR, support_ranges
from medsim.inference.diagnostics import Diagnostics, diagnose_posterior_attrs
from medsim.inference.priors import PriorError, PriorSpec
from medsim.io import atomic_write
from medsim.models.base import PhysiologyModel, residual_key
from medsim.models.gate import CalibrationGate
from medsim.population.draws import PosteriorDraws

FORMAT_VERSION = "1"
CALIBRATION_ATTR = "calibration"
REQUIRED_GROUPS = ("posterior", "log_likelihood", "observed_data", "constant_data")
REQUIRED_ATTRS = ("medsim_posterior", "model_name", "model_version", "priors", "method", "backend", "data_hash")


class PosteriorFormatError(ValueError):
    """A file or object that is not a valid medsim posterior (the message says what is wrong)."""


@dataclass(frozen=True)
class Posterior:
    """A fitted posterior.

    Attributes
    ----------
    idata : arviz.InferenceData
        Groups as described in :mod:`medsim.inference.assemble`; provenance in ``idata.posterior.attrs``.
    model : PhysiologyModel
        The model that was fitted.
    """

    idata: Any
    model: PhysiologyModel

    # ------------------------------------------------------------------ provenance
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.idata.posterior.attrs)

    @property
    def priors(self) -> PriorSpec:
        return PriorSpec.from_json(self.attrs["priors"])

    @property
    def method(self) -> str:
        return str(self.attrs["method"])

    @property
    def assumed_covariates(self) -> dict[str, float]:
        """Optional covariates the fitted cohort lacked, with the reference value every subject took."""
        return json.loads(self.attrs.get("assumed_covariates", "{}"))

    @property
    def subject_ids(self) -> tuple[str, ...]:
        return tuple(str(s) for s in self.idata.posterior["subject"].values)

    @property
    def n_draws(self) -> int:
        return int(self.idata.posterior.sizes["chain"] * self.idata.posterior.sizes["draw"])

    # ------------------------------------------------------------------ cohort support
    def support_record(self) -> dict[str, Any] | None:
        """The fitted cohort's observed ranges (:func:`medsim.inference.cohort_support.cohort_support`),
        or None for a file that does not record them."""
        raw = self.attrs.get(SUPPORT_ATTR)
        if raw is None:
            return None
        try:
            record = json.loads(str(raw))
            support_ranges(record)
        except (ValueError, TypeError, AttributeError) as err:
            raise PosteriorFormatError(f"posterior attribute {SUPPORT_ATTR!r} is not a valid record ({err})") from None
        return record

    def support(self) -> dict[str, tuple[float, float]] | None:
        """Ranges of observables and treatments the fitted cohort covered, for the rollout's
        out-of-support check; None (unknown) when the file does not record them."""
        record = self.support_record()
        return None if record is None else support_ranges(record)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> Diagnostics:
        """Convergence diagnostics (recomputed from the draws; see :mod:`medsim.inference.diagnostics`)."""
        return diagnose_posterior_attrs(self.idata, self.method)

    # ------------------------------------------------------------------ calibration gate
    def calibration(self) -> CalibrationGate | None:
        """The stored held-out calibration gate (None when the model was never checked).

        Raises
        ------
        PosteriorFormatError
            If the ``calibration`` attribute is not a gate record.
        """
        text = self.attrs.get(CALIBRATION_ATTR)
        if text is None:
            return None
        try:
            return CalibrationGate.from_json(str(text))
        except ValueError as err:
            raise PosteriorFormatError(f"attribute {CALIBRATION_ATTR!r}: {err}") from None

    def with_calibration(self, gate: CalibrationGate) -> Posterior:
        """A copy of this posterior whose ``calibration`` attribute holds ``gate``."""
        idata = self.idata.copy()
        idata.posterior.attrs = {**dict(self.idata.posterior.attrs), CALIBRATION_ATTR: gate.to_json()}
        return Posterior(idata=idata, model=self.model)

    # ------------------------------------------------------------------ conversion
    def draws(self) -> PosteriorDraws:
        """Flatten chains into :class:`medsim.population.PosteriorDraws` for the population sampler.

        Process-noise scales fixed at 0 (ODE-limit fits) appear as zero draws; residual-error
        parameters of observables the cohort did not measure take the model's defaults.
        """
        post = self.idata.posterior
        priors = self.priors
        n = self.n_draws

        def flat(name: str) -> np.ndarray:
            values = np.asarray(post[name].values, float)
            return values.reshape(n, *values.shape[2:])

        population = {}
        for p in self.model.parameters:
            if p.name in post.data_vars:
                population[p.name] = flat(p.name)
            elif p.name in priors.fixed:
                population[p.name] = np.full(n, priors.fixed[p.name])
            else:
                raise PosteriorFormatError(f"posterior has no draws of parameter {p.name!r}")
        omega = {p: flat(f"omega_{p}") for p in priors.random_effects}
        eta = {p: flat(f"eta_{p}") for p in priors.random_effects}
        residual = {}
        for o, spec in self.model.residual.items():
            for kind, default in (("add", spec.add), ("prop", spec.prop)):
                needed = spec.kind == "combined" or spec.kind == {"add": "additive", "prop": "proportional"}[kind]
                if not needed:
                    continue
                site = f"res_{kind}_{o}"
                residual[residual_key(o, kind)] = flat(site) if site in post.data_vars else np.full(n, default)
        const = self.idata.constant_data
        covariates = {
            c.name: np.asarray(const[f"covariate_{c.name}"].values, float)
            for c in self.model.covariates
            if f"covariate_{c.name}" in const.data_vars
        }
        keys = ("model_name", "model_version", "cohort_name", "data_hash", "seed", "backend", "method", "created")
        provenance = {k: self.attrs[k] for k in keys if k in self.attrs}
        provenance["diagnostics_ok"] = bool(int(self.attrs.get("diagnostics_ok", 1)))
        state, state_cov, state_time = {}, None, None
        names = self.model.state_names
        if FILTERED_COV in post.data_vars and FILTERED_TIME in const.data_vars:
            # files written before the filtered state was stored have none: twins then start at time 0
            state = {s: flat(f"{FILTERED_PREFIX}{s}") for s in names}
            state_cov = flat(FILTERED_COV)
            state_time = np.asarray(const[FILTERED_TIME].values, float)
        return PosteriorDraws(
            model=self.model,
            population=population,
            omega=omega,
            eta=eta,
            residual=residual,
            subject_ids=self.subject_ids,
            covariates=covariates,
            provenance=provenance,
            state=state,
            state_cov=state_cov,
            state_time=state_time,
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the posterior to ``path`` (netCDF) atomically; returns the path."""
        return atomic_write(path, lambda tmp: self.idata.to_netcdf(str(tmp), engine="h5netcdf"))

    @classmethod
    def load(cls, path: str | os.PathLike, model: PhysiologyModel | None = None) -> Posterior:
        """Read and validate a posterior file.

        Parameters
        ----------
        path : path-like
        model : PhysiologyModel, optional
            The model to attach; must match the file's model name and version. Default: the
            registered model of that name.

        Raises
        ------
        FileNotFoundError
        PosteriorFormatError
            Not a netCDF InferenceData file, not a medsim posterior, a missing group, attribute
            or variable, or a model that does not match.
        """
        path = Path(path)
        if path.is_dir():
            raise PosteriorFormatError(f"{path}: is a folder; expected a posterior file (netCDF) written by medsim fit")
        if not path.is_file():
            raise FileNotFoundError(f"posterior file {str(path)!r} does not exist")
        az = import_arviz()
        try:
            idata = az.from_netcdf(path, engine="h5netcdf")
            for group in idata.groups():
                getattr(idata, group).load()
        except Exception as err:  # h5py/xarray raise many types for a non-netCDF file
            raise PosteriorFormatError(
                f"{path}: not a netCDF InferenceData file ({type(err).__name__}: {err})"
            ) from None
        return cls.from_inference_data(idata, model, source=str(path))

    @classmethod
    def from_inference_data(cls, idata: Any, model: PhysiologyModel | None = None, *, source: str = "") -> Posterior:
        """Validate ``idata`` as a medsim posterior and wrap it (see :meth:`load` for the checks)."""
        where = f"{source}: " if source else ""
        groups = set(idata.groups())
        if "posterior" not in groups:
            raise PosteriorFormatError(
                f"{where}not a medsim posterior: no 'posterior' group (groups: {sorted(groups)})"
            )
        attrs = dict(idata.posterior.attrs)
        if "medsim_posterior" not in attrs:
            raise PosteriorFormatError(f"{where}not a medsim posterior: attribute 'medsim_posterior' is missing")
        if str(attrs["medsim_posterior"]) != FORMAT_VERSION:
            raise PosteriorFormatError(
                f"{where}posterior format version {attrs['medsim_posterior']!r} is not supported (expected "
                f"{FORMAT_VERSION!r})"
            )
        missing = [a for a in REQUIRED_ATTRS if a not in attrs]
        if missing:
            raise PosteriorFormatError(f"{where}posterior attributes missing: {missing}")
        missing_groups = [g for g in REQUIRED_GROUPS if g not in groups]
        if attrs["method"] == "nuts" and "sample_stats" not in groups:
            missing_groups.append("sample_stats")
        if missing_groups:
            raise PosteriorFormatError(f"{where}posterior groups missing: {missing_groups}")
        name, version = str(attrs["model_name"]), str(attrs["model_version"])
        if model is None:
            import medsim.models as registry

            try:
                model = registry.get(name)
            except registry.UnknownModelError:
                raise PosteriorFormatError(
                    f"{where}fitted with model {name!r}, which is not registered (registered: "
                    f"{', '.join(registry.available())}); pass the model explicitly"
                ) from None
        if (model.name, str(model.version)) != (name, version):
            raise PosteriorFormatError(
                f"{where}posterior is for model {name!r} version {version}, not {model.name!r} version {model.version}"
            )
        try:
            priors = PriorSpec.from_json(attrs["priors"])
        except PriorError as err:
            raise PosteriorFormatError(f"{where}attribute 'priors': {err}") from None
        needed = [s.site for s in priors.sites] + [f"eta_{p}" for p in priors.random_effects]
        absent = [v for v in needed if v not in idata.posterior.data_vars]
        if absent:
            raise PosteriorFormatError(f"{where}posterior variables missing: {absent}")
        if "subject" not in idata.posterior.coords:
            raise PosteriorFormatError(f"{where}posterior has no 'subject' coordinate")
        return cls(idata=idata, model=model)


def json_attr(value: Any) -> str:
    """Serialise a provenance value to a JSON string attribute."""
    return json.dumps(value, sort_keys=True, default=str)
