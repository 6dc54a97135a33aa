"""The UVA/Padova type-1 diabetes model: Dalla Man meal model, subcutaneous insulin, CGM sensor.

Glucose-insulin system of Dalla Man, Rizza & Cobelli (2007, IEEE TBME 54:1740, "Meal simulation
model of the glucose-insulin system") with the type-1 adaptations of the UVA/Padova simulator
(Kovatchev et al. 2009, JDST 3:44, with its two-depot subcutaneous insulin kinetics): no
endogenous insulin secretion, insulin enters from a subcutaneous depot, constant hepatic insulin
extraction, and a first-order plasma-to-interstitium glucose transfer seen by the
sensor. Time in min; glucose masses per kg body weight (BW, covariate ``WT``) as in the papers::

    gastro-intestinal tract (g carbohydrate; the papers' mg / 1000)
    d meal     = -eat + meals (CMT 2),   eat = r_eat * tanh(meal / 10 g)
    d stomach  = -kmax * stomach + eat + intake (CMT 6, g/min)          Q_sto1
    d liquid   = kmax * stomach - k_empt(Q, D) * liquid                 Q_sto2
    d gut      = k_empt(Q, D) * liquid - kabs * gut                     Q_gut
    Ra         = 1000 f kabs gut / BW                                   (mg/kg/min)
    k_empt     = kmin + (kmax - kmin)/2 [tanh(a (Q - b D)) - tanh(c (Q - d D)) + 2],
                 Q = stomach + liquid,  a = 5 / (2 D (1 - b)),  c = 5 / (2 D d)

    glucose (mg/kg)
    d Gp = max(EGP, 0) + Ra - Fsnc - E - k1 Gp + k2 Gt          E = ke1 max(Gp - ke2, 0)
    d Gt = -(Vm0 + Vmx X) Gt / (Km0 + Gt) + k1 Gp - k2 Gt
    EGP  = EGPb - kp2 (Gp - Gpb) - kp3 (Id - Ib)                   (= kp1 - kp2 Gp - kp3 Id)

    insulin (plasma and liver pmol/kg, subcutaneous depots in U, actions in pmol/L)
    d Ip  = -(m2 + m4) Ip + m1 Il + 6000 (ka1 S1 + ka2 S2) / BW      I = Ip / Vi
    d Il  = -(m1 + m30) Il + m2 Ip
    d S1  = -(kd + ka1) S1 + insulin delivery (CMT 1, U; RATE U/min)
    d S2  = kd S1 - ka2 S2
    d X   = -p2u X + p2u (I - Ib)
    d I1  = -ki (I1 - I),      d Id = -ki (Id - I1)

    sensor (mg/dL)
    d Gs  = -ksc (Gs - Gp / Vg)

with ``m2 = 0.6 CL / (HEb Vi BW)``, ``m4 = 0.4 CL / (Vi BW)``, ``m30 = HEb m1 / (1 - HEb)`` (Dalla
Man et al. 2007, hepatic extraction ``HEb`` constant in type 1). Depots are in units of insulin so
that a dose does not depend on the patient (the papers' pmol/kg times BW/6000).

Basal state. The papers derive ``kp1``, ``Vm0`` and the basal insulin from steady-state
conditions; here the basal insulin is that of the patient's pump rate (covariate ``BASAL``, U/h):
``Ipb = u_b / (m4 + m2 m30 / (m1 + m30))`` with ``u_b = 100 BASAL / BW`` pmol/kg/min, ``Ib = Ipb /
Vi``; ``Gpb = Gb Vg``; ``Vm0 = (EGPb - Fsnc - Eb)(Km0 + Gtb) / Gtb`` with ``Gtb = (k1 Gpb - EGPb +
Fsnc + Eb) / k2``. Written about the basal values, the model uses insulin only through ``I - Ib``
and ``Id - Ib``, so under its own basal rate every patient rests at its basal glucose ``Gb``
whatever that rate is, and a rate above or below it acts as the deviation. This is the
simulator's convention (each virtual patient's basal rate is the steady-state one).

Gastric emptying and the last meal ``D``. ``k_empt`` depends on the amount ``D`` of the last meal,
which the papers define per meal; a state-space model must carry it. The UVA/Padova simulator (as
implemented in simglucose, its ``Dbar``) sets ``D`` when eating starts to the stomach content
then plus what is eaten from then on, i.e. ``D = Q + (what left the stomach since eating
started)``. Three states carry that without a discontinuity: ``emptied`` (g) counts what left the
stomach; ``emptied_meal`` (g) counts it only around meals and clears between them (rate 0.2 /min);
``meal_memory`` rises at 1 /min while eating and decays at 0.1 /min after. With ``w = tanh((eat +
intake) / 0.5 g/min)`` (eating), ``v = max(w, meal_memory)``, ``c = clip(20 v, 0, 1)`` and ``s =
clip(2 v - 1, 0, 1)``::

    d emptied      = k_empt liquid - k_r s (emptied - emptied_meal)         k_r = 1 /min
    d emptied_meal = c k_empt liquid - 0.2 (1 - c) emptied_meal
    D              = Q + s emptied_meal + (1 - s) emptied

From the first moment of eating ``s = c = 1``: ``D`` counts from there, while ``emptied`` relaxes
onto ``emptied_meal`` (to within ``exp(-7)`` by the time ``s`` returns to 0, about 7 min after the
meal; a 20-g snack included) and carries on from there. The rates keep every explicit step of 1 min
stable. Meals less than ~30 min apart count as one. simglucose updates ``D`` once a minute,
counting the minute's food at its start; the model's ``D`` follows the food continuously. Meals on
CMT 2 are served (state ``meal``, the food on the plate) and eaten at up to ``r_eat = 5`` g/min
(simglucose's eating rate; medsim's T1D table reader puts recorded carbohydrate there);
CMT 6 takes carbohydrate as eaten, as an infusion in g/min (a bolus there is eaten at once and does
not start a meal's ``D``).

Disturbances (process noise) and the CGM. As in :mod:`medsim.models.glucose_ou` (Duun-Henriksen
et al. 2013), Ornstein–Uhlenbeck log-multipliers act on insulin-stimulated utilisation
(``Vmx exp(si_log)``) and on endogenous production (``EGP exp(egp_log)``), with a small
proportional white noise on ``Gp``. The CGM reads ``Gs`` plus the sensor error of Breton &
Kovatchev (2008, JDST 2:853): ``eps = xi + lambda sinh((e - gamma) / delta)`` (a Johnson SU
marginal) driven by a standard-normal autocorrelated ``e``, which they fit as AR(1) on a 15-min
grid, ``e_n = 0.7 (e_{n-1} + v_n)`` (partial autocorrelation cut off after lag 1). Here ``e`` is
an OU state with time constant ``T_CGM = -15 / ln 0.7 = 42.06`` min and diffusion ``sigma_CGM =
sqrt(2 / T_CGM)`` (stationary variance 1), which sampled every 15 min is exactly an AR(1) with
coefficient 0.7; the published recursion itself settles at variance 0.96, which would narrow the
published marginal by 2 %. Simulated CGM readings therefore have the published skewed,
autocorrelated error. An extended Kalman filter linearises the sinh around the predicted ``e``,
i.e. fits a Gaussian OU error (SD ``lambda cosh(gamma / delta) / delta`` = 9.9 mg/dL at ``e = 0``
against 11 for the exact marginal). Fingerstick (SMBG) glucose observes ``Gp / Vg`` with ISO 15197
error (5 mg/dL + 5 %).

Values and sources
------------------
* Typical values: geometric means over the 10 adult virtual patients of the UVA/Padova academic
  simulator as distributed in simglucose 0.2.11 (``simglucose/params/vpatient_params.csv``, MIT
  licence; Xie 2018), used as data; the adolescent and child populations (``group``; registered as
  ``uva_padova_adolescent`` and ``uva_padova_child``) scale them by the ratios of their group means,
  ``bsv`` is the pooled within-group SD of the log values, ``prior_log_sd`` the standard error of a
  10-patient log mean (at least 0.1). The constants ``HEb = 0.6``, ``f = 0.9``, ``ke1 = 0.0005
  /min``, ``ke2 = 339 mg/kg``, ``Fsnc = 1 mg/kg/min`` are the values of every virtual patient (Dalla
  Man et al. 2007: renal threshold and insulin-independent utilisation). ``b`` and ``d`` are clipped
  to (0.01, 0.99), and ``kabs`` (log-SD 1.05 across the table) acts at most at 1.25 /min, just above
  the table's fastest (1.23): beyond it the intestine passes carbohydrate on within a minute, far
  faster than gastric emptying (``kmax`` < 0.07 /min) delivers it, so glucose barely depends on it,
  while the step a simulation needs (``<= 1 / kabs``) would.
* Sensor error: Breton & Kovatchev 2008 (xi -5.47, lambda 15.96 mg/dL, delta 1.69, gamma -0.544,
  AR coefficient 0.7 per 15 min); ``ksc`` per patient from the same table.
* Disturbance time constants and scales: modelling choices as in ``t1d_ou`` (stationary SD 0.3 on
  log insulin sensitivity over 5 h, 0.2 on log EGP over 3 h).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np

from medsim.models.base import Covariate, Observable, Parameter, PhysiologyModel, ResidualError, State
from medsim.models.glucose_insulin import CONSENSUS_LIMITS, CONSENSUS_TARGET

_TABLE = "simglucose 0.2.11 vpatient_params.csv (UVA/Padova academic virtual patients), group geometric mean"
_CHOICE = "modelling choice (see module docstring)"
_SENSOR = "Breton & Kovatchev 2008, JDST 2:853"

#: name: (unit, adult geometric mean, adolescent / adult, child / adult, pooled log-SD, description)
POPULATION = {
    "Gb": ("mg/dL", 142.6, 1.008, 0.974, 0.04, "basal plasma glucose"),
    "EGPb": ("mg/kg/min", 2.488, 1.254, 1.168, 0.16, "basal endogenous glucose production"),
    "Vg": ("dL/kg", 1.843, 0.998, 1.008, 0.08, "glucose distribution volume"),
    "k1": ("1/min", 0.06006, 1.065, 1.085, 0.31, "plasma-to-tissue glucose transfer rate"),
    "k2": ("1/min", 0.1198, 0.969, 0.823, 0.44, "tissue-to-plasma glucose transfer rate"),
    "Vmx": ("mg/kg/min per pmol/L", 0.04582, 1.177, 2.032, 0.42, "insulin action on utilisation"),
    "Km0": ("mg/kg", 235.7, 0.980, 0.966, 0.10, "Michaelis constant of utilisation"),
    "p2u": ("1/min", 0.03223, 1.011, 1.555, 0.34, "rate of insulin action on utilisation"),
    "Vi": ("L/kg", 0.05089, 0.979, 1.074, 0.24, "insulin distribution volume"),
    "CL": ("L/min", 1.156, 0.628, 0.326, 0.10, "insulin clearance"),
    "m1": ("1/min", 0.1892, 0.901, 1.152, 0.34, "liver-to-plasma insulin transfer rate"),
    "ki": ("1/min", 0.007475, 1.383, 1.063, 0.52, "delay of insulin action on production"),
    "kp2": ("1/min", 0.003877, 1.677, 1.028, 0.60, "liver glucose effectiveness"),
    "kp3": ("mg/kg/min per pmol/L", 0.008431, 1.326, 1.221, 0.51, "insulin action on production"),
    "kabs": ("1/min", 0.134, 0.955, 1.083, 1.05, "intestinal absorption rate"),
    "kmax": ("1/min", 0.03708, 0.883, 1.070, 0.45, "maximal gastric emptying rate (and grinding)"),
    "kmin": ("1/min", 0.006491, 1.477, 1.571, 0.44, "minimal gastric emptying rate"),
    "b": ("1", 0.7773, 0.971, 0.968, 0.17, "fraction of the meal at the emptying decrease"),
    "d": ("1", 0.1677, 1.052, 0.806, 0.33, "fraction of the meal at the emptying recovery"),
    "kd": ("1/min", 0.01582, 1.036, 1.028, 0.11, "subcutaneous depot 1 -> 2 transfer rate"),
    "ka1": ("1/min", 0.003278, 1.091, 1.196, 0.31, "absorption rate from depot 1"),
    "ka2": ("1/min", 0.01526, 1.079, 1.199, 0.32, "absorption rate from depot 2"),
    "ksc": ("1/min", 0.09211, 0.894, 0.947, 0.27, "plasma-to-interstitium glucose rate (sensor)"),
}
#: Reference covariates per group: weight (kg; group geometric mean) and basal rate (U/h, group
#: geometric mean of the table's steady-state rate ``u2ss * BW / 100``).
GROUPS = {"adult": (84.6, 1.232), "adolescent": (47.13, 0.750), "child": (35.33, 0.403)}
HEB, F_ABS, KE1, KE2, FSNC = 0.6, 0.9, 0.0005, 339.0, 1.0
EAT_RATE, PLATE_SCALE, EATING_SCALE = 5.0, 10.0, 0.5
RESET_RATE, MEMORY_RISE, MEMORY_DECAY, MEAL_DECAY = 1.0, 1.0, 0.1, 0.2
#: Intestinal absorption faster than this (1/min) acts as ``kabs = KABS_MAX`` (docstring).
KABS_MAX = 1.25
#: Johnson SU sensor error and its AR(1) coefficient per 15 min (Breton & Kovatchev 2008).
JOHNSON = {"xi": -5.47, "lambda": 15.9574, "delta": 1.6898, "gamma": -0.5444}
T_CGM = -15.0 / math.log(0.7)


def _structural() -> tuple[Parameter, ...]:
    return tuple(
        Parameter(
            name,
            unit,
            mean,
            bsv=sd,
            prior_log_sd=max(0.1, round(sd / math.sqrt(10.0), 2)),
            description=text,
            source=_TABLE + "; Dalla Man et al. 2007",
        )
        for name, (unit, mean, _, _, sd, text) in POPULATION.items()
    )


def _noise() -> tuple[Parameter, ...]:
    def p(name, unit, value, prior, text, source, kind="process_noise"):
        kw = {"prior_sd": prior} if kind == "process_noise" else {"prior_log_sd": prior}
        return Parameter(name, unit, value, kind=kind, description=text, source=source, **kw)

    return (
        p("T_SI", "min", 300.0, 0.7, "time constant of the insulin-sensitivity disturbance", _CHOICE, "structural"),
        p("T_EGP", "min", 180.0, 0.7, "time constant of the glucose-production disturbance", _CHOICE, "structural"),
        p("sigma_glucose", "1/sqrt(min)", 0.001, 0.005, "proportional white noise on plasma glucose", _CHOICE),
        p("sigma_SI", "1/sqrt(min)", 0.0245, 0.05, "diffusion of log insulin sensitivity (SD 0.3)", _CHOICE),
        p("sigma_EGP", "1/sqrt(min)", 0.0211, 0.05, "diffusion of log EGP (SD 0.2)", _CHOICE),
        p(
            "sigma_CGM",
            "1/sqrt(min)",
            math.sqrt(2.0 / T_CGM),
            0.25,
            "diffusion of the CGM error driver (stationary variance sigma^2 T_CGM / 2 = 1)",
            _SENSOR,
        ),
    )


@dataclass(frozen=True)
class UvaPadova(PhysiologyModel):
    """UVA/Padova T1D model with OU disturbances and the Breton-Kovatchev CGM (module docstring).

    ``group`` (``"adult"``, ``"adolescent"``, ``"child"``) picks the population: its typical values
    and the reference covariates (weight, basal rate) used where a patient has none. The registry
    has one name per group.
    """

    group: str = "adult"
    name: str = "uva_padova"
    version: str = "1"
    time_unit: str = "min"
    citation: str = (
        "Dalla Man C, Rizza RA, Cobelli C (2007) IEEE Trans Biomed Eng 54:1740; Kovatchev BP et al. (2009) "
        "J Diabetes Sci Technol 3:44; Breton M & Kovatchev B (2008) J Diabetes Sci Technol 2:853"
    )
    description: str = (
        "UVA/Padova T1D model (Dalla Man 2007 meal model, subcutaneous insulin, no secretion) + OU disturbances "
        "on insulin sensitivity and glucose production + CGM with Johnson-SU autocorrelated error"
    )
    states: tuple[State, ...] = (
        State("meal", "g", "carbohydrate served and not yet eaten", (0.0, None)),
        State("stomach", "g", "solid carbohydrate in the stomach (Q_sto1)", (0.0, None)),
        State("liquid", "g", "liquid (ground) carbohydrate in the stomach (Q_sto2)", (0.0, None)),
        State("gut", "g", "carbohydrate in the intestine (Q_gut)", (0.0, None)),
        State("emptied", "g", "carbohydrate emptied from the stomach since the last meal", (0.0, None)),
        State("emptied_meal", "g", "carbohydrate emptied since eating started (clears between meals)", (0.0, None)),
        State("meal_memory", "1", "recent eating: rises while eating, decays over 10 min after", (0.0, 1.0)),
        # 20 000 mg/kg: about 10 000 mg/dL at Vg = 1.84 dL/kg, the bound glucose_insulin uses.
        State("glucose_p", "mg/kg", "glucose mass in plasma and fast tissues (Gp)", (0.0, 20_000.0)),
        State("glucose_t", "mg/kg", "glucose mass in slow tissues (Gt)", (0.0, 20_000.0)),
        State("insulin_p", "pmol/kg", "insulin mass in plasma (Ip)", (0.0, None)),
        State("insulin_l", "pmol/kg", "insulin mass in the liver (Il)", (0.0, None)),
        State("insulin_sc", "U", "insulin in subcutaneous depot 1 (Isc1)", (0.0, None)),
        State("insulin_sc2", "U", "insulin in subcutaneous depot 2 (Isc2)", (0.0, None)),
        State("action", "pmol/L", "remote insulin action on utilisation (X)"),
        State("insulin_1", "pmol/L", "delayed insulin signal, first compartment (I1)", (0.0, None)),
        State("insulin_d", "pmol/L", "delayed insulin acting on production (Id)", (0.0, None)),
        State("glucose_s", "mg/dL", "interstitial (subcutaneous) glucose seen by the CGM", (0.0, 10_000.0)),
        State("si_log", "1", "log-multiplier on insulin-stimulated utilisation (OU)"),
        State("egp_log", "1", "log-multiplier on endogenous glucose production (OU)"),
        State("cgm_noise", "1", "standard-normal driver of the CGM error (OU)"),
    )
    parameters: tuple[Parameter, ...] = field(default_factory=lambda: _structural() + _noise())
    observables: tuple[Observable, ...] = (
        Observable("glucose_mg_dL", "mg/dL", "plasma glucose (fingerstick / SMBG)", bridge_scale="log"),
        Observable("cgm_mg_dL", "mg/dL", "CGM reading: interstitial glucose + Johnson-SU sensor error"),
        Observable("glucose_ig_mg_dL", "mg/dL", "interstitial glucose (CGM without its error)", bridge_scale="log"),
        Observable("insulin_pmol_L", "pmol/L", "plasma insulin"),
    )
    covariates: tuple[Covariate, ...] = ()
    residual: dict = field(
        default_factory=lambda: {
            "glucose_mg_dL": ResidualError("combined", add=5.0, prop=0.05, add_unit="mg/dL"),
            "cgm_mg_dL": ResidualError("additive", add=1.0, add_unit="mg/dL"),
            "glucose_ig_mg_dL": ResidualError("additive", add=1.0, add_unit="mg/dL"),
            "insulin_pmol_L": ResidualError("proportional", prop=0.15),
        }
    )
    dose_targets: dict = field(default_factory=lambda: {1: "insulin_sc", 2: "meal", 6: "stomach"})
    dose_scale: dict = field(default_factory=lambda: {1: 1.0, 2: 1.0, 6: 1.0})
    # served meals (CMT 2) are eaten at up to 5 g/min; CMT 6 is carbohydrate as eaten (RATE in g/min)
    dose_units: dict = field(default_factory=lambda: {1: "U", 2: "g", 6: "g"})
    dose_labels: dict = field(
        default_factory=lambda: {1: "insulin", 2: "carbohydrate served", 6: "carbohydrate eaten"}
    )
    obs_targets: dict = field(
        default_factory=lambda: {3: "cgm_mg_dL", 4: "insulin_pmol_L", 5: "glucose_mg_dL", 7: "glucose_ig_mg_dL"}
    )
    safety_limits: tuple = CONSENSUS_LIMITS
    target_range: object = CONSENSUS_TARGET
    meal_cmt: int | None = 2
    glucose_observable: str | None = CONSENSUS_TARGET.observable
    # The rule from the fastest rate gives a 0.02-min simulator step for the predictive checks. At
    # 0.05 min a noise-free day with meals, boluses and a low (Vmx 0.5-2x typical, boluses 2.5x) is
    # within 0.093 mg/dL of a 0.005-min reference, also with every patient's kabs at KABS_MAX (0.1
    # min: 0.19; 1 min is unstable there; tests/simulate/test_predictive_step.py). A day of 600
    # patients on a 15-min grid: 1.65 s against 2.99 s (2-core CPU).
    predictive_dt: float | None = 0.05

    def default_regimen(self, theta, horizon):
        """Basal rate ``BASAL`` (U/h) from a pump; meals of 50 / 70 / 80 g at 07:00 / 12:00 / 18:00 every
        day (time 0 is midnight), eaten at up to 5 g/min, each with a bolus from the "500 rule"
        carbohydrate ratio (CR = 500 / TDD g/U with TDD = 48 h x BASAL, basal about half the daily
        dose; Walsh & Roberts, *Pumping Insulin*): 8.5 g/U at the adult reference basal rate, 26 g/U
        at the child's."""
        basal = np.atleast_1d(np.asarray(theta["BASAL"], np.float64))
        carb_ratio = 500.0 / (48.0 * basal)  # g/U
        doses = []
        for d in range(int(np.ceil(horizon / 1440.0))):
            for hour, carbs in ((7, 50.0), (12, 70.0), (18, 80.0)):
                t = d * 1440.0 + hour * 60.0
                doses += [(t, 2, np.full(basal.shape, carbs)), (t, 1, carbs / carb_ratio)]
        return doses, {1: basal / 60.0}  # U/h -> U/min

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"group: expected one of {sorted(GROUPS)}, got {self.group!r}")
        weight, basal = GROUPS[self.group]
        covs = (
            Covariate("BASAL", "U/h", basal, "the patient's basal insulin rate"),
            Covariate("WT", "kg", weight, "body weight"),
        )
        object.__setattr__(self, "covariates", covs)

    # ------------------------------------------------------------------ parameters
    def covariate_effect(self, parameter, population, covariates):
        if parameter not in POPULATION or self.group == "adult":
            return jnp.asarray(1.0)
        _, _, adolescent, child, _, _ = POPULATION[parameter]
        return jnp.asarray(adolescent if self.group == "adolescent" else child)

    def individual_parameters(self, population, eta, covariates):
        out = super().individual_parameters(population, eta, covariates)
        cov = {**self.reference_covariates(), **covariates}
        for c in ("BASAL", "WT"):
            out[c] = jnp.asarray(cov[c]) + 0.0 * out["Gb"]
        return out

    def typical_parameters(self):
        return {**super().typical_parameters(), **self.reference_covariates()}

    @staticmethod
    def derived(theta):
        """Rate constants and basal values fixed by the parameters (module docstring)."""
        bw, vi = theta["WT"], theta["Vi"]
        m2 = 0.6 * theta["CL"] / (HEB * vi * bw)
        m4 = 0.4 * theta["CL"] / (vi * bw)
        m30 = HEB * theta["m1"] / (1.0 - HEB)
        ub = 100.0 * theta["BASAL"] / bw  # U/h -> pmol/kg/min (1 U = 6000 pmol)
        ipb = ub / (m4 + m2 * m30 / (theta["m1"] + m30))
        gpb = theta["Gb"] * theta["Vg"]
        uidb = jnp.maximum(theta["EGPb"] - FSNC - KE1 * jnp.maximum(gpb - KE2, 0.0), 1e-3)
        gtb = jnp.maximum((theta["k1"] * gpb - uidb) / theta["k2"], 1.0)
        vm0 = uidb * (theta["Km0"] + gtb) / gtb
        return {"m2": m2, "m4": m4, "m30": m30, "ipb": ipb, "ib": ipb / vi, "gpb": gpb, "gtb": gtb, "vm0": vm0}

    # ------------------------------------------------------------------ dynamics
    def steady_state(self, theta):
        """Basal steady state: no meal, basal insulin from ``BASAL``, glucose ``Gb``, disturbances at 0."""
        dv = self.derived(theta)
        u = theta["BASAL"] / 60.0  # U/min
        sc1 = u / (theta["kd"] + theta["ka1"])
        zero = 0.0 * dv["gpb"]
        return {
            "meal": zero,
            "stomach": zero,
            "liquid": zero,
            "gut": zero,
            "emptied": zero,
            "emptied_meal": zero,
            "meal_memory": zero,
            "glucose_p": dv["gpb"],
            "glucose_t": dv["gtb"],
            "insulin_p": dv["ipb"],
            "insulin_l": dv["m2"] * dv["ipb"] / (theta["m1"] + dv["m30"]),
            "insulin_sc": sc1,
            "insulin_sc2": theta["kd"] * sc1 / theta["ka2"],
            "action": zero,
            "insulin_1": dv["ib"],
            "insulin_d": dv["ib"],
            "glucose_s": theta["Gb"] + zero,
            "si_log": zero,
            "egp_log": zero,
            "cgm_noise": zero,
        }

    def initial_state(self, theta):
        return self.steady_state(theta)

    @staticmethod
    def gastric_emptying(theta, q, meal):
        """``k_empt`` (1/min) at stomach content ``q`` (g) after a meal of ``meal`` g (module docstring)."""
        b = jnp.clip(theta["b"], 0.01, 0.99)
        d = jnp.clip(theta["d"], 0.01, 0.99)
        has_meal = meal > 1e-6
        r = q / jnp.where(has_meal, meal, 1.0)
        shape = jnp.tanh(2.5 * (r - b) / (1.0 - b)) - jnp.tanh(2.5 * (r - d) / d) + 2.0
        k = theta["kmin"] + 0.5 * (theta["kmax"] - theta["kmin"]) * shape
        return jnp.where(has_meal, k, theta["kmax"])

    def drift(self, t, x, theta, rate):
        dv = self.derived(theta)
        bw = theta["WT"]
        eat = EAT_RATE * jnp.tanh(x["meal"] / PLATE_SCALE)
        eating = jnp.tanh((eat + rate.get("stomach", 0.0)) / EATING_SCALE)
        memory = x["meal_memory"]
        recent = jnp.maximum(eating, memory)
        counting = jnp.clip(20.0 * recent, 0.0, 1.0)
        resetting = jnp.clip(2.0 * recent - 1.0, 0.0, 1.0)
        q = x["stomach"] + x["liquid"]
        emptied = resetting * x["emptied_meal"] + (1.0 - resetting) * x["emptied"]
        k_empt = self.gastric_emptying(theta, q, q + emptied)
        emptying = k_empt * x["liquid"]
        kabs = jnp.minimum(theta["kabs"], KABS_MAX)
        ra = 1000.0 * F_ABS * kabs * x["gut"] / bw
        gp, gt = x["glucose_p"], x["glucose_t"]
        insulin = x["insulin_p"] / theta["Vi"]
        egp = jnp.maximum(
            theta["EGPb"] - theta["kp2"] * (gp - dv["gpb"]) - theta["kp3"] * (x["insulin_d"] - dv["ib"]), 0.0
        )
        renal = KE1 * jnp.maximum(gp - KE2, 0.0)
        vmax = dv["vm0"] + theta["Vmx"] * jnp.exp(x["si_log"]) * x["action"]
        rai = 6000.0 * (theta["ka1"] * x["insulin_sc"] + theta["ka2"] * x["insulin_sc2"]) / bw
        return {
            "meal": -eat + rate.get("meal", 0.0),
            "stomach": -theta["kmax"] * x["stomach"] + eat + rate.get("stomach", 0.0),
            "liquid": theta["kmax"] * x["stomach"] - emptying,
            "gut": emptying - kabs * x["gut"],
            "emptied": emptying - RESET_RATE * resetting * (x["emptied"] - x["emptied_meal"]),
            "emptied_meal": counting * emptying - MEAL_DECAY * (1.0 - counting) * x["emptied_meal"],
            "meal_memory": MEMORY_RISE * eating * (1.0 - memory) - MEMORY_DECAY * (1.0 - eating) * memory,
            "glucose_p": egp * jnp.exp(x["egp_log"]) + ra - FSNC - renal - theta["k1"] * gp + theta["k2"] * gt,
            "glucose_t": -vmax * gt / (theta["Km0"] + gt) + theta["k1"] * gp - theta["k2"] * gt,
            "insulin_p": -(dv["m2"] + dv["m4"]) * x["insulin_p"] + theta["m1"] * x["insulin_l"] + rai,
            "insulin_l": -(theta["m1"] + dv["m30"]) * x["insulin_l"] + dv["m2"] * x["insulin_p"],
            "insulin_sc": -(theta["kd"] + theta["ka1"]) * x["insulin_sc"] + rate.get("insulin_sc", 0.0),
            "insulin_sc2": theta["kd"] * x["insulin_sc"] - theta["ka2"] * x["insulin_sc2"],
            "action": -theta["p2u"] * x["action"] + theta["p2u"] * (insulin - dv["ib"]),
            "insulin_1": -theta["ki"] * (x["insulin_1"] - insulin),
            "insulin_d": -theta["ki"] * (x["insulin_d"] - x["insulin_1"]),
            "glucose_s": -theta["ksc"] * (x["glucose_s"] - gp / theta["Vg"]),
            "si_log": -x["si_log"] / theta["T_SI"],
            "egp_log": -x["egp_log"] / theta["T_EGP"],
            "cgm_noise": -x["cgm_noise"] / T_CGM,
        }

    def diffusion(self, t, x, theta):
        # additive noise on the OU states (log-scale or standard-normal): zero-free by design
        return {
            "glucose_p": theta["sigma_glucose"] * x["glucose_p"],
            "si_log": theta["sigma_SI"] + 0.0 * x["si_log"],
            "egp_log": theta["sigma_EGP"] + 0.0 * x["egp_log"],
            "cgm_noise": theta["sigma_CGM"] + 0.0 * x["cgm_noise"],
        }

    @staticmethod
    def sensor_error(e):
        """CGM error (mg/dL) for driver ``e``: ``xi + lambda sinh((e - gamma) / delta)`` (Johnson SU)."""
        return JOHNSON["xi"] + JOHNSON["lambda"] * jnp.sinh((e - JOHNSON["gamma"]) / JOHNSON["delta"])

    def observe(self, x, theta):
        return {
            "glucose_mg_dL": x["glucose_p"] / theta["Vg"],
            "cgm_mg_dL": x["glucose_s"] + self.sensor_error(x["cgm_noise"]),
            "glucose_ig_mg_dL": x["glucose_s"],
            "insulin_pmol_L": x["insulin_p"] / theta["Vi"],
        }
