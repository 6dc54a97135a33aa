"""The population prior of a model, declared once on its parameters.

Every model parameter carries its prior (:class:`~medsim.models.base.Parameter`: ``typical``,
``bsv``, ``prior_log_sd``, ``prior_sd``) and every observable its residual error; this module is
the one place that turns those declarations into distributions:

=====================  ====================================================  =====================
site                   distribution                                          declared by
=====================  ====================================================  =====================
structural typical     ``LogNormal(log typical, prior_log_sd)``               ``Parameter``
covariate effect       ``Normal(typical, prior_sd)``                          ``Parameter``
process-noise scale    ``HalfNormal(prior_sd)``                               ``Parameter``
BSV SD ``omega_<p>``   ``HalfNormal(OMEGA_SCALE_FACTOR * bsv)``               ``Parameter.bsv``
additive residual SD   ``LogNormal(log add, RESIDUAL_LOG_SD)``                ``ResidualError``
proportional residual  ``LogNormal(log prop, RESIDUAL_LOG_SD)``               ``ResidualError``
=====================  ====================================================  =====================

medsim samples these in numpy (:meth:`Prior.sample`, used by
:meth:`medsim.population.draws.PosteriorDraws.from_prior`); :mod:`medsim.inference.priors` translates the
same records into the fit's sample sites for numpyro and PyMC.

Three populations come from these declarations, and they are kept apart by name:

* :func:`medsim.population.prior.prior_population` — the *typical-value population*: population
  values fixed at the model's typical values, patients spread by the literature BSV
  (``medsim simulate``, the simulator tour);
* :meth:`medsim.population.draws.PosteriorDraws.from_prior` — the *prior-predictive population*:
  population values drawn from this prior, BSV at the literature values (``medsim risk --prior``,
  ``medsim sample --prior``);
* the *fit prior* (:func:`medsim.inference.priors.build_priors`) — the same distributions plus the
  half-normal on each BSV SD, as sample sites. Why these choices (the half-normal
on omega with twice the literature BSV, log-normal residuals with log-SD 1) is argued in
:mod:`medsim.inference.priors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from medsim.models.base import Parameter, ResidualError

#: Scale of the half-normal prior on a BSV SD, as a multiple of the model's (literature) BSV.
OMEGA_SCALE_FACTOR = 2.0
#: Log-SD of the log-normal priors on residual-error parameters.
RESIDUAL_LOG_SD = 1.0

DistributionName = Literal["lognormal", "normal", "halfnormal"]

_HALFNORMAL_MEDIAN = 0.6744897501960817  # Phi^-1(0.75)


@dataclass(frozen=True)
class Prior:
    """One univariate prior: ``lognormal`` (``log X ~ Normal(loc, scale)``), ``normal`` or
    ``halfnormal`` (``|Normal(0, scale)|``, ``loc`` = 0)."""

    distribution: DistributionName
    loc: float
    scale: float

    def __post_init__(self) -> None:
        if self.distribution not in ("lognormal", "normal", "halfnormal"):
            raise ValueError(f"prior distribution must be lognormal, normal or halfnormal, got {self.distribution!r}")
        if not (math.isfinite(self.loc) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(
                f"{self.distribution} prior needs a finite loc and scale > 0, got {self.loc}, {self.scale}"
            )

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` independent draws (one standard normal each, so the stream does not depend on the family)."""
        z = rng.standard_normal(n)
        if self.distribution == "lognormal":
            return np.exp(self.loc + self.scale * z)
        if self.distribution == "normal":
            return self.loc + self.scale * z
        return np.abs(self.scale * z)

    def median(self) -> float:
        if self.distribution == "lognormal":
            return math.exp(self.loc)
        if self.distribution == "normal":
            return self.loc
        return self.scale * _HALFNORMAL_MEDIAN


def parameter_prior(p: Parameter) -> Prior:
    """The prior of a parameter's population value, from its kind (the table in the module docstring)."""
    if p.kind == "structural":
        return Prior("lognormal", math.log(p.typical), p.prior_log_sd)
    if p.kind == "covariate_effect":
        return Prior("normal", p.typical, p.prior_sd)
    return Prior("halfnormal", 0.0, p.prior_sd)


def omega_prior(p: Parameter) -> Prior:
    """The prior of the BSV SD of a structural parameter with ``bsv > 0``."""
    if not p.bsv > 0:
        raise ValueError(f"parameter {p.name!r} has no between-subject variability (bsv = {p.bsv})")
    return Prior("halfnormal", 0.0, OMEGA_SCALE_FACTOR * p.bsv)


def residual_priors(spec: ResidualError) -> dict[str, Prior]:
    """Priors of an observable's residual-error parameters: ``{"add": ..., "prop": ...}`` as its kind has them."""
    out = {}
    if spec.kind in ("additive", "combined"):
        out["add"] = Prior("lognormal", math.log(spec.add), RESIDUAL_LOG_SD)
    if spec.kind in ("proportional", "combined"):
        out["prop"] = Prior("lognormal", math.log(spec.prop), RESIDUAL_LOG_SD)
    return out
