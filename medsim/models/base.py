"""The physiology-model contract shared by the simulator, inference and policies.

A model is an immutable description plus pure JAX functions. States, parameters and
observables are *named*; every function takes and returns mappings ``{name: array}`` so model
files read like the equations they cite and never index by position. All functions are
written elementwise, so the same code runs on scalars (inside ``vmap``) or on whole batches.

Time is in the model's ``time_unit``; amounts, rates and concentrations in the units declared
on each :class:`State`, :class:`Parameter` and :class:`Observable`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray
Values = Mapping[str, Array]

ParameterKind = Literal["structural", "covariate_effect", "process_noise"]
ResidualKind = Literal["additive", "proportional", "combined"]


@dataclass(frozen=True)
class State:
    """A latent state variable.

    Attributes
    ----------
    name, unit, description
        ``name`` is a Python identifier used as the key in state mappings.
    physical_range : (low, high)
        Values the state can physically take (``None``: unbounded on that side), e.g. ``(0.0,
        None)`` for an amount. A simulated state outside it is a numerical blow-up, not a
        result: the simulator stops with :class:`medsim.simulate.checks.RunawayStateError`.
    """

    name: str
    unit: str
    description: str = ""
    physical_range: tuple[float | None, float | None] = (None, None)


@dataclass(frozen=True)
class Parameter:
    """A model parameter with its population prior.

    ``structural`` parameters are positive and individual: subject value =
    ``typical * exp(eta) * covariate effect`` with ``eta ~ Normal(0, bsv)`` (log-normal
    between-subject variability; ``bsv`` is the SD of ``eta``, roughly the CV). Their prior on the
    typical value is log-normal, centred on ``typical`` with SD ``prior_log_sd`` on the log scale.

    ``covariate_effect`` parameters are population-level and real-valued (prior
    ``Normal(typical, prior_sd)``).

    ``process_noise`` parameters are population-level, non-negative diffusion scales
    (prior ``HalfNormal(prior_sd)``); ``typical`` is the default used for simulation.
    """

    name: str
    unit: str
    typical: float
    kind: ParameterKind = "structural"
    bsv: float = 0.0
    prior_log_sd: float = 1.0
    prior_sd: float = 1.0
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind == "structural" and not self.typical > 0:
            raise ValueError(f"structural parameter {self.name!r} needs typical > 0, got {self.typical}")
        if self.bsv < 0 or self.prior_log_sd <= 0 or self.prior_sd <= 0:
            raise ValueError(f"parameter {self.name!r}: bsv must be >= 0 and prior scales > 0")


@dataclass(frozen=True)
class Observable:
    """A quantity computed from the states: measured, monitored for safety, or both.

    ``bridge_scale`` tells the simulator in which coordinates the monitored quantity moves like a
    Brownian motion with locally constant diffusion: ``"log"`` for quantities with proportional
    (multiplicative) noise such as concentrations, ``"linear"`` otherwise. The Brownian-bridge
    crossing probability is evaluated in those coordinates.
    """

    name: str
    unit: str
    description: str = ""
    bridge_scale: Literal["linear", "log"] = "linear"


def residual_key(observable: str, kind: Literal["add", "prop"]) -> str:
    """Name of a residual-error parameter in likelihood, draw and population mappings (``"conc_add"``)."""
    return f"{observable}_{kind}"


@dataclass(frozen=True)
class ResidualError:
    """Measurement (residual) error on an observable.

    ``additive``: sd = ``add``; ``proportional``: sd = ``prop * |f|``; ``combined``:
    sd = sqrt(add**2 + (prop * f)**2) (the NONMEM/nlmixr2 "combined2" form).
    """

    kind: ResidualKind = "additive"
    add: float = 0.0
    prop: float = 0.0
    add_unit: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("additive", "proportional", "combined"):
            raise ValueError(f"unknown residual error kind {self.kind!r}")
        for name, needed in (("add", ("additive", "combined")), ("prop", ("proportional", "combined"))):
            value = getattr(self, name)
            if self.kind in needed and not (math.isfinite(value) and value > 0):
                what = "not a number" if math.isnan(value) else "infinite" if math.isinf(value) else "not positive"
                raise ValueError(f"{self.kind} residual error needs {name} > 0, got {name} = {value} ({what})")

    def sd(self, prediction: Array, add: Array | float | None = None, prop: Array | float | None = None) -> Array:
        """Residual SD at ``prediction``; ``add``/``prop`` override the defaults (e.g. posterior draws)."""
        a = self.add if add is None else add
        p = self.prop if prop is None else prop
        if self.kind == "additive":
            return jnp.zeros_like(prediction) + a
        if self.kind == "proportional":
            return p * jnp.abs(prediction) + 1e-12
        return jnp.sqrt(a**2 + (p * prediction) ** 2)


@dataclass(frozen=True)
class Covariate:
    """A time-constant subject covariate the model uses.

    A cohort must give every covariate for every subject, unless it is ``optional``: a cohort
    without that column then fits every subject at ``reference``, and the fit says so (a cohort
    that has the column must give it for every subject).
    """

    name: str
    unit: str
    reference: float
    description: str = ""
    optional: bool = False


@dataclass(frozen=True)
class SafetyLimit:
    """A default safety bound of a model: ``observable >= value`` (``"lower"``) or ``<= value`` (``"upper"``).

    What ``medsim simulate`` monitors when the user names no bound; ``source`` says where the
    value comes from (a guideline, a label).
    """

    observable: str
    side: Literal["lower", "upper"]
    value: float
    source: str = ""

    def __post_init__(self) -> None:
        if self.side not in ("lower", "upper"):
            raise ValueError(f"SafetyLimit {self.observable!r}: side must be 'lower' or 'upper', got {self.side!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"SafetyLimit {self.observable!r}: value must be finite, got {self.value!r}")


@dataclass(frozen=True)
class TargetRange:
    """The efficacy range ``low <= observable <= high`` whose time-in-range reports show."""

    observable: str
    low: float
    high: float
    source: str = ""


@dataclass(frozen=True)
class PhysiologyModel(ABC):
    """Abstract physiology model: an SDE ``dx = f(t, x, theta, u) dt + g(t, x, theta) dW``.

    The diffusion is diagonal: each noisy state gets its own independent Brownian motion.
    Dosing: a bolus of ``amount`` into compartment ``cmt`` adds ``dose_scale[cmt] * amount`` to
    the state ``dose_targets[cmt]``; a zero-order infusion adds ``dose_scale[cmt] * rate`` to that
    state's time derivative.

    Subclasses are frozen dataclasses; override the abstract methods and the metadata fields.
    """

    name: str = ""
    version: str = "1"
    time_unit: str = "h"
    citation: str = ""
    description: str = ""
    states: tuple[State, ...] = ()
    parameters: tuple[Parameter, ...] = ()
    observables: tuple[Observable, ...] = ()
    covariates: tuple[Covariate, ...] = ()
    residual: Mapping[str, ResidualError] = field(default_factory=dict)
    dose_targets: Mapping[int, str] = field(default_factory=dict)
    dose_scale: Mapping[int, float] = field(default_factory=dict)
    dose_units: Mapping[int, str] = field(default_factory=dict)
    #: What a reader calls each dose compartment's input ("insulin", "carbohydrate"); reports
    #: name treatments by it, with the unit from ``dose_units`` (see :meth:`dose_label`).
    dose_labels: Mapping[int, str] = field(default_factory=dict)
    obs_targets: Mapping[int, str] = field(default_factory=dict)
    #: Defaults a model declares so that no command needs to know models by name: the safety
    #: bounds ``medsim simulate`` monitors, the efficacy range reports use, and the compartment
    #: announced disturbances (meals) enter (``None``: the model has none).
    safety_limits: tuple[SafetyLimit, ...] = ()
    target_range: TargetRange | None = None
    meal_cmt: int | None = None
    #: The observable (mg/dL) glucose controllers such as the built-in ``pid`` and
    #: ``basal_bolus`` policies measure when the user names none; ``None``: the model has no
    #: glucose. Glucose models declare the one their safety limits and target range are set on.
    glucose_observable: str | None = None
    #: Largest step (model time unit) of the likelihood filter's integrator when a fit names none
    #: (``medsim fit --max-substep``). ``None``: two over the drift's fastest rate at typical
    #: values (``medsim.inference.likelihood.default_max_substep``), which is conservative for
    #: models whose Jacobian at "one unit of every state" overstates their rates. A model that
    #: declares a step states the filter's error at it against a fine-step reference.
    filter_max_substep: float | None = None
    #: Step (model time unit) of the simulator behind medsim's predictive checks (held-out gate,
    #: VPC, fit report, twin forecasts) when a call names none. ``None``: ``0.02`` over the drift's
    #: fastest typical rate (``medsim.inference.checks.predictive.default_dt``), which, like the
    #: filter's default step, is far too fine for models whose Jacobian at "one unit of every
    #: state" overstates their rates. A model that declares a step states the simulator's error at
    #: it against a fine-step reference.
    predictive_dt: float | None = None

    # ------------------------------------------------------------------ metadata helpers
    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    @property
    def observable_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.observables)

    def params_of_kind(self, kind: ParameterKind) -> tuple[Parameter, ...]:
        return tuple(p for p in self.parameters if p.kind == kind)

    @property
    def structural(self) -> tuple[Parameter, ...]:
        return self.params_of_kind("structural")

    @property
    def noisy_states(self) -> tuple[str, ...]:
        """Names of the states that carry process noise (keys of :meth:`diffusion`)."""
        x = {s.name: jnp.ones(()) for s in self.states}
        theta = self.typical_parameters()
        return tuple(self.diffusion(0.0, x, theta).keys())

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(f"model {self.name!r} has no parameter {name!r}; it has {[p.name for p in self.parameters]}")

    def residual_values(self, n: int) -> dict[str, np.ndarray]:
        """The model's residual-error parameters for ``n`` patients, named by :func:`residual_key`."""
        out = {}
        for obs, err in self.residual.items():
            if err.kind in ("additive", "combined"):
                out[residual_key(obs, "add")] = np.full(n, err.add)
            if err.kind in ("proportional", "combined"):
                out[residual_key(obs, "prop")] = np.full(n, err.prop)
        return out

    def default_regimen(self, theta: Mapping, horizon: float) -> tuple[list[tuple[float, int, np.ndarray]], dict]:
        """The dosing regimen ``medsim simulate`` gives virtual patients when the user names none.

        Parameters
        ----------
        theta : mapping name -> (n,) array
            The patients' parameters and covariates (a regimen may depend on weight or basal rate).
        horizon : float
            In the model's time unit.

        Returns
        -------
        doses : list of (time, cmt, (n,) amounts)
        rates : dict cmt -> (n,) constant rate over the whole horizon (dose unit per time unit)

        The base model gives no doses; a model overrides this and documents its regimen.
        """
        return [], {}

    def observable(self, name: str) -> Observable:
        for o in self.observables:
            if o.name == name:
                return o
        raise KeyError(f"model {self.name!r} has no observable {name!r}; it has {list(self.observable_names)}")

    def typical_parameters(self) -> dict[str, Array]:
        """Population-typical values of every parameter (simulation defaults)."""
        return {p.name: jnp.asarray(p.typical, dtype=jnp.float32) for p in self.parameters}

    def reference_covariates(self) -> dict[str, Array]:
        return {c.name: jnp.asarray(c.reference, dtype=jnp.float32) for c in self.covariates}

    # ------------------------------------------------------------------ individual parameters
    def individual_parameters(self, population: Values, eta: Values, covariates: Values) -> dict[str, Array]:
        """Subject parameters from population values, random effects and covariates.

        Default: ``structural * exp(eta)`` (log-normal BSV); population-level parameters are
        passed through. Models with covariate effects override :meth:`covariate_effect`.

        Parameters
        ----------
        population : mapping name -> array
            Every parameter of the model (typical values / posterior draw).
        eta : mapping name -> array
            Random effects for the structural parameters with ``bsv > 0`` (missing = 0).
        covariates : mapping name -> array
            The model's covariates (missing ones take their reference value).
        """
        cov = {**self.reference_covariates(), **{k: jnp.asarray(v) for k, v in covariates.items()}}
        out = {k: jnp.asarray(v) for k, v in population.items()}
        for p in self.structural:
            e = eta.get(p.name)
            value = out[p.name] * self.covariate_effect(p.name, population, cov)
            out[p.name] = value if e is None else value * jnp.exp(e)
        return out

    def covariate_effect(self, parameter: str, population: Values, covariates: Values) -> Array:
        """Multiplicative covariate effect on structural ``parameter`` (default: none)."""
        return jnp.asarray(1.0)

    def titrated_covariates(self, theta: Values, donor_theta: Values) -> dict[str, Array]:
        """Covariates that are treatment settings titrated to the patient (default: none).

        A new virtual patient borrows its covariates from a fitted subject (the *donor*). Most
        covariates are traits (weight, age) and carry over unchanged; a few are therapy settings
        that a clinician tunes to the patient's physiology (a pump's basal rate). For those the
        model returns the value the new patient would be titrated to, given its own parameters
        ``theta`` and the donor's ``donor_theta`` (both dicts of arrays with the same shape, the
        donor's including its own covariates). Names returned here replace the borrowed values.
        """
        return {}

    # ------------------------------------------------------------------ dynamics
    @abstractmethod
    def initial_state(self, theta: Values) -> dict[str, Array]:
        """State at time 0 before any dose (e.g. empty compartments, basal glucose)."""

    @abstractmethod
    def drift(self, t: Array, x: Values, theta: Values, rate: Values) -> dict[str, Array]:
        """Time derivative of each state.

        ``rate`` maps state name -> input rate already converted to state units per time unit
        (infusions, basal insulin); states without input are absent.
        """

    @abstractmethod
    def diffusion(self, t: Array, x: Values, theta: Values) -> dict[str, Array]:
        """Diagonal diffusion ``g``: state name -> ``g_i(x)`` for each noisy state.

        Must vanish as the state approaches its physical boundary (e.g. proportional to the
        state) so that paths stay physical.
        """

    @abstractmethod
    def observe(self, x: Values, theta: Values) -> dict[str, Array]:
        """Observable name -> noise-free value."""

    def dose(self, x: Values, cmt: int, amount: Array) -> dict[str, Array]:
        """Apply a bolus ``amount`` (in ``dose_units[cmt]``) to compartment ``cmt``."""
        target = self.dose_targets[cmt]
        out = dict(x)
        out[target] = x[target] + self.dose_scale.get(cmt, 1.0) * amount
        return out

    def dose_label(self, cmt: int) -> str:
        """``"insulin (U)"``: the compartment's ``dose_labels`` name (else "dose into <state>") and unit."""
        name = self.dose_labels.get(cmt) or f"dose into {self.dose_targets.get(cmt, f'CMT {cmt}')}"
        unit = self.dose_units.get(cmt, "")
        return f"{name} ({unit})" if unit else name

    # ------------------------------------------------------------------ description
    def describe(self) -> dict:
        """JSON-serialisable description (for ``medsim models`` and provenance)."""
        return {
            "name": self.name,
            "version": self.version,
            "time_unit": self.time_unit,
            "citation": self.citation,
            "description": self.description,
            "states": [vars(s) for s in self.states],
            "parameters": [vars(p) for p in self.parameters],
            "observables": [vars(o) for o in self.observables],
            "covariates": [vars(c) for c in self.covariates],
            "residual": {k: vars(v) for k, v in self.residual.items()},
            "dose_targets": {str(k): v for k, v in self.dose_targets.items()},
            "dose_units": {str(k): v for k, v in self.dose_units.items()},
            "dose_labels": {str(k): v for k, v in self.dose_labels.items()},
            "obs_targets": {str(k): v for k, v in self.obs_targets.items()},
            "noisy_states": list(self.noisy_states),
        }


def log_normal_cv(omega: float) -> float:
    """Coefficient of variation of a log-normal with log-SD ``omega`` (sqrt(exp(omega^2) - 1))."""
    return math.sqrt(math.expm1(omega**2))
