"""Type-1 diabetes IVP model with mean-reverting disturbances and a CGM sensor model.

The glucose-insulin part is :mod:`medsim.models.glucose_insulin` (Kanderian et al. 2009: Bergman
minimal model, two-compartment subcutaneous insulin, two-compartment meal absorption). White
noise on glucose alone treats every structural misfit as independent from minute to minute; real
disturbances (insulin sensitivity drifting over the day, hepatic output rising at night) persist
for hours. Following the stochastic grey-box approach of Duun-Henriksen et al. (2013), which puts
the diffusion on the model's latent states and estimates it with an extended Kalman filter, this
model adds Ornstein–Uhlenbeck (OU) states for those disturbances, and a sensor model so that CGM
readings are not mistaken for plasma glucose::

    d gut1       = (-gut1 / tau_m) dt + meals                                     (g)
    d gut2       = (gut1 - gut2) / tau_m dt                                       (g)
    d insulin_sc = (-insulin_sc / tau_1) dt + insulin delivery                    (U)
    d insulin_p  = (1e6 * insulin_sc / (tau_1 * C_I) - insulin_p) / tau_2 dt      (uU/mL)
    d action     = p_2 * (S_I * insulin_p - action) dt                            (1/min)
    d glucose    = (-(GEZI + exp(si_log) * action) * glucose + EGP_t + R_a) dt
                   + lability * sigma_glucose * glucose dW_G                      (mg/dL)
    d insulin_h1 = (insulin_p - insulin_h1) / (tau_h / 2) dt                      (uU/mL)
    d insulin_h  = (insulin_h1 - insulin_h) / (tau_h / 2) dt                      (uU/mL)
    d si_log     = -si_log / T_SI dt + lability * sigma_SI dW_SI                  (log-multiplier)
    d egp_log    = -egp_log / T_EGP dt + lability * sigma_EGP dW_EGP              (log-multiplier)
    d glucose_ig = (glucose - glucose_ig) / tau_ig dt                             (mg/dL)
    d cgm_error  = -cgm_error / T_CGM dt + sigma_CGM dW_CGM                       (mg/dL)
    R_a          = 1000 * gut2 / (V_G * tau_m)                                    (mg/dL/min)
    EGP_t        = EGP * exp(egp_log) * floor(1 - S_H * (insulin_h - I_REF))       (mg/dL/min)
    floor(u)     = 0.05 * softplus(u / 0.05)   (u for u >> 0.05, smoothly 0 below)

    cgm_mg_dL     = glucose_ig + cgm_error      (+ white residual error)
    glucose_mg_dL = glucose                     (+ fingerstick / SMBG residual error)
    interstitial_mg_dL = glucose_ig             (no measurement: for comparing with a simulator's
                                                 subcutaneous glucose, e.g. simglucose's BG)

The insulin-sensitivity disturbance multiplies the insulin action where it acts on glucose,
which is ``S_I * exp(si_log)`` for a disturbance slower than the action's own time constant
``1 / p_2`` (about 1.5 h, against ``T_SI`` of 5 h). Placed there rather than inside the ``action``
equation it leaves ``action`` a deterministic function of the insulin inputs, so the filter's
covariance block (the states noise can reach) has 5 states instead of 6.

Insulin lowers glucose by two routes with different shapes (Dalla Man et al. 2007): it raises
utilisation in proportion to glucose, and it suppresses hepatic production, which does not
scale with glucose and follows plasma insulin with a delay of hours. The minimal model lumps
both into ``S_I * action * glucose``, whose effect fades as glucose falls, so it cannot follow the
long, deep lows that come after too much insulin, and the misfit shows up as a wandering
glucose-production disturbance. Here production is suppressed by ``insulin_h``, plasma insulin
delayed through two compartments of time constant ``tau_h / 2`` each (mean delay ``tau_h``), as
the UVA/Padova model delays it, and linearly, as its ``kp3 Id``: ``1 - S_H (insulin_h - I_REF)``,
1 at the reference insulin ``I_REF = 10 uU/mL`` (so ``EGP`` keeps its meaning of production at a
typical basal insulin level) and floored smoothly at 0 (width ``HEPATIC_FLOOR``; production
cannot be negative). ``S_H = 0`` gives the minimal model's constant production back. Versions
2-3 used one delay compartment and ``exp(-S_H (insulin_h - I_REF))``, which never shuts
production off: at 30 uU/mL above the reference it leaves 44 % of production where the linear
form leaves 19 %. On a simglucose cohort either change alone left the forecast of a day of 1.5x
boluses where it was; together they let production stay off for hours after a large bolus, which
is how the simulator's long lows arise, and cut the forecast's error below 90 mg/dL by about a
third (version 4; benchmarks/README.md, "Version 4").

Patients differ in how labile their glucose is (Ryan et al. 2004's lability index; Kovatchev et
al. 2005 on glucose variability measured by CGM): a child's glucose wanders far more than most
adults'. One structural parameter, ``lability`` (typical value 1, fixed by a tight prior;
log-normal between-subject SD 0.5), multiplies the three physiological diffusion scales
``sigma_glucose``, ``sigma_SI`` and ``sigma_EGP`` for each subject. With population-level scales
only, the fitted noise is an average that makes every stable patient's forecast too wide and every
labile patient's too narrow. The sensor's ``sigma_CGM`` is the device's and is not scaled.

Patients differ in size, and a child's glucose and insulin move far more per gram and per unit
than an adult's. With body weight known (covariate ``WT``, kg), the glucose volume and the
insulin clearance scale by theory-based allometry (Anderson & Holford 2008, Annu Rev Pharmacol
Toxicol 48:303): ``V_G * (WT / 70) ** 1`` and ``C_I * (WT / 70) ** 0.75``, the exponents fixed, as
is usual when a cohort is too small to estimate them. The between-subject variability is then
around each patient's expected size rather than around a 70-kg adult. ``WT`` is optional: a
cohort without it takes every subject at 70 kg, which is version 2 of this model, and the reader
and ``medsim fit`` say so.

An OU state ``dz = -z / T dt + s dW`` has stationary SD ``s * sqrt(T / 2)`` and autocorrelation
``exp(-lag / T)``; the disturbances are log-multipliers, so insulin sensitivity and endogenous
production stay positive. With every diffusion scale and ``S_H`` at 0 the disturbances stay at 0
and the model is ``glucose_insulin`` with a sensor delay.

Values and sources
------------------
* Glucose-insulin parameters and their between-subject SDs: those of ``glucose_insulin``
  (Kanderian et al. 2009, JDST 3:1047, Table 2).
* ``tau_h`` and ``S_H``: the UVA/Padova model's delayed insulin action on production, ``EGP =
  kp1 - kp2 Gp - kp3 Id``, ``Id`` plasma insulin through two compartments of rate ``ki``
  (Dalla Man et al. 2007, IEEE TBME 54:1740: ``ki`` 0.0079 /min, ``kp3`` 0.009 mg/kg/min per
  pmol/L against a basal production of about 2 mg/kg/min). ``S_H = kp3 * 6 / EGPb = 0.027``
  per uU/mL (6 pmol/L per uU/mL), the linear suppression's slope at basal; ``tau_h = 250`` min,
  the two compartments' mean delay ``2 / ki`` (253 min), prior log-SD 0.5 (one compartment's
  ``tau_h`` fitted 230-340 min in versions 2-3). ``S_H`` prior log-SD 0.7. No between-subject
  variation.
* ``tau_ig``: the blood-to-interstitium transport of Breton & Kovatchev (2008, JDST 2:853, their
  Eq. 1, one first-order lag for physiology and sensor, estimated at about 5 min); other sensor
  studies (Facchinetti et al. 2014, IEEE TBME 61:620) put it between about 5 and 15 min. Typical
  7 min with a prior wide enough for both.
* ``T_CGM`` and ``sigma_CGM``: Breton & Kovatchev's sensor error is AR(1) on a 15-min grid,
  ``e_n = 0.7 (e_{n-1} + v_n)``, so the OU time constant is ``15 / -ln 0.7 = 42`` min; its
  Johnson-SU marginal (lambda 15.96, delta 1.69, gamma -0.54) has an SD of about 12 mg/dL, which
  gives ``sigma_CGM = 12 * sqrt(2 / 42) = 2.6`` mg/dL/sqrt(min). The OU error is Gaussian: the
  skew of the Johnson marginal is not represented (the extended Kalman filter is Gaussian).
* ``T_SI``, ``T_EGP`` and their scales: insulin sensitivity in type-1 diabetes varies within the
  day on a scale of hours (Hinshaw et al. 2013, Diabetes 62:2223; Visentin et al. 2015, DTT
  17:1), and hepatic output rises over the night (the dawn phenomenon). The time constants
  (5 h and 3 h) and the stationary SDs they imply (0.3 on log S_I, 0.2 on log EGP) are modelling
  choices within those scales, not fitted values; their priors are wide and the data inform them.
* ``lability``: typical value 1 with a prior log-SD of 0.05 (the population scales carry the
  level); between-subject SD 0.5, the order of the spread of glycaemic variability indices
  between type-1 patients (Kovatchev et al. 2005, DTT 7:849; Ryan et al. 2004, Diabetes 53:955).
  On 12 simulated patients (benchmarks/README.md) the fitted SD is about 0.25, most children highest.
* ``sigma_glucose``: kept small (half the ``glucose_insulin`` default) for what the disturbances
  do not explain; it also keeps the filter's glucose variance away from 0.
* ``WT``: reference 70 kg, the standard adult of allometric scaling; the exponents 1 (volumes) and
  0.75 (clearances) of Anderson & Holford (2008). The Kanderian et al. typical values are taken to
  be those of that reference adult.
* Residual errors: CGM white error 3 mg/dL on top of the OU error (modelling choice);
  fingerstick 5 mg/dL + 5 % (within the ISO 15197:2013 accuracy of ±15 mg/dL / ±15 % for 95 %
  of readings).

Observation compartments: CMT 3 is the CGM (the compartment a tidy T1D table's glucose column
uses), CMT 4 plasma insulin, CMT 5 fingerstick (SMBG) or reference plasma glucose. Doses as in
``glucose_insulin``: CMT 1 insulin (U; basal infusion RATE in U/min), CMT 2 carbohydrate (g).
The initial state is the steady state under the basal rate (covariate ``BASAL``, U/h) with no
meal and every disturbance at 0, where the interstitial glucose equals plasma glucose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models.base import Covariate, Observable, Parameter, ResidualError, State
from medsim.models.glucose_insulin import GlucoseInsulin

#: Plasma insulin (uU/mL) at which ``EGP`` is the hepatic production (a typical basal level).
I_REF = 10.0
#: Width (share of basal production) of the smooth floor at 0 of the hepatic suppression.
HEPATIC_FLOOR = 0.05
#: Body weight (kg) at which the typical values hold, and the allometric exponents on it.
WT_REF = 70.0
ALLOMETRY = {"V_G": 1.0, "C_I": 0.75}
_CHOICE = "modelling choice (see module docstring)"
_SENSOR = "Breton & Kovatchev 2008, JDST 2:853"


@dataclass(frozen=True)
class GlucoseOU(GlucoseInsulin):
    """IVP model + OU disturbances on S_I and EGP + CGM sensor (see module docstring)."""

    name: str = "t1d_ou"
    version: str = "4"
    citation: str = (
        "Kanderian SS et al. (2009) J Diabetes Sci Technol 3:1047; Duun-Henriksen AK et al. (2013) "
        "J Diabetes Sci Technol 7:431; Breton M & Kovatchev B (2008) J Diabetes Sci Technol 2:853"
    )
    description: str = (
        "glucose_insulin + Ornstein-Uhlenbeck disturbances on insulin sensitivity and glucose production "
        "+ CGM sensor (interstitial delay, autocorrelated error) and a fingerstick observable"
    )
    states: tuple[State, ...] = (
        *GlucoseInsulin.states,
        State("si_log", "1", "log-multiplier on insulin sensitivity (OU disturbance)"),
        State("egp_log", "1", "log-multiplier on endogenous glucose production (OU disturbance)"),
        State("glucose_ig", "mg/dL", "interstitial glucose seen by the CGM"),
        State("cgm_error", "mg/dL", "autocorrelated CGM sensor error (OU)"),
        State("insulin_h", "uU/mL", "plasma insulin as the liver sees it (delayed)"),
        State("insulin_h1", "uU/mL", "first of the two compartments delaying insulin's hepatic action"),
    )
    parameters: tuple[Parameter, ...] = (
        *tuple(p for p in GlucoseInsulin.parameters if p.name != "sigma_glucose"),
        Parameter(
            "tau_ig",
            "min",
            7.0,
            prior_log_sd=0.5,
            description="plasma-to-interstitial glucose time constant (sensor delay)",
            source=_SENSOR + "; Facchinetti et al. 2014, IEEE TBME 61:620",
        ),
        Parameter(
            "tau_h",
            "min",
            250.0,
            prior_log_sd=0.5,
            description="mean delay of insulin's action on hepatic glucose production (two compartments)",
            source="Dalla Man et al. 2007, IEEE TBME 54:1740 (ki 0.0079 /min)",
        ),
        Parameter(
            "S_H",
            "mL/uU",
            0.027,
            prior_log_sd=0.7,
            description="suppression of hepatic glucose production per uU/mL of delayed insulin (log scale)",
            source="Dalla Man et al. 2007 (kp3 / EGPb, pmol/L converted at 6 pmol/L per uU/mL)",
        ),
        Parameter(
            "T_SI",
            "min",
            300.0,
            prior_log_sd=0.7,
            description="time constant of the insulin-sensitivity disturbance",
            source=_CHOICE + "; Hinshaw et al. 2013, Diabetes 62:2223",
        ),
        Parameter(
            "T_EGP",
            "min",
            180.0,
            prior_log_sd=0.7,
            description="time constant of the glucose-production disturbance",
            source=_CHOICE,
        ),
        Parameter(
            "T_CGM",
            "min",
            42.0,
            prior_log_sd=0.5,
            description="time constant of the CGM sensor error",
            source=_SENSOR + " (AR(1) coefficient 0.7 per 15 min)",
        ),
        Parameter(
            "lability",
            "1",
            1.0,
            bsv=0.5,
            prior_log_sd=0.05,
            description="individual multiplier of sigma_glucose, sigma_SI and sigma_EGP (glucose lability)",
            source=_CHOICE + "; Ryan et al. 2004, Diabetes 53:955; Kovatchev et al. 2005, DTT 7:849",
        ),
        Parameter(
            "sigma_glucose",
            "1/sqrt(min)",
            0.002,
            kind="process_noise",
            prior_sd=0.01,
            description="proportional white process noise on glucose",
            source=_CHOICE,
        ),
        Parameter(
            "sigma_SI",
            "1/sqrt(min)",
            0.0245,
            kind="process_noise",
            prior_sd=0.05,
            description="diffusion scale of log S_I (stationary SD = sigma_SI * sqrt(T_SI / 2))",
            source=_CHOICE + " (stationary SD 0.3)",
        ),
        Parameter(
            "sigma_EGP",
            "1/sqrt(min)",
            0.0211,
            kind="process_noise",
            prior_sd=0.05,
            description="diffusion scale of log EGP (stationary SD = sigma_EGP * sqrt(T_EGP / 2))",
            source=_CHOICE + " (stationary SD 0.2)",
        ),
        Parameter(
            "sigma_CGM",
            "mg/dL/sqrt(min)",
            2.6,
            kind="process_noise",
            prior_sd=5.0,
            description="diffusion scale of the CGM error (stationary SD = sigma_CGM * sqrt(T_CGM / 2))",
            source=_SENSOR + " (Johnson-SU error SD about 12 mg/dL)",
        ),
    )
    covariates: tuple[Covariate, ...] = (
        *GlucoseInsulin.covariates,
        Covariate("WT", "kg", WT_REF, "body weight (allometric scaling of V_G and C_I)", optional=True),
    )
    observables: tuple[Observable, ...] = (
        Observable("glucose_mg_dL", "mg/dL", "plasma glucose (fingerstick / SMBG)", bridge_scale="log"),
        Observable("cgm_mg_dL", "mg/dL", "CGM reading: interstitial glucose + sensor error"),
        Observable("insulin_uU_mL", "uU/mL", "plasma insulin"),
        Observable(
            "interstitial_mg_dL", "mg/dL", "interstitial glucose, what the sensor reads before its error (not measured)"
        ),
    )
    residual: dict = field(
        default_factory=lambda: {
            "glucose_mg_dL": ResidualError("combined", add=5.0, prop=0.05, add_unit="mg/dL"),
            "cgm_mg_dL": ResidualError("additive", add=3.0, add_unit="mg/dL"),
            "insulin_uU_mL": ResidualError("proportional", prop=0.15),
        }
    )
    obs_targets: dict = field(default_factory=lambda: {3: "cgm_mg_dL", 4: "insulin_uU_mL", 5: "glucose_mg_dL"})
    # The rule from the fastest rate gives 0.73 min (1174 filter slots for two days of CGM); at
    # 4 min a 15-min CGM record is integrated in 3.75-min steps, within 0.012 nats per reading of
    # a 32-step reference (docs/fitting.md, "Step length"; tests/inference/test_ekf_step.py).
    filter_max_substep: float | None = 4.0
    # The rule from the fastest rate gives a 0.0073-min simulator step for the predictive checks
    # (the action state, typically 0.008 /min, raised by one unit makes glucose look 20x faster
    # than it is). At 0.1 min, noise-free day-3 forecasts of 50 fitted twins x 12 simglucose
    # patients moved by at most 0.50 mg/dL (99th percentile 0.19) from the 0.0073-min step, and a
    # one-day record with meals, boluses and a low is within 0.05 mg/dL of a 0.005-min reference
    # at typical parameters (tests/simulate/test_predictive_step.py). A day's forecast of 50
    # twins x 12 patients: 5 s, against 17 s at the 0.0073-min step (benchmarks/README.md).
    predictive_dt: float | None = 0.1

    def steady_state(self, theta, basal_u_per_min):
        """Steady state under a constant basal rate (U/min), no meal and every disturbance at 0."""
        x = super().steady_state(theta, basal_u_per_min)
        zero = x["gut1"]
        glucose = theta["EGP"] * self.hepatic(theta, x["insulin_p"]) / (theta["GEZI"] + x["action"])
        return {
            **x,
            "glucose": glucose,
            "si_log": zero,
            "egp_log": zero,
            "glucose_ig": glucose,
            "cgm_error": zero,
            "insulin_h": x["insulin_p"],
            "insulin_h1": x["insulin_p"],
        }

    def basal_for_fasting_glucose(self, theta, target_mg_dl):
        """Basal rate (U/h, 0.2-4) whose steady state puts fasting glucose at ``target_mg_dl``.

        ``glucose_insulin``'s closed-form inverse ignores the suppression of production by basal
        insulin, which moves fasting glucose by the factor :meth:`hepatic` of the basal insulin. Here
        :meth:`steady_state` itself is inverted: its glucose falls monotonically as the rate rises,
        so 40 bisection steps on the pump range 0.2-4 U/h (to 4e-12 U/h) find the rate and clip it there.
        """
        as_numpy = self.numpy_parameters(theta)
        theta = {k: jnp.asarray(v) for k, v in theta.items()}
        target = jnp.asarray(target_mg_dl)

        def halve(_, bracket):
            low, high = bracket
            mid = 0.5 * (low + high)
            too_high = self.steady_state(theta, mid / 60.0)["glucose"] < target
            return jnp.where(too_high, low, mid), jnp.where(too_high, mid, high)

        shape = jnp.broadcast_shapes(*(jnp.shape(v) for v in (*theta.values(), target)))
        low, high = jax.lax.fori_loop(0, 40, halve, (jnp.full(shape, 0.2), jnp.full(shape, 4.0)))
        rate = 0.5 * (low + high)
        return np.asarray(rate, np.float64) if as_numpy else rate

    def covariate_effect(self, parameter, population, covariates):
        """Allometric size: ``(WT / 70 kg) ** k`` with ``k`` 1 for ``V_G`` and 0.75 for ``C_I``."""
        exponent = ALLOMETRY.get(parameter)
        if exponent is None:
            return jnp.asarray(1.0)
        return (jnp.asarray(covariates["WT"]) / WT_REF) ** exponent

    @staticmethod
    def hepatic(theta, insulin_h):
        """Multiplier of hepatic production by delayed insulin, 1 at the reference insulin ``I_REF``.

        Linear in the delayed insulin, as the UVA/Padova model's ``kp3 Id``, with a smooth floor at 0
        (``HEPATIC_FLOOR * softplus(u / HEPATIC_FLOOR)``, which differs from ``max(u, 0)`` by at
        most ``HEPATIC_FLOOR * ln 2``, at ``u = 0``, and by less than 1e-6 above ``u = 0.6``)."""
        u = 1.0 - theta["S_H"] * (insulin_h - I_REF)
        return HEPATIC_FLOOR * jax.nn.softplus(u / HEPATIC_FLOOR)

    def drift(self, t, x, theta, rate):
        ra = 1000.0 * x["gut2"] / (theta["V_G"] * theta["tau_m"])
        action = jnp.exp(x["si_log"]) * x["action"]
        egp = theta["EGP"] * jnp.exp(x["egp_log"]) * self.hepatic(theta, x["insulin_h"])
        return {
            "gut1": -x["gut1"] / theta["tau_m"] + rate.get("gut1", 0.0),
            "gut2": (x["gut1"] - x["gut2"]) / theta["tau_m"],
            "insulin_sc": -x["insulin_sc"] / theta["tau_1"] + rate.get("insulin_sc", 0.0),
            "insulin_p": (1e6 * x["insulin_sc"] / (theta["tau_1"] * theta["C_I"]) - x["insulin_p"]) / theta["tau_2"],
            "action": theta["p_2"] * (theta["S_I"] * x["insulin_p"] - x["action"]),
            "glucose": -(theta["GEZI"] + action) * x["glucose"] + egp + ra,
            "si_log": -x["si_log"] / theta["T_SI"],
            "egp_log": -x["egp_log"] / theta["T_EGP"],
            "glucose_ig": (x["glucose"] - x["glucose_ig"]) / theta["tau_ig"],
            "cgm_error": -x["cgm_error"] / theta["T_CGM"],
            "insulin_h1": (x["insulin_p"] - x["insulin_h1"]) / (0.5 * theta["tau_h"]),
            "insulin_h": (x["insulin_h1"] - x["insulin_h"]) / (0.5 * theta["tau_h"]),
        }

    def diffusion(self, t, x, theta):
        # additive noise on the OU states (unbounded, log-scale or signed): zero-free by design
        return {
            "glucose": theta["lability"] * theta["sigma_glucose"] * x["glucose"],
            "si_log": theta["lability"] * theta["sigma_SI"] + 0.0 * x["si_log"],
            "egp_log": theta["lability"] * theta["sigma_EGP"] + 0.0 * x["egp_log"],
            "cgm_error": theta["sigma_CGM"] + 0.0 * x["cgm_error"],
        }

    def observe(self, x, theta):
        return {
            "glucose_mg_dL": x["glucose"],
            "cgm_mg_dL": x["glucose_ig"] + x["cgm_error"],
            "insulin_uU_mL": x["insulin_p"],
            "interstitial_mg_dL": x["glucose_ig"],
        }

    @staticmethod
    def stationary_sd(sigma, time_constant):
        """Stationary SD ``sigma * sqrt(T / 2)`` of an OU state with diffusion ``sigma`` and time constant ``T``."""
        return sigma * jnp.sqrt(time_constant / 2.0)
