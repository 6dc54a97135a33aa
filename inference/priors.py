"""The prior of the hierarchical model, in one place, for every backend.

:func:`build_priors` turns a :class:`~medsim.models.base.PhysiologyModel` into a
:class:`PriorSpec`: one :class:`SitePrior` per sample site, with its distribution written as a
name and two numbers so that the numpyro model (:mod:`medsim.inference.hierarchical`) and any other
backend (a PyMC model mirroring it) read the same specification. The specification is stored as
JSON in every posterior file.

The hierarchy (for a subject ``i``; units are the model's)::

    <p>          ~ LogNormal(log typical_p, prior_log_sd_p)      structural typical value
    omega_<p>    ~ HalfNormal(OMEGA_SCALE_FACTOR * bsv_p)         BSV (SD of log p_i), if bsv_p > 0
    eta_<p>[i] ~ Normal(0, omega_<p>), sampled as  u[i] ~ Normal(0, omega_<p> / s_p),
                 eta_<p>[i] = s_p(omega_<p>) * u[i]              (s_p: see "Choices")
    <c>          ~ Normal(typical_c, prior_sd_c)                 covariate effect
    <s>          ~ HalfNormal(prior_sd_s)                        process-noise scale (or fixed at 0),
                                                                 sampled as <s>_signed ~ Normal(0, prior_sd_s),
                                                                 <s> = |<s>_signed|
    res_add_<o>  ~ LogNormal(log add_o, RESIDUAL_LOG_SD)          additive residual SD
    res_prop_<o> ~ LogNormal(log prop_o, RESIDUAL_LOG_SD)         proportional residual CV
    p_i = model.individual_parameters(population, eta_i, covariates_i)

Choices
-------
* ``omega`` ~ HalfNormal with scale twice the model's BSV: the model's value (a literature
  estimate) sits at the 38th percentile, values three times larger keep 13 % prior mass, and the
  density is positive at 0 so a data set without BSV can say so.
* The random effects are non-centred (``w = 0``: ``eta = omega * z``, site
  ``eta_<p>_decentered``) by default because cohorts with a handful of observations per subject
  give funnel-shaped centred posteriors (Betancourt & Girolami 2015, arXiv:1312.0906). When
  every subject's data pin its own parameter down (rich sampling, as in Theoph), the non-centred
  form has the opposite problem: small ``omega`` forces large ``z``, a funnel in the other
  direction. ``PriorSpec.centering`` gives each random effect a weight ``w`` in [0, 1]: ``w = 1``
  samples ``eta_<p>`` itself (centred), ``0 < w < 1`` the partially non-centred
  ``eta_<p>_partial = eta_<p> / omega_<p>^(1 - w)`` (Papaspiliopoulos, Roberts & Sköld 2003,
  *Bayesian Statistics 7*, 307; 2007, *Statist. Sci.* 22:59).
  :func:`medsim.inference.hierarchical.choose_centering` sets such weights from the data.
* The default coordinate (``PriorSpec.scaling``) lets the centring follow ``omega`` itself:
  ``eta_<p> = s(omega) u`` with ``s(omega) = omega / sqrt(1 + I omega^2)``, ``I`` the median
  subject's information about its own random effect (:func:`medsim.inference.hierarchical.data_information`),
  site ``eta_<p>_scaled``. In the normal hierarchy ``s(omega)^2`` is the posterior variance of
  ``eta_<p>`` given ``omega``, so ``u`` has unit conditional variance whatever ``omega`` is: it
  behaves non-centred as ``omega -> 0`` (no funnel where a centred effect has one) and centred
  where the data dominate. Fixed weights keep one of the two funnels; on the theophylline SDE
  fit they left 1 divergent draw at 2 of 5 seeds, the scaled coordinate none (``docs/fitting.md``).
  The prior is the same for every choice; only the sampler's coordinates differ.
* A half-normal process-noise scale is sampled as a signed value ``z ~ Normal(0, prior_sd)``
  with ``<s> = |z|`` (the same half-normal prior). The ODE limit ``<s> = 0`` is then an interior
  point instead of the end of an infinitely long ``log <s>`` tail, which the data cannot cut
  short when they do not detect process noise (theophylline): on the log scale that tail is
  where R-hat of ``sigma_central`` failed. ``<s>_signed`` is the sampler's coordinate only;
  posteriors hold ``<s>``. SVI samples ``log <s>`` instead (:meth:`PriorSpec.with_log_noise`): a
  Gaussian guide on the signed coordinate has to straddle the two mirror-image modes ``+-<s>``,
  and on the glucose cohorts its ``<s>`` came out as wide as the prior.
* Residual-error parameters get log-normal priors centred on the model's defaults with a log-SD
  of 1 (a factor of e either way at one SD): weakly informative, and bounded away from 0, which
  keeps the sampler out of the degenerate corner where process noise explains every residual.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.models.prior import (
    OMEGA_SCALE_FACTOR,
    RESIDUAL_LOG_SD,
    DistributionName,
    Prior,
    omega_prior,
    parameter_prior,
    residual_priors,
)

__all__ = ["OMEGA_SCALE_FACTOR", "RESIDUAL_LOG_SD", "PriorError", "PriorSpec", "SitePrior", "build_priors"]
Role = Literal["typical", "covariate_effect", "process_noise", "omega", "residual_add", "residual_prop"]


class PriorError(ValueError):
    """A prior specification that cannot be built or read."""


@dataclass(frozen=True)
class SitePrior:
    """Prior of one sample site.

    Attributes
    ----------
    site : str
        Sample-site name (``"CL"``, ``"omega_CL"``, ``"res_add_conc"``...).
    distribution : {"lognormal", "normal", "halfnormal"}
        ``lognormal``: ``log X ~ Normal(loc, scale)``; ``normal``: ``Normal(loc, scale)``;
        ``halfnormal``: ``|Normal(0, scale)|`` (``loc`` is 0).
    loc, scale : float
    role : str
        What the site is: ``typical`` (structural typical value), ``covariate_effect``,
        ``process_noise``, ``omega`` (BSV SD), ``residual_add`` or ``residual_prop``.
    target : str
        The model parameter (or, for residual sites, the observable) the site belongs to.
    unit : str
    log_coordinate : bool
        A half-normal process-noise scale sampled on the log scale (as SVI samples it) instead of
        as a signed value (module docstring, "Choices").
    """

    site: str
    distribution: DistributionName
    loc: float
    scale: float
    role: Role
    target: str
    unit: str
    log_coordinate: bool = False

    @property
    def signed(self) -> bool:
        """A half-normal process-noise scale: sampled as ``<site>_signed ~ Normal(0, scale)``,
        the site being its absolute value (module docstring), unless :attr:`log_coordinate`."""
        return self.role == "process_noise" and self.distribution == "halfnormal" and not self.log_coordinate

    @property
    def sampled_site(self) -> str:
        """Name of the sampler's coordinate for this site (``<site>_signed`` or the site itself)."""
        return f"{self.site}_signed" if self.signed else self.site

    def sampled_prior(self):
        """``numpyro.distributions`` object of :attr:`sampled_site` (``Normal(0, scale)`` when
        :attr:`signed`, else the site's prior)."""
        import numpyro.distributions as dist

        return dist.Normal(0.0, self.scale) if self.signed else self.numpyro()

    def numpyro(self):
        """The site's ``numpyro.distributions`` object."""
        import numpyro.distributions as dist

        if self.distribution == "lognormal":
            return dist.LogNormal(self.loc, self.scale)
        if self.distribution == "normal":
            return dist.Normal(self.loc, self.scale)
        return dist.HalfNormal(self.scale)

    def to_unconstrained(self, value):
        """Map a value of :attr:`sampled_site` to the sampler's unconstrained scale (log for
        positive sites, identity for real and signed ones), as
        ``numpyro.distributions.biject_to(support).inv``."""
        return value if self.distribution == "normal" or self.signed else np.log(value)

    def from_unconstrained(self, value):
        """Inverse of :meth:`to_unconstrained` (a signed coordinate stays signed)."""
        return value if self.distribution == "normal" or self.signed else np.exp(value)

    def median(self) -> float:
        """Prior median (used to initialise samplers)."""
        return Prior(self.distribution, self.loc, self.scale).median()


@dataclass(frozen=True)
class PriorSpec:
    """The whole prior of a fit (see the module docstring).

    Attributes
    ----------
    model, model_version : str
    sites : tuple of SitePrior
        Population-level sites, in the order the model samples them.
    random_effects : tuple of str
        Structural parameters with BSV; each has sites ``omega_<p>`` and, per subject,
        ``eta_<p>_decentered`` ~ Normal(0, 1) with ``eta_<p> = omega_<p> * eta_<p>_decentered``.
    fixed : dict name -> float
        Parameters held fixed (the process-noise scales when fitting the ODE limit).
    centering : dict random effect -> float in [0, 1]
        Centring weight ``w`` of each random effect (missing: 0, non-centred): the sampler's
        coordinate is ``eta_<p> / omega_<p>^(1 - w)``, distributed ``Normal(0, omega_<p>^w)``.
        The prior is the same for every ``w``; only the sampler's coordinates differ.
    scaling : dict random effect -> information I >= 0 (1 / log-unit^2)
        Random effects sampled in the scaled coordinate ``eta_<p>_scaled = eta_<p> / s(omega)``,
        ``s(omega) = omega / sqrt(1 + I omega^2)`` (module docstring); these take precedence
        over ``centering``, and an effect may not be in both.
    """

    model: str
    model_version: str
    sites: tuple[SitePrior, ...]
    random_effects: tuple[str, ...]
    fixed: dict[str, float]
    centering: dict[str, float] = field(default_factory=dict)
    scaling: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [p for p in self.centering if p not in self.random_effects]
        if unknown:
            raise PriorError(
                f"cannot centre {unknown}: not random effects of {self.model!r} "
                f"(random effects: {list(self.random_effects)})"
            )
        bad = {p: w for p, w in self.centering.items() if not 0.0 <= w <= 1.0}
        if bad:
            raise PriorError(f"centring weights must lie in [0, 1]; got {bad}")
        unknown = [p for p in self.scaling if p not in self.random_effects]
        if unknown:
            raise PriorError(f"cannot scale {unknown}: not random effects of {self.model!r}")
        bad = {p: i for p, i in self.scaling.items() if not (math.isfinite(i) and i >= 0.0)}
        if bad:
            raise PriorError(f"scaling informations must be finite and >= 0; got {bad}")
        both = sorted(set(self.scaling) & set(self.centering))
        if both:
            raise PriorError(f"random effects {both} have both a centring weight and a scaling")

    def weight(self, parameter: str) -> float:
        """Centring weight of ``parameter``'s random effects (0: non-centred, 1: centred; a
        scaled effect has none and reads 0)."""
        return float(self.centering.get(parameter, 0.0))

    def describe_coordinates(self) -> str:
        """How each random effect is sampled, for people: ``"ka scaled (I 32.4), CL centring 0"``."""
        parts = [
            f"{p} scaled (I {self.scaling[p]:.3g})" if p in self.scaling else f"{p} centring {self.weight(p):g}"
            for p in self.random_effects
        ]
        return ", ".join(parts) or "no random effects"

    @property
    def centered(self) -> tuple[str, ...]:
        """Random effects sampled fully centred (weight 1)."""
        return tuple(p for p in self.random_effects if self.weight(p) == 1.0)

    def eta_site(self, parameter: str) -> str:
        """The sampled site of ``parameter``'s random effects: ``eta_<p>_scaled`` (in
        :attr:`scaling`), ``eta_<p>`` (weight 1), ``eta_<p>_decentered`` (weight 0) or
        ``eta_<p>_partial`` (in between)."""
        if parameter in self.scaling:
            return f"eta_{parameter}_scaled"
        w = self.weight(parameter)
        if w == 1.0:
            return f"eta_{parameter}"
        return f"eta_{parameter}_decentered" if w == 0.0 else f"eta_{parameter}_partial"

    def eta_scales(self, parameter: str, omega):
        """The SD of ``parameter``'s sampled coordinate and the factor that turns it into
        ``eta_<p>``: ``(omega^w, omega^(1 - w))`` for a centring weight ``w`` (exact at 0 and 1),
        ``(sqrt(1 + I omega^2), omega / sqrt(1 + I omega^2))`` when scaled. ``omega`` may be a
        number, a numpy or JAX array or a PyTensor variable."""
        if parameter in self.scaling:
            spread = (1.0 + self.scaling[parameter] * omega**2) ** 0.5
            return spread, omega / spread
        w = self.weight(parameter)
        if w == 0.0:
            return 1.0, omega
        if w == 1.0:
            return omega, 1.0
        return omega**w, omega ** (1.0 - w)

    def with_log_noise(self) -> PriorSpec:
        """The same prior with every process-noise scale sampled on the log scale
        (:attr:`SitePrior.log_coordinate`): the coordinate for a Gaussian variational guide, which
        cannot follow the two mirror-image modes of the signed coordinate."""
        sites = tuple(replace(s, log_coordinate=True) if s.role == "process_noise" else s for s in self.sites)
        return replace(self, sites=sites)

    def fix(self, values: Mapping[str, float]) -> PriorSpec:
        """The same prior with the structural parameters in ``values`` held at those values
        (NONMEM's ``FIX``): their typical-value sites go, and so does their between-subject
        variability (``omega_<p>`` and the subjects' ``eta_<p>``; every subject takes the typical
        value times its covariate effect). Fix what the data cannot inform, at a value from the
        literature, rather than letting it trade off against what they do inform.

        Raises
        ------
        PriorError
            A name that is not a sampled structural parameter of this prior (a process-noise scale,
            a covariate effect, one already fixed, or an unknown name), or a value that is not
            finite and positive.
        """
        typical = {s.target: s for s in self.by_role("typical")}
        problems = []
        for name, value in values.items():
            if name not in typical:
                why = "already fixed" if name in self.fixed else "not a structural parameter of this prior"
                problems.append(f"{name!r} ({why}; structural: {', '.join(sorted(typical)) or 'none'})")
            elif not _positive(value):
                problems.append(f"{name!r} = {value!r} (a structural parameter's value must be finite and > 0)")
        if problems:
            raise PriorError(f"cannot fix {'; '.join(problems)}")
        if not values:
            return self
        held = set(values)
        sites = tuple(s for s in self.sites if not (s.role in ("typical", "omega") and s.target in held))
        return replace(
            self,
            sites=sites,
            random_effects=tuple(p for p in self.random_effects if p not in held),
            fixed={**self.fixed, **{k: float(v) for k, v in values.items()}},
            centering={k: w for k, w in self.centering.items() if k not in held},
            scaling={k: i for k, i in self.scaling.items() if k not in held},
        )

    @property
    def held(self) -> dict[str, float]:
        """Structural parameters held fixed (:meth:`fix`; always > 0), without the ODE limit's
        process-noise scales (always 0)."""
        return {k: v for k, v in self.fixed.items() if v > 0}

    def ode_limit(self) -> PriorSpec:
        """The same prior with every process-noise scale fixed at 0 (as
        ``build_priors(..., process_noise=False)`` builds it)."""
        noise = {s.target: 0.0 for s in self.by_role("process_noise")}
        sites = tuple(s for s in self.sites if s.role != "process_noise")
        return replace(self, sites=sites, fixed={**self.fixed, **noise})

    @property
    def process_noise(self) -> bool:
        return any(s.role == "process_noise" for s in self.sites)

    def by_role(self, *roles: Role) -> tuple[SitePrior, ...]:
        return tuple(s for s in self.sites if s.role in roles)

    def site(self, name: str) -> SitePrior:
        for s in self.sites:
            if s.site == name:
                return s
        raise KeyError(f"no sample site {name!r}; sites: {[s.site for s in self.sites]}")

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "model_version": self.model_version,
                "sites": [asdict(s) for s in self.sites],
                "random_effects": list(self.random_effects),
                "fixed": self.fixed,
                "centering": self.centering,
                "scaling": self.scaling,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> PriorSpec:
        """Inverse of :meth:`to_json`; raises :class:`PriorError` naming a missing or bad field."""
        try:
            raw = json.loads(text)
            return cls(
                model=raw["model"],
                model_version=raw["model_version"],
                sites=tuple(SitePrior(**s) for s in raw["sites"]),
                random_effects=tuple(raw["random_effects"]),
                fixed={k: float(v) for k, v in raw["fixed"].items()},
                # files written before weights: "centered" lists the fully centred effects
                centering={
                    k: float(v) for k, v in raw.get("centering", {p: 1.0 for p in raw.get("centered", ())}).items()
                },
                scaling={k: float(v) for k, v in raw.get("scaling", {}).items()},
            )
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise PriorError(f"not a medsim prior specification: {err!r}") from None


def build_priors(model: PhysiologyModel, observed: Sequence[str], *, process_noise: bool = True) -> PriorSpec:
    """Prior of the hierarchical model for ``model`` fitted to observations of ``observed``.

    Parameters
    ----------
    model : PhysiologyModel
    observed : sequence of str
        Observables the cohort measures; each gets residual-error sites of its model's kind.
    process_noise : bool
        False fixes every process-noise scale at 0 (the ODE limit).

    Raises
    ------
    PriorError
        An observed observable without a residual-error model.
    """

    # The distributions come from the model's declarations (medsim.models.prior); here they become
    # sample sites with a role, in the order the hierarchical model samples them.
    def site(name: str, prior: Prior, role: Role, target: str, unit: str) -> SitePrior:
        return SitePrior(name, prior.distribution, prior.loc, prior.scale, role, target, unit)

    sites = [site(p.name, parameter_prior(p), "typical", p.name, p.unit) for p in model.structural]
    sites += [
        site(p.name, parameter_prior(p), "covariate_effect", p.name, p.unit)
        for p in model.params_of_kind("covariate_effect")
    ]
    fixed: dict[str, float] = {}
    for p in model.params_of_kind("process_noise"):
        if process_noise:
            sites.append(site(p.name, parameter_prior(p), "process_noise", p.name, p.unit))
        else:
            fixed[p.name] = 0.0
    random_effects = tuple(p.name for p in model.structural if p.bsv > 0)
    sites += [site(f"omega_{q}", omega_prior(model.parameter(q)), "omega", q, "1") for q in random_effects]
    for o in observed:
        spec = model.residual.get(o)
        if spec is None:
            raise PriorError(f"model {model.name!r} has no residual-error model for observed observable {o!r}")
        units = {"add": model.observable(o).unit, "prop": "1"}
        for kind, prior in residual_priors(spec).items():
            sites.append(site(f"res_{kind}_{o}", prior, f"residual_{kind}", o, units[kind]))
    return PriorSpec(model.name, model.version, tuple(sites), random_effects, fixed)


def _positive(value) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(number) and number > 0


def parse_fix(entries: Sequence[str]) -> dict[str, float | None]:
    """``NAME`` or ``NAME=VALUE`` entries (``medsim fit --fix``; an entry may hold several,
    comma-separated: ``Vg,k1,kp2=0.004``) as ``{name: value or None}`` (``None``: the model's
    typical value). Checks the form only; :meth:`PriorSpec.fix` checks the names and values
    against the model.

    Raises
    ------
    PriorError
        An empty name, a value that is not a finite positive number, or a name given twice.
    """
    out: dict[str, float | None] = {}
    for entry in (part for given in entries for part in str(given).split(",")):
        name, sep, text = entry.partition("=")
        name = name.strip()
        if not name or any(c.isspace() for c in name):
            raise PriorError(f"--fix expects NAME or NAME=VALUE, comma-separated (e.g. Vg,kp2=0.004), got {entry!r}")
        if sep and not _positive(text):
            raise PriorError(f"--fix {name}: expected a finite value > 0, got {text.strip()!r}")
        value = float(text) if sep else None
        if name in out:
            raise PriorError(f"--fix names {name!r} twice")
        out[name] = value
    return out
