"""The policy protocol: what a treatment policy sees and what it returns, for a batch of patients.

Continuous-time treatment is an option semi-MDP (MedGym, arXiv 2606.01028): at each interaction
a policy looks at each patient and returns an *option* — a treatment held until the next
interaction plus the time until that interaction. medsim policies act on whole batches: an
:class:`Observation` of ``n`` patients in, an :class:`Option` for ``n`` patients out, numpy arrays
at the boundary.

A policy is any object with

``name : str``
    Its spec (e.g. ``"tdm:target=10,every=12"``), recorded in results.
``init(n, *, seed) -> state``
    The memory for ``n`` patients (any pytree of arrays; ``None`` for memoryless policies).
``act(state, obs, *, rng) -> (state, option)``
    A pure step: returns the new state, never mutates the old one. ``rng`` is a seeded
    ``numpy.random.Generator`` for this call; its stream depends on how the population is cut
    into chunks. A stochastic policy that must give the same numbers for any chunk size, and
    common random numbers across policies, draws per-patient numbers from
    :func:`medsim.population.patient_uniform` indexed by ``obs.patient`` and ``obs.index``
    instead (as the built-in ``flip`` does).

Times are in the model's time unit (``obs.time_unit``), amounts in each compartment's dose unit
(``model.dose_units``), infusion rates in dose unit per time unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.simulate.types import Bound
from medsim.units import units_per_hour  # noqa: F401  (policies read their clock through it)


class PolicyError(ValueError):
    """A policy failed or returned something the rollout cannot use; the message names the policy and field."""


class MissingCovariateError(KeyError):
    """A policy needs a patient covariate the population does not have (e.g. ``BASAL`` for insulin dosing).

    Attributes
    ----------
    policy, covariate : str
    """

    def __init__(self, policy: str, covariate: str, unit: str = "") -> None:
        self.policy, self.covariate = policy, covariate
        super().__init__(f"{policy} needs the covariate {covariate}" + (f" ({unit})" if unit else ""))

    def __str__(self) -> str:  # a KeyError's str() would quote the message
        return str(self.args[0])


class PolicySpecError(ValueError):
    """A policy spec or user policy could not be turned into a policy; the message says why."""


class MissingObservableError(PolicySpecError):
    """A policy was given no observable to measure and the model declares none it could take
    (e.g. ``pid`` on a PK model, which has no glucose); the message names the policy, the model
    and its observables.

    Attributes
    ----------
    policy : str
    model : str or None
        ``None`` when the policy was built without a model.
    observables : tuple of str
    """

    def __init__(self, policy: str, what: str, model: PhysiologyModel | None = None) -> None:
        self.policy, self.model = policy, None if model is None else model.name
        self.observables = () if model is None else tuple(model.observable_names)
        if model is None:
            message = (
                f"{policy}: no {what} observable to measure: the policy was built without a model; pass "
                f"observable=NAME, or build it for the model ({policy} spec parsed with a PolicyContext "
                "that has the model, or policy.for_model(model))"
            )
        else:
            message = (
                f"{policy}: model {model.name!r} declares no {what} observable (its observables: "
                f"{', '.join(self.observables) or 'none'}); pass observable=NAME"
            )
        super().__init__(message)


@dataclass(frozen=True)
class Observation:
    """What a policy sees at one interaction, for ``n`` patients.

    Attributes
    ----------
    time : (n,) float
        Interaction time (model time unit).
    measured : mapping observable -> (n,) float
        The noisy measurement just taken (NaN where nothing was measured at this interaction).
    announced : mapping CMT -> (n,) float
        Disturbances announced at this time, e.g. meal carbohydrate (g) into the gut
        compartment; 0 where none.
    covariates : mapping name -> (n,) float
        The patients' covariates (e.g. ``WGT`` in kg, ``BASAL`` in U/h).
    active : (n,) bool
        Patients still before the horizon; options for the others are ignored.
    patient : (n,) int
        Global index of each patient in the virtual population (stable across chunks).
    index : (n,) int
        Interaction counter ``k`` of each patient (0 at time 0).
    subject : (n,) str
        Fitted subject a personalized patient twins, ``""`` for population patients.
    time_unit : str
        The model's time unit (``"h"``, ``"min"``).
    horizon : float
        End of the simulated period (model time unit).
    """

    time: np.ndarray
    measured: Mapping[str, np.ndarray]
    announced: Mapping[int, np.ndarray]
    covariates: Mapping[str, np.ndarray]
    active: np.ndarray
    patient: np.ndarray
    index: np.ndarray
    subject: np.ndarray
    time_unit: str
    horizon: float

    @property
    def n(self) -> int:
        return int(np.shape(self.time)[0])


@dataclass(frozen=True)
class Option:
    """A policy's decision for ``n`` patients.

    Attributes
    ----------
    interval : (n,) float
        Time until the next interaction (> 0; ``inf`` = not before the horizon).
    bolus : mapping CMT -> (n,) float
        Bolus amounts given now (dose unit of the compartment; >= 0).
    rate : mapping CMT -> (n,) float
        Zero-order infusion rates held until the next interaction (dose unit per time unit; >= 0).
    measure_next : (n,) bool, optional
        Take a measurement at the next interaction (default: always).
    """

    interval: np.ndarray
    bolus: Mapping[int, np.ndarray] = field(default_factory=dict)
    rate: Mapping[int, np.ndarray] = field(default_factory=dict)
    measure_next: np.ndarray | None = None

    def validated(self, n: int, model: PhysiologyModel | None, active: np.ndarray, policy: str) -> Option:
        """This option as float64/bool arrays of shape (n,), checked against ``model``.

        Parameters
        ----------
        n : int
            Number of patients.
        model : PhysiologyModel or None
            Dose compartments are checked against ``model.dose_targets``; ``None`` skips that check.
        active : (n,) bool
            Patients whose treatment counts (the others' values are ignored and set to 0).
        policy : str
            The policy's name, for messages.

        Raises
        ------
        PolicyError
            Naming the policy, the field and the first offending patient, or what was given where
            an array or a mapping was expected.
        """

        def arr(name: str, value: Any, dtype=np.float64) -> np.ndarray:
            kind = "numbers" if dtype is np.float64 else "booleans"
            try:
                out = np.asarray(value, dtype=dtype)
            except (TypeError, ValueError, OverflowError):
                raise PolicyError(
                    f"policy {policy!r}: option.{name} must be an array of {kind}, got {type(value).__name__}"
                ) from None
            if out.ndim == 0:
                out = np.full(n, out, dtype=dtype)
            if out.shape != (n,):
                raise PolicyError(f"policy {policy!r}: option.{name} has shape {out.shape}, expected ({n},)")
            return out

        def amounts(name: str, values: Any) -> dict[int, np.ndarray]:
            if not isinstance(values, Mapping):
                raise PolicyError(
                    f"policy {policy!r}: option.{name} must be a mapping compartment -> (n,) array, "
                    f"got {type(values).__name__}"
                )
            out = {}
            for cmt, value in values.items():
                if isinstance(cmt, bool) or not isinstance(cmt, int | np.integer):
                    raise PolicyError(
                        f"policy {policy!r}: option.{name} key {cmt!r} must be a compartment number (int)"
                    )
                if model is not None and int(cmt) not in model.dose_targets:
                    raise PolicyError(
                        f"policy {policy!r}: option.{name} uses compartment {cmt}; model {model.name!r} doses "
                        f"into {sorted(model.dose_targets)}"
                    )
                a = arr(f"{name}[{cmt}]", value)
                bad = active & ~((a >= 0) & np.isfinite(a))
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise PolicyError(
                        f"policy {policy!r}: option.{name}[{cmt}] must be finite and >= 0; patient {i} got {a[i]}"
                    )
                out[int(cmt)] = np.where(active, a, 0.0)
            return out

        active = np.broadcast_to(np.asarray(active, bool), (n,))
        interval = arr("interval", self.interval)
        bad = active & ~(interval > 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PolicyError(f"policy {policy!r}: option.interval must be > 0; patient {i} got {interval[i]}")
        measure = np.ones(n, bool) if self.measure_next is None else arr("measure_next", self.measure_next, bool)
        return Option(
            interval=interval,
            bolus=amounts("bolus", self.bolus),
            rate=amounts("rate", self.rate),
            measure_next=measure,
        )


@runtime_checkable
class Policy(Protocol):
    """The protocol every policy satisfies (see the module docstring)."""

    name: str

    def init(self, n: int, *, seed: int) -> Any: ...

    def act(self, state: Any, obs: Observation, *, rng: np.random.Generator) -> tuple[Any, Option]: ...


@dataclass(frozen=True)
class PolicyContext:
    """What the caller knows that a policy may need when it is built from a spec.

    Attributes
    ----------
    model : PhysiologyModel, optional
    bounds : tuple of Bound
        The safety bounds being evaluated.
    draws : PosteriorDraws, optional
        Posterior draws (for posterior-aware policies such as ``safe_timing``).
    dt : float, optional
        Simulator sub-step (model time unit).
    scheme : str
        Simulator scheme (see :data:`medsim.simulate.schemes.SCHEMES`), so that policies which
        simulate predict with the same discretisation as the rollout.
    """

    model: PhysiologyModel | None = None
    bounds: tuple[Bound, ...] = ()
    draws: Any = None
    dt: float | None = None
    scheme: str = "milstein"


#: Metadata of a field of a built-in policy (a frozen dataclass) that the policy takes from the
#: model (:func:`for_model`) rather than from its spec: not a spec parameter, not in its name.
FROM_MODEL: Mapping[str, Any] = MappingProxyType({"from_model": True})


def spec_params(policy: Any) -> dict[str, Any]:
    """The spec parameters of a dataclass policy that differ from their defaults (what its name lists)."""
    return {
        f.name: getattr(policy, f.name)
        for f in fields(policy)
        if not f.metadata.get("from_model") and getattr(policy, f.name) != f.default
    }


def for_model(policy: Any, model: PhysiologyModel | None) -> Any:
    """``policy`` with what it takes from ``model`` filled in (its ``for_model(model)``), else itself.

    The rollout, the environment and spec parsing call it where a policy meets its model, so a
    built-in policy reads model defaults (e.g. the glucose observable) from the model itself.
    """
    bind = getattr(policy, "for_model", None)
    return policy if model is None or not callable(bind) else bind(model)


def spec_string(kind: str, params: Mapping[str, Any]) -> str:
    """``"kind:key=value,..."`` — the spec a policy records as its name."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:g}"
        if isinstance(v, Sequence) and not isinstance(v, str):
            return ";".join(fmt(x) for x in v)
        return str(v)

    body = ",".join(f"{k}={fmt(v)}" for k, v in params.items())
    return f"{kind}:{body}" if body else kind


def next_on_grid(t: Any, start: float, step: float, tol: float, xp: Any = np) -> Any:
    """Smallest ``start + j * step`` (j >= 0) strictly after ``t`` (beyond a tolerance ``tol``).

    ``xp`` is the array namespace (``numpy``, or ``jax.numpy`` inside a compiled loop).
    """
    j = xp.floor((xp.asarray(t, xp.float64) + tol - start) / step) + 1.0
    return start + xp.maximum(j, 0.0) * step


def on_grid(t: Any, start: float, step: float, tol: float, xp: Any = np) -> Any:
    """True where ``t`` is (within ``tol``) a point ``start + j * step``, j >= 0."""
    t = xp.asarray(t, xp.float64)
    j = xp.round((t - start) / step)
    return (j >= 0) & (xp.abs(t - (start + j * step)) <= tol)
