"""``tdm``: therapeutic drug monitoring with proportional dose titration toward a target trough.

Every ``every`` time units a trough is measured just before the dose (the observation of an
interaction precedes its bolus) and the dose is scaled by ``target / trough``. For linear
(first-order) pharmacokinetics the steady-state concentration is proportional to the dose, so
this proportional rule is the textbook adjustment (e.g. Winter, *Basic Clinical
Pharmacokinetics*, 5th ed., ch. 1); the factor is clipped to ``[min_change, max_change]`` per
step to damp noisy troughs, and adjustment starts after ``adjust_after`` doses, when the trough
is close to steady state (about 4 half-lives; theophylline's is about 8 h).

A trough that is not positive (below the assay's range, or an additive-error reading below 0)
counts as "far too low" and takes the largest allowed increase.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np

from medsim.policies.array_step import host_step
from medsim.policies.protocol import Observation, Option, spec_string


class TDMState(NamedTuple):
    """Per-patient memory of :class:`TDM`, each ``(n,)``: the current dose, the doses given and
    the next dose time."""

    dose: Any
    doses_given: Any
    next_dose: Any


@dataclass(frozen=True)
class TDM:
    """Trough-guided proportional titration (see the module docstring).

    Parameters
    ----------
    target : float
        Target trough (observable unit, e.g. mg/L).
    every : float
        Dosing and sampling interval (model time unit).
    dose : float
        Starting dose (dose unit of ``cmt``).
    cmt : int
        Dose compartment.
    observable : str
        Measured observable.
    min_change, max_change : float
        Bounds on the dose factor per adjustment (``0 < min_change <= 1 <= max_change``).
    max_dose : float
        Absolute dose cap.
    adjust_after : int
        Doses given before the first adjustment.
    """

    target: float = 10.0
    every: float = 12.0
    dose: float = 400.0
    cmt: int = 1
    observable: str = "conc"
    min_change: float = 0.5
    max_change: float = 2.0
    max_dose: float = float("inf")
    adjust_after: int = 3

    def __post_init__(self) -> None:
        if not self.target > 0:
            raise ValueError(f"tdm: target must be > 0, got {self.target}")
        if not self.every > 0:
            raise ValueError(f"tdm: every must be > 0, got {self.every}")
        if not (self.dose >= 0 and np.isfinite(self.dose)):
            raise ValueError(f"tdm: dose must be finite and >= 0, got {self.dose}")
        if not 0 < self.min_change <= 1 <= self.max_change:
            raise ValueError(
                f"tdm: need 0 < min_change <= 1 <= max_change, got min_change={self.min_change}, "
                f"max_change={self.max_change}"
            )
        if self.adjust_after < 1:
            raise ValueError(f"tdm: adjust_after must be >= 1, got {self.adjust_after}")

    @property
    def name(self) -> str:
        changed = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}
        return spec_string("tdm", changed)

    def init(self, n: int, *, seed: int) -> TDMState:
        """State per patient: the current dose, doses given and the next dose time (first at 0)."""
        return TDMState(dose=np.full(n, float(self.dose)), doses_given=np.zeros(n, np.int64), next_dose=np.zeros(n))

    def adjusted_dose(self, dose: Any, trough: Any, xp: Any = np) -> Any:
        """``dose * clip(target / trough, min_change, max_change)``, capped at ``max_dose``."""
        trough = xp.asarray(trough, xp.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = xp.where(trough > 0, self.target / trough, xp.inf)
        return xp.minimum(dose * xp.clip(ratio, self.min_change, self.max_change), self.max_dose)

    def act(self, state: TDMState, obs: Observation, *, rng: np.random.Generator) -> tuple[TDMState, Option]:
        return host_step(self, state, obs)

    def array_step(self, state: TDMState, obs: Observation, xp: Any) -> tuple[TDMState, Option]:
        """One pure step on arrays of the namespace ``xp`` (``numpy``, or ``jax.numpy`` inside the
        compiled loop of :mod:`medsim.policies.device_loop`); :meth:`act` evaluates it with XLA
        (:func:`medsim.policies.array_step.host_step`), so both loops compute the same numbers."""
        if self.observable not in obs.measured:
            raise KeyError(f"tdm: observable {self.observable!r} is not measured; measured: {sorted(obs.measured)}")
        t = xp.asarray(obs.time, xp.float64)
        # Interactions may come more often than doses (e.g. under safe_timing): dose only when due.
        due = obs.active & (t >= state.next_dose - 1e-6 * max(1.0, self.every))
        trough = xp.asarray(obs.measured[self.observable], xp.float64)
        adjust = due & (state.doses_given >= self.adjust_after) & ~xp.isnan(trough)
        dose = xp.where(adjust, self.adjusted_dose(state.dose, trough, xp), state.dose)
        next_dose = xp.where(due, state.next_dose + self.every, state.next_dose)
        option = Option(
            interval=xp.maximum(next_dose - t, 1e-9 * self.every),
            bolus={self.cmt: xp.where(due, dose, 0.0)},
            measure_next=xp.ones(obs.n, bool),
        )
        return TDMState(dose=dose, doses_given=state.doses_given + due, next_dose=next_dose), option
