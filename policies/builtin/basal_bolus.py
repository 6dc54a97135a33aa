"""``basal_bolus``: basal insulin by pump plus meal boluses from a bolus calculator (type-1 diabetes).

Basal: the patient's own basal rate (covariate ``BASAL``, U/h) as a continuous pump rate into the
insulin compartment. At each announced meal (carbohydrate ``C`` g) a bolus is given by the
bolus-calculator rule of insulin pumps (Walsh & Roberts, *Pumping Insulin*, 6th ed., ch. 11):

    bolus = max(0, C / CR + (G - target) / CF - IOB)

with carb ratio ``CR`` (g/U), correction factor ``CF`` (mg/dL per U), the last measured glucose
``G`` and the insulin on board ``IOB`` (U). Unless given, ``CR`` and ``CF`` follow the "500 rule"
and "1800 rule" (CR = 500 / TDD, CF = 1800 / TDD) with the total daily dose estimated from the
basal rate, TDD = 24 h x BASAL / ``basal_fraction`` (basal is about half of TDD). Insulin on
board decays first-order with time constant ``iob_tau`` — a simplification of the curvilinear
action curves pumps use. A fingerstick check happens every ``every`` time units between meals;
with ``correct_between_meals`` it triggers a correction bolus when glucose is above target.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, NamedTuple

import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.policies.array_step import host_step
from medsim.policies.builtin.glucose_controller import GlucoseController
from medsim.policies.protocol import FROM_MODEL, MissingCovariateError, Observation, Option, units_per_hour


class BasalBolusState(NamedTuple):
    """Per-patient memory of :class:`BasalBolus`, each ``(n,)``: insulin on board (U) and the time
    it was last updated."""

    iob: Any
    t_last: Any


@dataclass(frozen=True)
class BasalBolus(GlucoseController):
    """Pump basal + bolus-calculator meal boluses (see the module docstring).

    Parameters
    ----------
    target : float
        Glucose target of the correction (mg/dL).
    cr : float
        Carb ratio (g/U); 0 = 500 rule.
    cf : float
        Correction factor (mg/dL per U); 0 = 1800 rule.
    basal_fraction : float
        Basal share of the total daily dose (for the 500/1800 rules).
    every : float
        Fingerstick interval between meals (model time unit; glucose_insulin: min).
    iob_tau : float
        Insulin-on-board decay time constant (model time unit).
    correct_between_meals : bool
    observable : str, optional
        The glucose observable measured; default: the model's ``glucose_observable``
        (:mod:`medsim.policies.builtin.glucose_controller`).
    basal_cmt : int
        The insulin compartment.
    meal_cmt : int, optional
        The meal compartment whose announced carbohydrate is bolused for; default: the model's
        declared ``meal_cmt``.
    model_observable : str, optional
        The model's glucose observable, filled in when the policy meets its model (not a spec
        parameter).
    model_meal_cmt : int, optional
        The model's meal compartment, filled in the same way (not a spec parameter).
    """

    kind: ClassVar[str] = "basal_bolus"

    target: float = 120.0
    cr: float = 0.0
    cf: float = 0.0
    basal_fraction: float = 0.5
    every: float = 240.0
    iob_tau: float = 90.0
    correct_between_meals: bool = False
    observable: str | None = None
    basal_cmt: int = 1
    meal_cmt: int | None = None
    model_observable: str | None = field(default=None, metadata=FROM_MODEL)
    model_meal_cmt: int | None = field(default=None, metadata=FROM_MODEL)

    def __post_init__(self) -> None:
        if self.cr < 0 or self.cf < 0:
            raise ValueError("basal_bolus: cr and cf must be >= 0 (0 = rule of thumb)")
        if not 0 < self.basal_fraction <= 1:
            raise ValueError(f"basal_bolus: basal_fraction must be in (0, 1], got {self.basal_fraction}")
        if not (self.every > 0 and self.iob_tau > 0):
            raise ValueError("basal_bolus: every and iob_tau must be > 0")

    def for_model(self, model: PhysiologyModel) -> BasalBolus:
        """This policy for ``model``: its glucose observable and its meal compartment unless given."""
        bound = GlucoseController.for_model(self, model)
        if bound.meal_cmt is None and bound.model_meal_cmt != model.meal_cmt:
            bound = replace(bound, model_meal_cmt=model.meal_cmt)
        return bound

    @property
    def meal(self) -> int | None:
        """The meal compartment read: ``meal_cmt``, else the model's (None: no announced meals)."""
        return self.meal_cmt if self.meal_cmt is not None else self.model_meal_cmt

    def ratios(self, basal_u_per_h: Any, xp: Any = np) -> tuple[Any, Any]:
        """Carb ratio (g/U) and correction factor (mg/dL/U) per patient."""
        tdd = 24.0 * xp.asarray(basal_u_per_h, xp.float64) / self.basal_fraction
        cr = xp.full_like(tdd, self.cr) if self.cr > 0 else 500.0 / tdd
        cf = xp.full_like(tdd, self.cf) if self.cf > 0 else 1800.0 / tdd
        return cr, cf

    def init(self, n: int, *, seed: int) -> BasalBolusState:
        """State per patient: insulin on board (U) and the time it was last updated."""
        return BasalBolusState(iob=np.zeros(n), t_last=np.zeros(n))

    def act(self, state: BasalBolusState, obs: Observation, *, rng: np.random.Generator):
        return host_step(self, state, obs)

    def array_step(self, state: BasalBolusState, obs: Observation, xp: Any) -> tuple[BasalBolusState, Option]:
        """One pure step on arrays of the namespace ``xp`` (``numpy``, or ``jax.numpy`` inside the
        compiled loop of :mod:`medsim.policies.device_loop`); :meth:`act` evaluates it with XLA
        (:func:`medsim.policies.array_step.host_step`), so both loops compute the same numbers."""
        if "BASAL" not in obs.covariates:
            raise MissingCovariateError("basal_bolus", "BASAL", "U/h")
        t = xp.asarray(obs.time, xp.float64)
        basal_h = xp.asarray(obs.covariates["BASAL"], xp.float64)
        cr, cf = self.ratios(basal_h, xp)
        iob = state.iob * xp.exp(-(t - state.t_last) / self.iob_tau)
        glucose = xp.asarray(obs.measured.get(self.glucose, xp.full(obs.n, xp.nan)), xp.float64)
        carbs = xp.asarray(obs.announced.get(self.meal, xp.zeros(obs.n)), xp.float64)
        meal = carbs > 0
        correction = xp.where(xp.isnan(glucose), 0.0, (glucose - self.target) / cf)
        bolus = xp.where(meal, carbs / cr + correction - iob, 0.0)
        if self.correct_between_meals:
            bolus = xp.where(~meal & (correction > iob), correction - iob, bolus)
        bolus = xp.where(obs.active, xp.maximum(bolus, 0.0), 0.0)
        option = Option(
            interval=xp.full(obs.n, float(self.every)),
            bolus={self.basal_cmt: bolus},
            rate={self.basal_cmt: basal_h / units_per_hour(obs.time_unit)},
        )
        return BasalBolusState(iob=iob + bolus, t_last=t), option
