"""Checks that a simulated number can be trusted: finite, and inside the state's physical range.

An explicit scheme run past its stability limit, a non-physical parameter or an overflow does not
stop a vectorised simulation: it yields NaN (which compares as "not outside any bound", so the
patient would be counted as safe) or finite nonsense (a drug amount of -1e13 mg). Every path that
aggregates simulated values therefore checks them on the host between interaction intervals,
never inside the compiled sub-step loop, and stops with an error that names the patient, its
parameters and the time:

* :func:`check_finite` — every value of a mapping ``name -> (B,)`` is finite;
* :func:`check_physical` — every state lies in its declared
  :attr:`~medsim.models.base.State.physical_range` (a state that leaves it is running away).

Both raise subclasses of :class:`SimulationError` (a ``FloatingPointError``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medsim.models.base import PhysiologyModel

# A state may overshoot its physical range by this fraction of its own magnitude (float32
# rounding of x - k x h when k h is close to 1); an unstable step overshoots by O(1) of it.
RANGE_TOLERANCE = 1e-4


class SimulationError(FloatingPointError):
    """A simulated value that cannot be a result; names the patient, its parameters and the time.

    Attributes
    ----------
    patient : int
        Index of the patient (its global index in the population when the caller gave one).
    name : str
        The state or observable.
    value : float
        The offending value.
    params : dict
        The patient's parameters.
    """

    def __init__(self, message: str, *, patient: int, name: str, value: float, params: Mapping[str, float]):
        super().__init__(message)
        self.patient, self.name, self.value, self.params = patient, name, value, dict(params)


class NonFiniteStateError(SimulationError):
    """A simulated state, observable or statistic is NaN or infinite."""


class RunawayStateError(SimulationError):
    """A simulated state left its declared physical range (a numerical blow-up)."""


def patient_params(params: Mapping[str, object], i: int) -> dict[str, float]:
    """The scalar parameters of patient ``i`` (scalars are shared by every patient)."""
    out = {}
    for k, v in params.items():
        a = np.asarray(v)
        if a.dtype.kind in "fiub":
            out[k] = float(a if a.ndim == 0 else a.reshape(-1)[i] if a.size > i else np.nan)
    return out


def describe_patient(params: Mapping[str, float]) -> str:
    """``"ka=1.6, CL=2.8"``: a patient's parameters for an error message."""
    return ", ".join(f"{k}={v:.4g}" for k, v in params.items())


def _when(t0, t1, i: int, time_unit: str) -> str:
    a = float(np.asarray(t0).reshape(-1)[i if np.ndim(t0) else 0])
    if t1 is None:
        return f"at t={a:g} {time_unit}"
    b = float(np.asarray(t1).reshape(-1)[i if np.ndim(t1) else 0])
    return f"at t={a:g} {time_unit}" if a == b else f"between t={a:g} and t={b:g} {time_unit}"


def check_finite(
    values: Mapping[str, object],
    params: Mapping[str, object],
    t0,
    t1=None,
    *,
    time_unit: str,
    patients: Sequence[int] | np.ndarray | None = None,
    what: str = "simulated",
) -> None:
    """Raise at the first non-finite value instead of letting NaN flow into risk estimates.

    Parameters
    ----------
    values : mapping name -> (B,) or (B, K)
        States, observables or statistics of ``B`` patients.
    params : mapping name -> (B,) or scalar
        The patients' parameters (named in the message).
    t0, t1 : scalar or (B,)
        The time (``t1`` omitted) or interval the values belong to.
    time_unit : str
    patients : (B,) int, optional
        Global index of each patient (default: its position).
    what : str
        How the values are described in the message (``"simulated"``, ``"crossing statistic"``).

    Raises
    ------
    NonFiniteStateError
        Naming the patient, the value, the time and the patient's parameters.
    """
    for name, value in values.items():
        a = np.asarray(value)
        bad = ~np.isfinite(a)
        if bad.ndim > 1:
            bad = bad.reshape(bad.shape[0], -1).any(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            v = float(a.reshape(a.shape[0], -1)[i][~np.isfinite(a.reshape(a.shape[0], -1)[i])][0])
            who = int(patients[i]) if patients is not None else i
            p = patient_params(params, i)
            raise NonFiniteStateError(
                f"patient {who}: {what} {name} is {v} {_when(t0, t1, i, time_unit)} ({describe_patient(p)}); "
                "check that the parameters are finite and physical, and that dt is within the scheme's "
                "stability limit",
                patient=who,
                name=name,
                value=v,
                params=p,
            )


def check_physical(
    model: PhysiologyModel,
    state: Mapping[str, object],
    params: Mapping[str, object],
    t0,
    t1=None,
    *,
    patients: Sequence[int] | np.ndarray | None = None,
    dt: float | None = None,
    scheme: str | None = None,
) -> None:
    """Raise when a state is outside its declared :attr:`~medsim.models.base.State.physical_range`.

    The comparison allows :data:`RANGE_TOLERANCE` of the state's own magnitude (rounding); a
    state that an unstable step flips or inflates misses the range by far more.

    Raises
    ------
    RunawayStateError
        Naming the patient, the state, its value, the time and the patient's parameters.
    """
    for s in model.states:
        lo, hi = s.physical_range
        if (lo is None and hi is None) or s.name not in state:
            continue
        x = np.asarray(state[s.name], np.float64)
        slack = RANGE_TOLERANCE * np.abs(x)
        bad = np.zeros(x.shape, bool)
        if lo is not None:
            bad |= x < lo - slack
        if hi is not None:
            bad |= x > hi + slack
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            who = int(patients[i]) if patients is not None else i
            p = patient_params(params, i)
            span = f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
            step = f" at dt = {dt:g} {model.time_unit} ({scheme})" if dt is not None else ""
            raise RunawayStateError(
                f"patient {who}: state {s.name} = {x[i]:.4g} {s.unit} {_when(t0, t1, i, model.time_unit)}, outside "
                f"its physical range {span} ({describe_patient(p)}): the simulation{step} does not follow the model "
                "(an explicit step overshoots once rate x dt > 1 and diverges once it exceeds 2); use a smaller dt or "
                "the exponential scheme, and check the patient's parameters",
                patient=who,
                name=s.name,
                value=float(x[i]),
                params=p,
            )
