"""One-compartment intravenous pharmacokinetics with weight-scaled CL and V (phenobarbital).

Equations (NONMEM ADVAN1; Grasela & Donn 1985, *Dev Pharmacol Ther* 8:374)::

    d central = (rate - CL / V * central) dt + sigma * central dW     (mg)
    conc      = central / V                                           (mg/L)
    CL = CL_kg * WGT,   V = V_kg * WGT * (1 + theta_apgr * [APGR < 5])

Typical values and between-subject variability are the NONMEM 7.5 FOCE-I estimates for the
"pheno" neonatal data (CL 0.00470 L/h/kg, V 0.984 L/kg, V x 1.159 when APGR < 5,
omega^2 CL 0.0294, omega^2 V 0.0279, proportional sigma^2 0.0132), used as prior centres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np

from medsim.models.base import Covariate, Observable, Parameter, PhysiologyModel, ResidualError, SafetyLimit, State


@dataclass(frozen=True)
class PKIV1Cmt(PhysiologyModel):
    """One-compartment IV PK model with weight and Apgar covariates (see module docstring)."""

    name: str = "pk_iv_1cmt"
    version: str = "1"
    time_unit: str = "h"
    citation: str = (
        "Grasela & Donn (1985) Dev Pharmacol Ther 8:374-383; typical values: NONMEM 7.5 FOCE-I "
        "fit of the pheno data (NONMEM user guide example)"
    )
    description: str = "one compartment, IV bolus/infusion, CL and V scaled by weight, V shifted when APGR < 5"
    states: tuple[State, ...] = (State("central", "mg", "drug amount in the central compartment", (0.0, None)),)
    parameters: tuple[Parameter, ...] = (
        Parameter(
            "CL",
            "L/h/kg",
            0.00470,
            bsv=0.1715,
            prior_log_sd=1.0,
            description="clearance per kg body weight",
            source="NONMEM 7.5 FOCE-I pheno",
        ),
        Parameter(
            "V",
            "L/kg",
            0.984,
            bsv=0.1670,
            prior_log_sd=1.0,
            description="volume per kg body weight",
            source="NONMEM 7.5 FOCE-I pheno",
        ),
        Parameter(
            "theta_apgr",
            "1",
            0.159,
            kind="covariate_effect",
            prior_sd=0.5,
            description="fractional increase of V when APGR < 5",
            source="NONMEM 7.5 FOCE-I pheno",
        ),
        Parameter(
            "sigma_central",
            "1/sqrt(h)",
            0.01,
            kind="process_noise",
            prior_sd=0.1,
            description="proportional process-noise scale on the central amount",
        ),
    )
    observables: tuple[Observable, ...] = (Observable("conc", "mg/L", "serum concentration", bridge_scale="log"),)
    covariates: tuple[Covariate, ...] = (
        Covariate("WGT", "kg", 1.3, "birth weight"),
        Covariate("APGR", "1", 7.0, "Apgar score at 5 minutes"),
    )
    residual: dict = field(default_factory=lambda: {"conc": ResidualError("proportional", prop=0.1149)})
    dose_targets: dict = field(default_factory=lambda: {1: "central"})
    dose_scale: dict = field(default_factory=lambda: {1: 1.0})
    dose_units: dict = field(default_factory=lambda: {1: "mg"})
    dose_labels: dict = field(default_factory=lambda: {1: "intravenous dose"})
    obs_targets: dict = field(default_factory=lambda: {1: "conc"})
    safety_limits: tuple[SafetyLimit, ...] = (
        SafetyLimit(
            "conc", "upper", 40.0, "above 40 mg/L sedation and respiratory depression become likely in neonates"
        ),
    )

    def default_regimen(self, theta, horizon):
        """20 mg/kg IV loading dose at 0 h, then 2.5 mg/kg every 12 h from 12 h (weight ``WGT``)."""
        weight = np.atleast_1d(np.asarray(theta["WGT"], np.float64))
        return [(0.0, 1, 20.0 * weight)] + [(float(t), 1, 2.5 * weight) for t in np.arange(12.0, horizon, 12.0)], {}

    def covariate_effect(self, parameter, population, covariates):
        weight = covariates["WGT"]
        if parameter == "CL":
            return weight
        if parameter == "V":
            return weight * (1.0 + population["theta_apgr"] * (covariates["APGR"] < 5))
        return jnp.asarray(1.0)

    def initial_state(self, theta):
        return {"central": 0.0 * theta["V"]}

    def drift(self, t, x, theta, rate):
        return {"central": rate.get("central", 0.0) - theta["CL"] / theta["V"] * x["central"]}

    def diffusion(self, t, x, theta):
        return {"central": theta["sigma_central"] * x["central"]}

    def observe(self, x, theta):
        return {"conc": x["central"] / theta["V"]}
