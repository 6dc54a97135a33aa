"""One subject of a cohort: observations, doses and time-constant covariates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from medsim.data.limits import MAX_MAGNITUDE


def _frozen(values: Any, dtype: type, what: str, subject: str) -> np.ndarray:
    array = np.array(values, dtype=dtype, copy=True)
    if array.ndim != 1:
        raise ValueError(f"subject {subject!r}: {what} must be a 1-D array, got shape {array.shape}")
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Subject:
    """One subject: irregular observations, dosing events and time-constant covariates.

    Records are stored in canonical order: observations by (time, CMT, value) and doses by
    (time, CMT, amount, rate), whatever order they were given in, so two subjects holding the
    same records compare equal. Arrays are read-only.

    At a time where both a dose and an observation occur, the observation is taken *before*
    the dose (a pre-dose sample), as the simulator applies a dose at the start of the interval
    that begins at its time.

    Attributes
    ----------
    id : str
        Subject identifier.
    obs_time : (n_obs,) float64
        Observation times in the cohort's time unit, non-decreasing.
    obs_value : (n_obs,) float64
        Measured values (DV), in the unit of the observable the CMT maps to.
    obs_cmt : (n_obs,) int64
        NONMEM CMT of each observation; the model's ``obs_targets`` maps it to an observable.
    dose_time : (n_dose,) float64
        Dose (start) times.
    dose_cmt : (n_dose,) int64
        Dosed compartment; the model's ``dose_targets`` maps it to a state.
    dose_amount : (n_dose,) float64
        Amount (> 0) in the compartment's dose unit.
    dose_rate : (n_dose,) float64
        0 for a bolus; > 0 for a zero-order infusion of ``amount`` at ``rate`` (amount per time
        unit), lasting ``amount / rate``.
    covariates : mapping str -> float
        Time-constant covariates (read-only).
    obs_cens : (n_obs,) int64
        Censoring of each observation (NONMEM's CENS): 0 measured; 1 below a lower limit (a
        sensor floor, a limit of quantification) that ``obs_value`` holds; -1 above an upper
        limit (a sensor ceiling) that ``obs_value`` holds. Default: none censored. Fits use the
        probability of being beyond the limit (Beal's M3 method, :mod:`medsim.inference.likelihood`).
    """

    id: str
    obs_time: np.ndarray
    obs_value: np.ndarray
    obs_cmt: np.ndarray
    dose_time: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dose_cmt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    dose_amount: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dose_rate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    covariates: Mapping[str, float] = field(default_factory=dict)
    obs_cens: np.ndarray | None = None

    def __post_init__(self) -> None:
        sid = str(self.id)
        cens = np.zeros(np.shape(self.obs_time), np.int64) if self.obs_cens is None else self.obs_cens
        arrays = {
            "obs_time": _frozen(self.obs_time, np.float64, "obs_time", sid),
            "obs_value": _frozen(self.obs_value, np.float64, "obs_value", sid),
            "obs_cmt": _frozen(self.obs_cmt, np.int64, "obs_cmt", sid),
            "obs_cens": _frozen(cens, np.float64, "obs_cens", sid),
            "dose_time": _frozen(self.dose_time, np.float64, "dose_time", sid),
            "dose_cmt": _frozen(self.dose_cmt, np.int64, "dose_cmt", sid),
            "dose_amount": _frozen(self.dose_amount, np.float64, "dose_amount", sid),
            "dose_rate": _frozen(self.dose_rate, np.float64, "dose_rate", sid),
        }
        for group in (
            ("obs_time", "obs_value", "obs_cmt", "obs_cens"),
            ("dose_time", "dose_cmt", "dose_amount", "dose_rate"),
        ):
            lengths = {name: arrays[name].shape[0] for name in group}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"subject {sid!r}: {', '.join(group)} must have equal lengths, got {lengths}")
        checks = (
            ("obs_time", np.isfinite(arrays["obs_time"]), "finite times"),
            ("obs_value", np.isfinite(arrays["obs_value"]), "finite values"),
            ("dose_time", np.isfinite(arrays["dose_time"]), "finite times"),
            ("dose_amount", np.isfinite(arrays["dose_amount"]) & (arrays["dose_amount"] > 0), "amounts > 0"),
            ("dose_rate", np.isfinite(arrays["dose_rate"]) & (arrays["dose_rate"] >= 0), "rates >= 0 (0 = bolus)"),
        )
        bad_cens = ~np.isin(arrays["obs_cens"], CENS_VALUES)
        if bad_cens.any():
            raise ValueError(
                f"subject {sid!r}: obs_cens contains {arrays['obs_cens'][bad_cens][0].item()!r}; expected 0 "
                "(measured), 1 (below the lower limit held in obs_value) or -1 (above the upper limit)"
            )
        arrays["obs_cens"] = _frozen(arrays["obs_cens"], np.int64, "obs_cens", sid)
        for name, good, expected in checks:
            if not good.all():
                bad = arrays[name][~good][0].item()
                raise ValueError(f"subject {sid!r}: {name} contains {bad!r}; expected {expected}")
        for name in ("obs_time", "obs_value", "dose_time", "dose_amount", "dose_rate"):
            # Beyond this a value is inf in float32 (or its square is), which the simulator and the
            # fit compute in; see medsim.data.limits.
            huge = np.abs(arrays[name]) > MAX_MAGNITUDE
            if huge.any():
                raise ValueError(
                    f"subject {sid!r}: {name} contains {arrays[name][huge][0].item()!r}; expected magnitudes at "
                    f"most {MAX_MAGNITUDE:g} (the range medsim computes with in float32)"
                )
        covariates = {str(k): float(v) for k, v in self.covariates.items()}
        for name, value in covariates.items():
            if not np.isfinite(value):
                raise ValueError(f"subject {sid!r}: covariate {name!r} is {value}; expected a finite number")
            if abs(value) > MAX_MAGNITUDE:
                raise ValueError(
                    f"subject {sid!r}: covariate {name!r} is {value!r}; expected a magnitude at most {MAX_MAGNITUDE:g}"
                )
        # Canonical record order (np.lexsort sorts by the last key first).
        obs = np.lexsort((arrays["obs_cens"], arrays["obs_value"], arrays["obs_cmt"], arrays["obs_time"]))
        dose = np.lexsort((arrays["dose_rate"], arrays["dose_amount"], arrays["dose_cmt"], arrays["dose_time"]))
        object.__setattr__(self, "id", sid)
        for name, array in arrays.items():
            order = obs if name.startswith("obs") else dose
            if not np.array_equal(order, np.arange(order.size)):
                array = array[order]
                array.setflags(write=False)
            object.__setattr__(self, name, array)
        object.__setattr__(self, "covariates", MappingProxyType(covariates))

    @property
    def n_obs(self) -> int:
        return int(self.obs_time.shape[0])

    @property
    def n_dose(self) -> int:
        return int(self.dose_time.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Subject):
            return NotImplemented
        return (
            self.id == other.id
            and all(np.array_equal(getattr(self, f), getattr(other, f)) for f in (*_ARRAY_FIELDS, "obs_cens"))
            and dict(self.covariates) == dict(other.covariates)
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays; equality is by value

    def __reduce__(self) -> tuple:
        # MappingProxyType cannot be pickled; rebuild from plain values (used by multiprocessing).
        return (Subject, (self.id, *(getattr(self, f) for f in _ARRAY_FIELDS), dict(self.covariates), self.obs_cens))

    def __repr__(self) -> str:
        return f"Subject(id={self.id!r}, n_obs={self.n_obs}, n_dose={self.n_dose}, covariates={dict(self.covariates)})"


#: Allowed censoring codes (NONMEM CENS): measured, below a lower limit, above an upper limit.
CENS_VALUES = (0, 1, -1)
_ARRAY_FIELDS = ("obs_time", "obs_value", "obs_cmt", "dose_time", "dose_cmt", "dose_amount", "dose_rate")
