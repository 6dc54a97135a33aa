"""One-compartment pharmacokinetics with first-order absorption (oral dosing).

Equations (e.g. Gabrielsson & Weiner, *Pharmacokinetic and Pharmacodynamic Data Analysis*,
5th ed., ch. 2; the model nlmixr2 and NONMEM ADVAN2 use for theophylline)::

    d depot   = -ka * depot dt                                  (mg)
    d central = (ka * depot - CL / V * central) dt + sigma * central dW   (mg)
    conc      = central / V                                     (mg/L)

The process noise is proportional to the central amount (geometric noise), so the amount
never becomes negative. Typical values and between-subject variability are the nlmixr2
FOCEi estimates for R's ``Theoph`` data (ka 1.60 /h, CL 2.75 L/h, V 31.9 L; CV 70/27/14 %;
additive residual SD 0.694 mg/L), used here as prior centres; the process-noise default is a
small value the data are left to inform.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medsim.models.base import Observable, Parameter, PhysiologyModel, ResidualError, SafetyLimit, State


@dataclass(frozen=True)
class PKOral1Cmt(PhysiologyModel):
    """One-compartment oral PK model (see module docstring)."""

    name: str = "pk_oral_1cmt"
    version: str = "1"
    time_unit: str = "h"
    citation: str = (
        "Gabrielsson & Weiner (2016) PK/PD Data Analysis, 5th ed., ch. 2; typical values: "
        "nlmixr2 FOCEi fit of R datasets::Theoph (Fidler et al. 2019, CPT:PSP 8:621)"
    )
    description: str = "one compartment, first-order absorption, proportional process noise"
    states: tuple[State, ...] = (
        State("depot", "mg", "drug amount in the absorption (gut) compartment", (0.0, None)),
        State("central", "mg", "drug amount in the central compartment", (0.0, None)),
    )
    parameters: tuple[Parameter, ...] = (
        Parameter(
            "ka",
            "1/h",
            1.60,
            bsv=0.70,
            prior_log_sd=1.0,
            description="absorption rate constant",
            source="nlmixr2 FOCEi Theoph",
        ),
        Parameter(
            "CL", "L/h", 2.75, bsv=0.27, prior_log_sd=1.0, description="clearance", source="nlmixr2 FOCEi Theoph"
        ),
        Parameter(
            "V",
            "L",
            31.9,
            bsv=0.14,
            prior_log_sd=1.0,
            description="volume of distribution",
            source="nlmixr2 FOCEi Theoph",
        ),
        Parameter(
            "sigma_central",
            "1/sqrt(h)",
            0.05,
            kind="process_noise",
            prior_sd=0.3,
            description="proportional process-noise scale on the central amount",
        ),
    )
    observables: tuple[Observable, ...] = (Observable("conc", "mg/L", "plasma concentration", bridge_scale="log"),)
    residual: dict = field(default_factory=lambda: {"conc": ResidualError("additive", add=0.694, add_unit="mg/L")})
    dose_targets: dict = field(default_factory=lambda: {1: "depot", 2: "central"})
    dose_scale: dict = field(default_factory=lambda: {1: 1.0, 2: 1.0})
    dose_units: dict = field(default_factory=lambda: {1: "mg", 2: "mg"})
    dose_labels: dict = field(default_factory=lambda: {1: "oral dose", 2: "intravenous dose"})
    obs_targets: dict = field(default_factory=lambda: {2: "conc", 1: "conc"})
    safety_limits: tuple[SafetyLimit, ...] = (
        SafetyLimit("conc", "upper", 20.0, "upper end of the usual theophylline therapeutic range (10-20 mg/L)"),
    )

    def default_regimen(self, theta, horizon):
        """320 mg orally every 12 h from 0 h (the ``Theoph`` study dose, ~4.5 mg/kg)."""
        n = np.asarray(theta["V"]).shape[0] if np.ndim(theta["V"]) else 1
        return [(float(t), 1, np.full(n, 320.0)) for t in np.arange(0.0, horizon, 12.0)], {}

    def initial_state(self, theta):
        zero = 0.0 * theta["V"]
        return {"depot": zero, "central": zero}

    def drift(self, t, x, theta, rate):
        absorbed = theta["ka"] * x["depot"]
        return {
            "depot": -absorbed + rate.get("depot", 0.0),
            "central": absorbed - theta["CL"] / theta["V"] * x["central"] + rate.get("central", 0.0),
        }

    def diffusion(self, t, x, theta):
        return {"central": theta["sigma_central"] * x["central"]}

    def observe(self, x, theta):
        return {"conc": x["central"] / theta["V"]}
