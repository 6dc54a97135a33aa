"""Architecture and data description of the neural patient model, as a JSON-serialisable record.

The configuration is everything needed to rebuild the network before its weights are loaded:
which observables it decodes (with units and the normalisation learnt from the training data),
which dose compartments drive it (with units), which covariates condition it, the layer sizes,
the time scale of its inputs and the training window. It is stored next to the weights in every
checkpoint, so it never holds arrays or Python objects, only numbers and strings.

:func:`config_from_cohort` derives the data-dependent parts (normalising constants, dose scales,
time scale) from a training cohort, optionally taking names and units from a mechanistic model
(the *template*) so that a neural model of theophylline speaks of ``conc`` in mg/L like
``pk_oral_1cmt`` does and the same safety bounds apply to both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from medsim.models.neural.schema import check_calibration, typed_fields

Interpolation = Literal["linear", "hermite"]


#: Largest layer width or dimension a configuration may ask for (a 4096 x 4096 layer is 64 MB).
MAX_WIDTH = 4096


class NeuralConfigError(ValueError):
    """A neural-model configuration is invalid (the message names the field and what was expected)."""


@dataclass(frozen=True)
class ObservableSpec:
    """One decoded observable.

    Attributes
    ----------
    name, unit : str
        e.g. ``"conc"``, ``"mg/L"``.
    cmts : tuple of int
        Observation compartments (cohort ``CMT``) whose measurements are of this observable.
    positive : bool
        If True the decoder outputs ``exp(loc + scale * m)`` (a positive quantity, monitored in
        log coordinates); otherwise ``loc + scale * m``.
    loc, scale : float
        Normalisation of the link-scale value (log of the value when ``positive``), from the data.
    residual_add, residual_prop : float
        Initial values of the combined residual error, additive SD (in ``unit``) and proportional CV.
    """

    name: str
    unit: str
    cmts: tuple[int, ...]
    positive: bool = True
    loc: float = 0.0
    scale: float = 1.0
    residual_add: float = 0.1
    residual_prop: float = 0.1


@dataclass(frozen=True)
class DoseSpec:
    """One dosing compartment that drives the latent dynamics.

    Attributes
    ----------
    cmt : int
        Cohort ``CMT`` of the doses.
    unit : str
        Amount unit (rates are in ``unit`` per model time unit).
    amount_scale : float
        Typical amount (same unit), used to normalise the dose-filter input of the drift.
    time_constant : float
        Initial time constant (model time unit) of the compartment's dose filter (trained).
    """

    cmt: int
    unit: str
    amount_scale: float = 1.0
    time_constant: float = 1.0


@dataclass(frozen=True)
class CovariateSpec:
    """A time-constant covariate conditioning the encoder, with its standardisation."""

    name: str
    unit: str = ""
    mean: float = 0.0
    sd: float = 1.0


@dataclass(frozen=True)
class NeuralConfig:
    """Architecture, units and training window of a neural patient model.

    Attributes
    ----------
    name : str
        Model name used in provenance and reports.
    time_unit : str
        Unit of every time in the model (that of the training cohort).
    observables, doses, covariates : tuples of specs
    latent_dim : int
        Dimension of the latent SDE state ``z`` (dimensionless).
    embedding_dim : int
        Dimension of the static per-patient embedding ``e`` (a random effect: constant in time).
    hidden : int
        Width of the drift, diffusion and decoder networks.
    cde_hidden : int
        Width of the neural-CDE encoder state.
    context_dim : int
        Size of the context the approximate posterior drift reads (training only).
    weight_rank : int
        Dimension ``r`` of the Bayesian subspace of the drift's output-layer weights.
    weight_prior_scale : float
        Prior SD of a weight perturbation along each subspace direction (directions have unit
        Frobenius norm).
    time_scale : float
        Characteristic time (model time unit): networks see times divided by it and the drift
        is expressed per ``time_scale``.
    horizon : float
        Forecast window of a training example (model time unit).
    dt : float
        Euler-Maruyama sub-step used in training (model time unit).
    interpolation : {"linear", "hermite"}
        Control-path interpolation of the encoder.
    min_diffusion : float
        Floor of the latent diffusion (per sqrt(time_scale)); keeps the Girsanov ratio finite.
    calibration : mapping
        Held-out calibration numbers, filled by ``medsim.inference.neural.calibrate`` (empty until then).
    """

    name: str
    time_unit: str
    observables: tuple[ObservableSpec, ...]
    doses: tuple[DoseSpec, ...] = ()
    covariates: tuple[CovariateSpec, ...] = ()
    latent_dim: int = 6
    embedding_dim: int = 2
    hidden: int = 32
    cde_hidden: int = 16
    context_dim: int = 8
    weight_rank: int = 4
    weight_prior_scale: float = 0.5
    time_scale: float = 1.0
    horizon: float = 24.0
    dt: float = 0.25
    interpolation: Interpolation = "linear"
    min_diffusion: float = 1e-2
    calibration: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.observables:
            raise NeuralConfigError("neural config: observables must name at least one observable")
        names = [o.name for o in self.observables]
        if len(set(names)) != len(names):
            raise NeuralConfigError(f"neural config: observable names must be unique, got {names}")
        cmts = [c for o in self.observables for c in o.cmts]
        if len(set(cmts)) != len(cmts):
            raise NeuralConfigError(f"neural config: an observation CMT maps to two observables: {cmts}")
        dose_cmts = [d.cmt for d in self.doses]
        if len(set(dose_cmts)) != len(dose_cmts):
            raise NeuralConfigError(f"neural config: dose CMTs must be unique, got {dose_cmts}")
        for key in ("latent_dim", "hidden", "cde_hidden", "context_dim"):
            if getattr(self, key) < 1:
                raise NeuralConfigError(f"neural config: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("embedding_dim", "weight_rank"):
            if getattr(self, key) < 0:
                raise NeuralConfigError(f"neural config: {key} must be >= 0, got {getattr(self, key)}")
        for key in ("latent_dim", "hidden", "cde_hidden", "context_dim", "embedding_dim", "weight_rank"):
            if getattr(self, key) > MAX_WIDTH:
                # The network is allocated before its weights are read: a typo must not exhaust memory.
                raise NeuralConfigError(f"neural config: {key} must be at most {MAX_WIDTH}, got {getattr(self, key)}")
        for key in ("time_scale", "horizon", "dt", "weight_prior_scale", "min_diffusion"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise NeuralConfigError(f"neural config: {key} must be a positive number, got {value}")
        if self.dt > self.horizon:
            raise NeuralConfigError(f"neural config: dt ({self.dt}) must not exceed horizon ({self.horizon})")
        if self.interpolation not in ("linear", "hermite"):
            raise NeuralConfigError(
                f"neural config: interpolation must be 'linear' or 'hermite', got {self.interpolation!r}"
            )
        for o in self.observables:
            if not (o.scale > 0 and o.residual_add > 0 and o.residual_prop > 0):
                raise NeuralConfigError(
                    f"neural config: observable {o.name!r} needs scale, residual_add, residual_prop > 0"
                )
        for d in self.doses:
            if not (d.amount_scale > 0 and d.time_constant > 0):
                raise NeuralConfigError(f"neural config: dose CMT {d.cmt} needs amount_scale > 0 and time_constant > 0")
        for c in self.covariates:
            if not c.sd > 0:
                raise NeuralConfigError(f"neural config: covariate {c.name!r} needs sd > 0")

    # ------------------------------------------------------------------ derived sizes
    @property
    def n_filters(self) -> int:
        """Number of dose-filter inputs (one per dose compartment)."""
        return len(self.doses)

    @property
    def n_channels(self) -> int:
        """Channels of the encoder's control path: time, per observable (value, count), per dose CMT."""
        return 1 + 2 * len(self.observables) + len(self.doses)

    @property
    def n_steps(self) -> int:
        """Training sub-steps per forecast window."""
        return max(1, round(self.horizon / self.dt))

    def observable_of_cmt(self, cmt: int) -> int:
        """Index of the observable measured in compartment ``cmt`` (KeyError naming the valid ones)."""
        for i, o in enumerate(self.observables):
            if cmt in o.cmts:
                return i
        valid = {c: o.name for o in self.observables for c in o.cmts}
        raise KeyError(f"observation CMT {cmt} is not decoded by neural model {self.name!r}; it decodes {valid}")

    def dose_index(self, cmt: int) -> int:
        """Index of dose compartment ``cmt`` (KeyError naming the valid ones)."""
        for i, d in enumerate(self.doses):
            if d.cmt == cmt:
                return i
        raise KeyError(
            f"dose CMT {cmt} does not drive neural model {self.name!r}; it takes CMTs {[d.cmt for d in self.doses]}"
        )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["calibration"] = dict(self.calibration)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_calibration(self, calibration: Mapping[str, Any]) -> NeuralConfig:
        return replace(self, calibration=dict(calibration))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "neural config") -> NeuralConfig:
        """Rebuild from :meth:`to_dict` output.

        Raises
        ------
        NeuralConfigError
            Naming ``source`` and the field (``source.latent_dim``) that is missing, unexpected,
            of the wrong JSON type or out of range (see :mod:`medsim.models.neural.schema`).
        """
        nested = {"observables": ObservableSpec, "doses": DoseSpec, "covariates": CovariateSpec}
        values = typed_fields(cls, data, source, NeuralConfigError, nested)
        check_calibration(values.get("calibration", {}), f"{source}.calibration", NeuralConfigError)
        try:
            return cls(**values)
        except NeuralConfigError as err:
            raise NeuralConfigError(f"{source}: {str(err).removeprefix('neural config: ')}") from None


def config_from_cohort(
    cohort: Any,
    *,
    name: str = "neural",
    template: Any = None,
    horizon: float | None = None,
    **overrides: Any,
) -> NeuralConfig:
    """Derive a configuration from a training cohort.

    Parameters
    ----------
    cohort : medsim.data.Cohort
        Training subjects (observations, doses, covariates, units).
    name : str
        Model name.
    template : PhysiologyModel, optional
        Mechanistic model whose ``obs_targets``, observable units and bridge scales, dose units
        and residual-error defaults name the neural model's observables and doses. Without it,
        observables are named ``dv_cmt<k>`` in the cohort's ``DV`` unit.
    horizon : float, optional
        Training forecast window; default: the median span of a subject's records.
    **overrides
        Any other :class:`NeuralConfig` field (sizes, ``dt``, ``interpolation``...).

    Raises
    ------
    NeuralConfigError
        If the cohort has no observations, or an observed CMT is unknown to the template.
    """
    subjects = tuple(cohort.subjects)
    obs_cmt = np.concatenate([s.obs_cmt for s in subjects]) if subjects else np.zeros(0, np.int64)
    obs_value = np.concatenate([s.obs_value for s in subjects]) if subjects else np.zeros(0)
    if obs_value.size == 0:
        raise NeuralConfigError(f"cohort {getattr(cohort, 'name', '')!r} has no observations to train on")
    units = dict(getattr(cohort, "units", {}))
    time_unit = getattr(template, "time_unit", None) or units.get("TIME", "")
    # Group observation CMTs by the observable they measure.
    groups: dict[str, list[int]] = {}
    for cmt in sorted({int(c) for c in obs_cmt}):
        if template is not None:
            if cmt not in template.obs_targets:
                raise NeuralConfigError(
                    f"cohort observation CMT {cmt} is not observed by template model {template.name!r} "
                    f"(obs_targets {dict(template.obs_targets)})"
                )
            groups.setdefault(template.obs_targets[cmt], []).append(cmt)
        else:
            groups[f"dv_cmt{cmt}"] = [cmt]
    observables = []
    for obs_name, cmts in groups.items():
        values = obs_value[np.isin(obs_cmt, cmts)]
        positive = bool(np.all(values >= 0))
        unit = units.get("DV", "")
        add, prop = 0.05 * float(np.median(np.abs(values)) + 1e-6), 0.1
        if template is not None:
            spec = template.observable(obs_name)
            unit = spec.unit
            # A quantity the template monitors on the log scale is physically positive; negative
            # measurements of it are residual error, not a reason to drop the log link.
            positive = spec.bridge_scale == "log"
            err = template.residual.get(obs_name)
            if err is not None:
                add = err.add if err.add > 0 else add
                prop = err.prop if err.prop > 0 else prop
        if positive:
            # Normalise log values of the clearly positive measurements; values at or near zero
            # (pre-dose samples) are explained by the additive residual error, not the link.
            floor = max(float(np.quantile(values, 0.1)), 1e-3 * float(values.max()) + 1e-12)
            link = np.log(np.maximum(values, floor))
        else:
            link = values
        observables.append(
            ObservableSpec(
                name=obs_name,
                unit=unit,
                cmts=tuple(cmts),
                positive=positive,
                loc=float(np.mean(link)),
                scale=float(max(np.std(link), 1e-3)),
                residual_add=float(add),
                residual_prop=float(prop),
            )
        )
    spans = []
    for s in subjects:
        times = np.concatenate([s.obs_time, s.dose_time])
        if times.size:
            spans.append(float(times.max() - times.min()))
    span = float(np.median(spans)) if spans else 1.0
    span = span if span > 0 else 1.0
    # Filters start an eighth of a record's span slow; training moves them.
    time_constant = span / 8.0
    doses = []
    dose_cmt = np.concatenate([s.dose_cmt for s in subjects]) if subjects else np.zeros(0, np.int64)
    dose_amount = np.concatenate([s.dose_amount for s in subjects]) if subjects else np.zeros(0)
    for cmt in sorted({int(c) for c in dose_cmt}):
        unit = units.get("AMT", "")
        if template is not None and cmt in template.dose_units:
            unit = template.dose_units[cmt]
        amounts = dose_amount[dose_cmt == cmt]
        doses.append(DoseSpec(cmt=cmt, unit=unit, amount_scale=float(np.median(amounts)), time_constant=time_constant))
    covariates = []
    for cov in getattr(cohort, "covariate_names", ()):
        values = np.array([s.covariates[cov] for s in subjects], dtype=np.float64)
        covariates.append(CovariateSpec(cov, units.get(cov, ""), float(values.mean()), float(max(values.std(), 1e-6))))
    window = float(horizon) if horizon is not None else span
    settings: dict[str, Any] = {
        "time_scale": span / 4.0,
        "horizon": window,
        "dt": window / 64.0,
    }
    settings.update(overrides)
    return NeuralConfig(
        name=name,
        time_unit=time_unit,
        observables=tuple(observables),
        doses=tuple(doses),
        covariates=tuple(covariates),
        **settings,
    )
