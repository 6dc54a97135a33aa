"""Type-1 diabetes glucose-insulin model: the identifiable virtual patient (IVP) model.

The IVP model of Kanderian et al. (2009) is the Bergman minimal model of glucose kinetics
(Bergman et al. 1979) driven by a two-compartment subcutaneous insulin absorption model and a
two-compartment gut absorption of meal carbohydrate (as in Hovorka et al. 2004)::

    d gut1       = (-gut1 / tau_m) dt + meals                          (g carbohydrate)
    d gut2       = (gut1 - gut2) / tau_m dt                            (g)
    d insulin_sc = (-insulin_sc / tau_1) dt + insulin delivery         (U, subcutaneous depot)
    d insulin_p  = (1e6 * insulin_sc / (tau_1 * C_I) - insulin_p) / tau_2 dt   (uU/mL)
    d action     = p_2 * (S_I * insulin_p - action) dt                 (1/min)
    d glucose    = (-(GEZI + action) * glucose + EGP + R_a) dt + sigma * glucose dW   (mg/dL)
    R_a          = 1000 * gut2 / (V_G * tau_m)                         (mg/dL/min)

Writing the depot in units (U) rather than concentration keeps the dose effect independent
of the patient's parameters: a bolus of B units adds B to ``insulin_sc``, a pump rate of
r U/min is an input rate on it. Process noise is proportional to glucose (geometric), so
glucose stays positive; it stands for unmodelled disturbances (exercise, stress, sensor-free
meal errors).

Typical values are the population means reported for 15 adults with type 1 diabetes by
Kanderian et al., *J Diabetes Sci Technol* 3(5):1047-1057 (2009), Table 2. Between-subject
variability (log-normal SDs) is set from the spread reported there, rounded. The initial state
is the steady state under the patient's basal rate (covariate ``BASAL``, U/h) and no meal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np

from medsim.models.base import (
    Covariate,
    Observable,
    Parameter,
    PhysiologyModel,
    ResidualError,
    SafetyLimit,
    State,
    TargetRange,
)

_SRC = "Kanderian et al. 2009, JDST 3:1047, Table 2"

_CONSENSUS = "Battelino et al., Diabetes Care 42:1593 (2019), consensus target range"
#: The consensus target range 70-180 mg/dL, as a target and as safety limits (glucose models share them).
CONSENSUS_TARGET = TargetRange("glucose_mg_dL", 70.0, 180.0, _CONSENSUS)
CONSENSUS_LIMITS = (
    SafetyLimit("glucose_mg_dL", "lower", 70.0, _CONSENSUS),
    SafetyLimit("glucose_mg_dL", "upper", 180.0, _CONSENSUS),
)


@dataclass(frozen=True)
class GlucoseInsulin(PhysiologyModel):
    """IVP glucose-insulin model for type-1 diabetes (see module docstring)."""

    name: str = "glucose_insulin"
    version: str = "1"
    time_unit: str = "min"
    citation: str = (
        "Kanderian SS et al. (2009) J Diabetes Sci Technol 3(5):1047-1057; Bergman RN et al. (1979) "
        "Am J Physiol 236:E667; Hovorka R et al. (2004) Physiol Meas 25:905"
    )
    description: str = "Bergman minimal model + 2-compartment SC insulin + 2-compartment meal absorption"
    states: tuple[State, ...] = (
        State("gut1", "g", "carbohydrate in the first gut compartment", (0.0, None)),
        State("gut2", "g", "carbohydrate in the second gut compartment", (0.0, None)),
        State("insulin_sc", "U", "insulin in the subcutaneous depot", (0.0, None)),
        State("insulin_p", "uU/mL", "plasma insulin concentration", (0.0, None)),
        State("action", "1/min", "effective insulin action on glucose", (0.0, None)),
        # 10 000 mg/dL: several times the highest glucose reported in a living patient.
        State("glucose", "mg/dL", "plasma glucose concentration", (0.0, 10_000.0)),
    )
    parameters: tuple[Parameter, ...] = (
        Parameter(
            "tau_1",
            "min",
            49.0,
            bsv=0.2,
            prior_log_sd=0.5,
            description="SC insulin absorption time constant",
            source=_SRC,
        ),
        Parameter(
            "tau_2", "min", 47.0, bsv=0.2, prior_log_sd=0.5, description="plasma insulin time constant", source=_SRC
        ),
        Parameter("C_I", "mL/min", 2010.0, bsv=0.3, prior_log_sd=0.5, description="insulin clearance", source=_SRC),
        Parameter(
            "p_2", "1/min", 0.0106, bsv=0.3, prior_log_sd=0.5, description="insulin action rate constant", source=_SRC
        ),
        Parameter(
            "S_I", "mL/uU/min", 8.11e-4, bsv=0.4, prior_log_sd=0.7, description="insulin sensitivity", source=_SRC
        ),
        Parameter(
            "GEZI",
            "1/min",
            2.20e-3,
            bsv=0.3,
            prior_log_sd=0.7,
            description="glucose effectiveness at zero insulin",
            source=_SRC,
        ),
        Parameter(
            "EGP",
            "mg/dL/min",
            1.33,
            bsv=0.2,
            prior_log_sd=0.5,
            description="endogenous glucose production",
            source=_SRC,
        ),
        Parameter(
            "V_G", "dL", 253.0, bsv=0.2, prior_log_sd=0.5, description="glucose distribution volume", source=_SRC
        ),
        Parameter(
            "tau_m", "min", 71.0, bsv=0.25, prior_log_sd=0.5, description="meal absorption time constant", source=_SRC
        ),
        Parameter(
            "sigma_glucose",
            "1/sqrt(min)",
            0.004,
            kind="process_noise",
            prior_sd=0.02,
            description="proportional process-noise scale on glucose",
        ),
    )
    observables: tuple[Observable, ...] = (
        Observable("glucose_mg_dL", "mg/dL", "plasma (or sensor) glucose", bridge_scale="log"),
        Observable("insulin_uU_mL", "uU/mL", "plasma insulin"),
    )
    covariates: tuple[Covariate, ...] = (Covariate("BASAL", "U/h", 1.2, "the patient's basal insulin rate"),)
    residual: dict = field(
        default_factory=lambda: {
            "glucose_mg_dL": ResidualError("combined", add=5.0, prop=0.05, add_unit="mg/dL"),
            "insulin_uU_mL": ResidualError("proportional", prop=0.15),
        }
    )
    dose_targets: dict = field(default_factory=lambda: {1: "insulin_sc", 2: "gut1"})
    dose_scale: dict = field(default_factory=lambda: {1: 1.0, 2: 1.0})
    # Boluses in these units; an infusion RATE in the unit per minute (the model's time unit).
    dose_units: dict = field(default_factory=lambda: {1: "U", 2: "g"})
    dose_labels: dict = field(default_factory=lambda: {1: "insulin", 2: "carbohydrate"})
    obs_targets: dict = field(default_factory=lambda: {3: "glucose_mg_dL", 4: "insulin_uU_mL"})
    safety_limits: tuple[SafetyLimit, ...] = CONSENSUS_LIMITS
    target_range: TargetRange | None = CONSENSUS_TARGET
    meal_cmt: int | None = 2
    glucose_observable: str | None = CONSENSUS_TARGET.observable
    # The rule from the fastest rate gives 1.98 min (one unit of insulin action is ~100x its
    # typical value); at 10 min the filter's log-likelihood stays within 2e-3 nats per glucose
    # observation of a 0.5-min reference, a shift of the prediction by ~1e-3 residual SDs
    # (docs/fitting.md, "Step length"; tests/inference/test_ekf_step.py), at a quarter of the cost.
    filter_max_substep: float | None = 10.0
    # The rule from the fastest rate gives a 0.0198-min simulator step for the predictive checks
    # (the same overstated insulin action). At 0.1 min a noise-free day with meals, boluses and a
    # low (S_I 0.5-2x typical, boluses 2.5x) is within 0.063 mg/dL of a 0.005-min reference
    # (0.5 min: 0.33; first order in the step; tests/simulate/test_predictive_step.py), far below
    # the residual error. A day of 600 patients on a 15-min grid: 0.69 s against 1.18 s (2-core CPU).
    predictive_dt: float | None = 0.1

    def default_regimen(self, theta, horizon):
        """Basal rate ``BASAL`` (U/h) from a pump; meals of 50 / 70 / 80 g carbohydrate at 07:00 /
        12:00 / 18:00 every day (time 0 is midnight), each with a bolus of 1 U per 10 g (a fixed
        carbohydrate ratio)."""
        basal = np.asarray(theta["BASAL"], np.float64)
        n = basal.shape[0] if basal.ndim else 1
        doses = []
        for d in range(int(np.ceil(horizon / 1440.0))):
            for hour, carbs in ((7, 50.0), (12, 70.0), (18, 80.0)):
                t = d * 1440.0 + hour * 60.0
                doses += [(t, 2, np.full(n, carbs)), (t, 1, np.full(n, carbs / 10.0))]
        return doses, {1: basal / 60.0}  # U/h -> U/min

    def steady_state(self, theta, basal_u_per_min):
        """Steady state under a constant basal rate (U/min) and no meal."""
        insulin_sc = basal_u_per_min * theta["tau_1"]
        insulin_p = 1e6 * basal_u_per_min / theta["C_I"]
        action = theta["S_I"] * insulin_p
        glucose = theta["EGP"] / (theta["GEZI"] + action)
        zero = 0.0 * glucose
        return {
            "gut1": zero,
            "gut2": zero,
            "insulin_sc": insulin_sc,
            "insulin_p": insulin_p,
            "action": action,
            "glucose": glucose,
        }

    def initial_state(self, theta):
        return self.steady_state(theta, theta["BASAL"] / 60.0)

    def fasting_glucose(self, theta):
        """Steady-state glucose (mg/dL) under the patient's basal rate and no meal."""
        return self.steady_state(theta, theta["BASAL"] / 60.0)["glucose"]

    def basal_for_fasting_glucose(self, theta, target_mg_dl):
        """Basal rate (U/h) whose steady state puts fasting glucose at ``target_mg_dl``.

        The steady state inverted: action = EGP / G - GEZI, plasma insulin = action / S_I, basal
        (U/min) = plasma insulin * C_I / 1e6. Clipped to 0.2-4 U/h, the usual adult pump range
        (a patient whose endogenous production needs no insulin to reach the target still gets
        the smallest rate a pump delivers).
        """
        xp = np if self.numpy_parameters(theta) else jnp
        action = theta["EGP"] / target_mg_dl - theta["GEZI"]
        insulin_p = xp.maximum(action, 1e-4) / theta["S_I"]
        return xp.clip(60.0 * insulin_p * theta["C_I"] / 1e6, 0.2, 4.0)

    @staticmethod
    def numpy_parameters(theta) -> bool:
        """Whether the basal titration gets numpy parameters: numpy in, numpy out (float64 stays
        float64); traced or jax arrays go through jnp."""
        return all(isinstance(theta[k], np.ndarray | float) for k in ("EGP", "GEZI", "S_I", "C_I"))

    def titrated_covariates(self, theta, donor_theta):
        """``BASAL`` is titrated: the new patient gets the basal rate that gives it the donor's fasting glucose.

        Borrowing the donor's basal rate unchanged would pair it with different insulin
        sensitivity and endogenous production, and a sensitive patient would start the
        simulation hypoglycaemic before any policy acts. Matching the fasting glucose keeps the
        cohort's distribution of basal control (how well the fitted subjects' pumps were tuned).
        """
        return {"BASAL": self.basal_for_fasting_glucose(theta, self.fasting_glucose(donor_theta))}

    def individual_parameters(self, population, eta, covariates):
        out = super().individual_parameters(population, eta, covariates)
        cov = {**self.reference_covariates(), **covariates}
        out["BASAL"] = cov["BASAL"] + 0.0 * out["EGP"]
        return out

    def typical_parameters(self):
        out = super().typical_parameters()
        out["BASAL"] = self.reference_covariates()["BASAL"]
        return out

    def drift(self, t, x, theta, rate):
        ra = 1000.0 * x["gut2"] / (theta["V_G"] * theta["tau_m"])
        return {
            "gut1": -x["gut1"] / theta["tau_m"] + rate.get("gut1", 0.0),
            "gut2": (x["gut1"] - x["gut2"]) / theta["tau_m"],
            "insulin_sc": -x["insulin_sc"] / theta["tau_1"] + rate.get("insulin_sc", 0.0),
            "insulin_p": (1e6 * x["insulin_sc"] / (theta["tau_1"] * theta["C_I"]) - x["insulin_p"]) / theta["tau_2"],
            "action": theta["p_2"] * (theta["S_I"] * x["insulin_p"] - x["action"]),
            "glucose": -(theta["GEZI"] + x["action"]) * x["glucose"] + theta["EGP"] + ra,
        }

    def diffusion(self, t, x, theta):
        return {"glucose": theta["sigma_glucose"] * x["glucose"]}

    def observe(self, x, theta):
        return {"glucose_mg_dL": x["glucose"], "insulin_uU_mL": x["insulin_p"]}
