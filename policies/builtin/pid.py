"""``pid``: a PID controller of the insulin pump rate on noisy glucose measurements.

The rate is the patient's basal rate (covariate ``BASAL``, U/h) scaled by the PID law on the
error ``e = G - target`` (mg/dL)::

    rate = BASAL * max(0, 1 + kp * (e + I / ti + td * dG/dt)),   I = integral of e dt

the ideal (ISA) form with gain relative to basal, as in the external physiologic insulin delivery
controller of Steil et al. (*Diabetes* 55:3344, 2006), whose integral and derivative times are of
the order of the defaults here. Low glucose drives the rate toward 0; below ``suspend_below`` the
pump is suspended outright (the low-glucose suspend of sensor-augmented pumps, e.g. Bergenstal et
al., *N Engl J Med* 369:224, 2013), whatever the integral holds. The rate is capped at
``max_factor`` x basal, and the integral term is clamped to +-1 x basal (anti-windup), which
bounds how much insulin hours of past highs can add once glucose has come down.

The measurement schedule is the sensing technology: ``every=5`` (min) is CGM-like, ``every=180``
is fingerstick-like. Measurement noise makes a raw difference quotient useless as a derivative,
so the derivative is taken on glucose smoothed by a first-order filter with time constant
``filter_tau`` (a standard derivative filter, Astrom & Hagglund, *Advanced PID Control*, 2006, §3.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np

from medsim.policies.array_step import host_step
from medsim.policies.builtin.glucose_controller import GlucoseController
from medsim.policies.protocol import FROM_MODEL, MissingCovariateError, Observation, Option, units_per_hour


class PIDState(NamedTuple):
    """Per-patient memory of :class:`PID`, each ``(n,)``.

    Attributes
    ----------
    integral : error integral (mg/dL x time unit)
    filtered : filtered glucose (mg/dL; NaN before the first measurement)
    t_last : time of the last measurement (NaN before the first)
    factor : the last rate factor (x basal), held when nothing is measured
    """

    integral: Any
    filtered: Any
    t_last: Any
    factor: Any


@dataclass(frozen=True)
class PID(GlucoseController):
    """PID insulin-rate controller (see the module docstring).

    Parameters
    ----------
    target : float
        Glucose set point (mg/dL).
    every : float
        Measurement / control interval (model time unit; glucose_insulin: min).
    kp : float
        Proportional gain, fraction of basal per mg/dL (1/60: 60 mg/dL above target doubles basal).
    ti, td : float
        Integral and derivative times (model time unit); ``ti = 0`` disables the integral.
    filter_tau : float
        Time constant of the glucose filter feeding the derivative (model time unit).
    max_factor : float
        Rate cap as a multiple of basal.
    suspend_below : float
        Glucose (mg/dL) below which the pump is suspended (0 disables).
    observable : str, optional
        The glucose observable measured; default: the model's ``glucose_observable``
        (:mod:`medsim.policies.builtin.glucose_controller`).
    cmt : int
        Insulin compartment.
    model_observable : str, optional
        The model's glucose observable, filled in when the policy meets its model (not a spec
        parameter).
    """

    kind: ClassVar[str] = "pid"

    target: float = 120.0
    every: float = 5.0
    kp: float = 1.0 / 60.0
    ti: float = 450.0
    td: float = 30.0
    filter_tau: float = 30.0
    max_factor: float = 5.0
    suspend_below: float = 70.0
    observable: str | None = None
    cmt: int = 1
    model_observable: str | None = field(default=None, metadata=FROM_MODEL)

    def __post_init__(self) -> None:
        if not (self.every > 0 and self.kp >= 0 and self.ti >= 0 and self.td >= 0 and self.filter_tau >= 0):
            raise ValueError("pid: every must be > 0 and kp, ti, td, filter_tau >= 0")
        if not self.max_factor >= 1:
            raise ValueError(f"pid: max_factor must be >= 1, got {self.max_factor}")

    def init(self, n: int, *, seed: int) -> PIDState:
        """State per patient: integral of the error, filtered glucose, last measurement time, last factor."""
        nan = np.full(n, np.nan)
        return PIDState(integral=np.zeros(n), filtered=nan, t_last=nan.copy(), factor=np.ones(n))

    def act(self, state: PIDState, obs: Observation, *, rng: np.random.Generator) -> tuple[PIDState, Option]:
        return host_step(self, state, obs)

    def array_step(self, state: PIDState, obs: Observation, xp: Any) -> tuple[PIDState, Option]:
        """One pure step on arrays of the namespace ``xp`` (``numpy``, or ``jax.numpy`` inside the
        compiled loop of :mod:`medsim.policies.device_loop`); :meth:`act` evaluates it with XLA
        (:func:`medsim.policies.array_step.host_step`), so both loops compute the same numbers."""
        if "BASAL" not in obs.covariates:
            raise MissingCovariateError("pid", "BASAL", "U/h")
        t = xp.asarray(obs.time, xp.float64)
        glucose = xp.asarray(obs.measured.get(self.glucose, xp.full(obs.n, xp.nan)), xp.float64)
        seen = ~xp.isnan(glucose) & obs.active
        first = xp.isnan(state.filtered)
        elapsed = xp.where(first, 0.0, t - state.t_last)
        # First-order filter, exact for a piecewise-constant input: weight 1 - exp(-elapsed / tau).
        weight = 1.0 if self.filter_tau == 0 else -xp.expm1(-elapsed / self.filter_tau)
        filtered = xp.where(first, glucose, state.filtered + weight * (glucose - state.filtered))
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = xp.where(first | (elapsed <= 0), 0.0, (filtered - state.filtered) / elapsed)
        error = glucose - self.target
        integral = state.integral + error * elapsed
        if self.ti > 0:
            # Anti-windup: keep the integral term kp * I / ti inside [-1, 1] (x basal).
            limit = self.ti / self.kp if self.kp > 0 else 0.0
            integral = xp.clip(integral, -limit, limit)
            integral_term = integral / self.ti
        else:
            integral, integral_term = xp.zeros_like(integral), 0.0
        factor = xp.clip(1.0 + self.kp * (error + integral_term + self.td * slope), 0.0, self.max_factor)
        factor = xp.where(glucose < self.suspend_below, 0.0, factor)
        factor = xp.where(seen, factor, state.factor)
        basal = xp.asarray(obs.covariates["BASAL"], xp.float64) / units_per_hour(obs.time_unit)
        new_state = PIDState(
            integral=xp.where(seen, integral, state.integral),
            filtered=xp.where(seen, filtered, state.filtered),
            t_last=xp.where(seen, t, state.t_last),
            factor=factor,
        )
        option = Option(interval=xp.full(obs.n, float(self.every)), rate={self.cmt: basal * factor})
        return new_state, option
