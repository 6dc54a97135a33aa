"""Sampler diagnostics via ArviZ: R-hat, bulk/tail ESS, divergences, E-BFMI.

Thresholds follow Vehtari et al. (2021, *Bayesian Analysis* 16:667): rank-normalised split
R-hat <= 1.01 and bulk and tail ESS >= 100 per chain (400 for four chains); no divergent
transitions (Betancourt 2017, arXiv:1701.02434); E-BFMI >= 0.3 for every chain (Betancourt
2016, arXiv:1604.00695). They apply to the sampled coordinates (population sites and the
standardised random effects ``eta_<p>_decentered``); deterministic quantities inherit them.
Variational (SVI) fits have no such diagnostics: :func:`diagnose` says so and checks instead
the ELBO trace (:mod:`medsim.inference.svi_diagnostics`) and the process-noise posterior against the
likelihood profile (:mod:`medsim.inference.noise_profile`); an SVI fit with nothing checked fails.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from medsim.inference.noise_profile import profile_problems
from medsim.inference.svi_diagnostics import elbo_checks

RHAT_MAX = 1.01
ESS_PER_CHAIN_MIN = 100
EBFMI_MIN = 0.3


@dataclass(frozen=True)
class ParameterDiagnostics:
    """Worst-case diagnostics over the elements of one posterior variable."""

    rhat: float
    ess_bulk: float
    ess_tail: float


@dataclass(frozen=True)
class Diagnostics:
    """Convergence diagnostics of a fit.

    Attributes
    ----------
    method : str
        ``"nuts"`` or ``"svi"``.
    applicable : bool
        False for SVI (no Markov chains to diagnose).
    chains, draws : int
        Chains and kept draws per chain.
    rhat_max, ess_bulk_min, ess_tail_min : float or None
        Worst values over all sampled coordinates.
    divergences : int
        Divergent transitions after warmup.
    ebfmi_min : float or None
        Smallest per-chain E-BFMI.
    elbo : float or None
        Final evidence lower bound (SVI), nats.
    parameters : dict name -> ParameterDiagnostics
    problems : tuple of str
        Human-readable failures; empty when every threshold is met.
    thresholds : dict
    checks : tuple of str
        What was checked of an SVI fit (ELBO convergence, process-noise profile), with figures.
    """

    method: str
    applicable: bool
    chains: int
    draws: int
    rhat_max: float | None = None
    ess_bulk_min: float | None = None
    ess_tail_min: float | None = None
    divergences: int = 0
    ebfmi_min: float | None = None
    elbo: float | None = None
    parameters: dict[str, ParameterDiagnostics] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    thresholds: dict[str, float] = field(default_factory=dict)
    checks: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when something was checked and nothing failed."""
        return not self.problems and (self.applicable or bool(self.checks))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def lines(self) -> list[str]:
        """A short human-readable report."""
        if not self.applicable:
            elbo = "n/a" if self.elbo is None else f"{self.elbo:.2f}"
            head = (
                f"{self.method}: MCMC diagnostics (R-hat, ESS, divergences, E-BFMI) not applicable to a variational "
                f"fit; final ELBO {elbo} nats"
            )
            verdict = [f"PROBLEM: {p}" for p in self.problems] or ["all SVI checks passed"]
            note = (
                "note: the posterior is a Gaussian approximation; on glucose cohorts its between-subject SDs were "
                "too narrow in simulation-based calibration (docs/fitting.md): use NUTS for risks that rest on them"
            )
            return [head, *(f"checked: {c}" for c in self.checks), *verdict, note]
        head = (
            f"{self.chains} chains x {self.draws} draws: max R-hat {self.rhat_max:.3f}, min bulk ESS "
            f"{self.ess_bulk_min:.0f}, min tail ESS {self.ess_tail_min:.0f}, {self.divergences} divergences, "
            f"min E-BFMI {self.ebfmi_min:.2f}"
        )
        return [head, *(f"PROBLEM: {p}" for p in self.problems)] if self.problems else [head, "all checks passed"]


def sampled_variables(idata) -> list[str]:
    """Posterior variables that are sampler coordinates (not individual parameters or scaled etas)."""
    names = []
    for name in idata.posterior.data_vars:
        if name.endswith("_i") or (name.startswith("eta_") and not name.endswith("_decentered")):
            continue
        names.append(str(name))
    return names


def diagnose_posterior_attrs(idata, method: str) -> Diagnostics:
    """:func:`diagnose` with what a posterior file stores about its fit (``idata.posterior.attrs``:
    ``elbo``, ``elbo_trace``, ``noise_profile`` of an SVI fit)."""
    attrs = idata.posterior.attrs
    elbo = attrs.get("elbo")
    trace = json.loads(attrs["elbo_trace"]) if "elbo_trace" in attrs else None
    profile = json.loads(attrs["noise_profile"]) if "noise_profile" in attrs else None
    spread = json.loads(attrs["spread_check"]) if "spread_check" in attrs else None
    starts = json.loads(attrs["svi_starts"]) if "svi_starts" in attrs else None
    coarse = int(attrs.get("svi_coarse_steps", 0))
    if coarse and trace is not None:
        trace = trace[coarse:]  # the steps on the fit's own filter: the ones the checks judge
    return diagnose(
        idata,
        method=method,
        elbo=None if elbo is None else float(elbo),
        elbo_trace=trace,
        noise_profile=profile,
        spread_check=spread,
        starts=starts,
        coarse_steps=coarse,
        coarse_offset=json.loads(attrs["svi_coarse_offset"]) if "svi_coarse_offset" in attrs else None,
    )


def diagnose(
    idata,
    *,
    method: str,
    elbo: float | None = None,
    elbo_trace=None,
    noise_profile: dict | None = None,
    spread_check: dict | None = None,
    starts: list[dict] | None = None,
    coarse_steps: int = 0,
    coarse_offset: dict | None = None,
) -> Diagnostics:
    """Diagnostics of the posterior in ``idata`` (an ArviZ InferenceData).

    Parameters
    ----------
    idata : arviz.InferenceData
        With a ``posterior`` group, and ``sample_stats`` for MCMC.
    method : {"nuts", "svi"}
    elbo : float, optional
        Final ELBO of an SVI fit.
    elbo_trace : sequence of float, optional
        An SVI fit's ELBO at every step (:func:`medsim.inference.svi_diagnostics.elbo_checks`); without
        it an SVI fit fails (nothing checked).
    noise_profile : dict, optional
        :func:`medsim.inference.noise_profile.noise_profile` of an SVI fit.
    spread_check : dict, optional
        The stored test of an SVI guide's spread (:func:`medsim.inference.svi_spread.spread_problems`).
    starts : list of dict, optional
        Every start of a multi-start SVI fit, the kept one first
        (:func:`medsim.inference.svi_diagnostics.start_checks`).
    coarse_steps : int
        Steps the SVI fit took on a coarser filter before ``elbo_trace`` (``fit(svi_coarse_steps=)``):
        said in the checks; the trace passed is the rest.
    coarse_offset : dict, optional
        Their optimum's estimated offset (:func:`medsim.inference.svi_diagnostics.coarse_checks`).
    """
    from medsim.inference.assemble import import_arviz

    chains = int(idata.posterior.sizes["chain"])
    draws = int(idata.posterior.sizes["draw"])
    thresholds = {"rhat_max": RHAT_MAX, "ess_min": float(ESS_PER_CHAIN_MIN * chains), "ebfmi_min": EBFMI_MIN}
    if method != "nuts":
        from medsim.inference.noise_profile import PROFILE_GAIN_NATS
        from medsim.inference.svi_diagnostics import (
            COARSE_OFFSET_MAX,
            ELBO_REL_TOL,
            START_SEPARATION,
            coarse_checks,
            start_checks,
        )
        from medsim.inference.svi_spread import TOO_NARROW, TOO_WIDE, spread_problems

        checks, problems, _ = elbo_checks(None if elbo_trace is None else np.asarray(elbo_trace, float))
        if coarse_steps:
            judged = 0 if elbo_trace is None else len(elbo_trace)
            checks.insert(
                0,
                f"ELBO trace checked over the fit's last {judged} steps, on its own filter (the first {coarse_steps} "
                "ran on a coarser one: a start, not judged)",
            )
        if noise_profile:
            problems += profile_problems(noise_profile)
            checks += [
                f"{site} posterior median {p['posterior'][1]:.3g} against its likelihood profile's peak "
                f"{p['peak']:.3g} ({p['gain']:.1f} nats higher)"
                for site, p in noise_profile.items()
            ]
        spread_checks, spread_problems_ = spread_problems(spread_check)
        checks += spread_checks
        problems += spread_problems_
        coarse_lines, coarse_problems = coarse_checks(coarse_offset, coarse_steps)
        checks += coarse_lines
        problems += coarse_problems
        start_lines, start_problems = start_checks(starts)
        checks += start_lines
        problems += start_problems
        thresholds = {
            "elbo_rel_tol": ELBO_REL_TOL,
            "profile_gain_nats": PROFILE_GAIN_NATS,
            "spread_too_narrow": TOO_NARROW,
            "spread_too_wide": TOO_WIDE,
            "start_separation_sds": START_SEPARATION,
            "coarse_offset_max_sds": COARSE_OFFSET_MAX,
        }
        return Diagnostics(
            method=method,
            applicable=False,
            chains=chains,
            draws=draws,
            elbo=elbo,
            problems=tuple(problems),
            thresholds=thresholds,
            checks=tuple(checks),
        )
    az = import_arviz()
    names = sampled_variables(idata)
    rhat = az.rhat(idata, var_names=names)
    bulk = az.ess(idata, var_names=names, method="bulk")
    tail = az.ess(idata, var_names=names, method="tail")
    parameters = {
        n: ParameterDiagnostics(
            rhat=float(np.nanmax(rhat[n].values)),
            ess_bulk=float(np.nanmin(bulk[n].values)),
            ess_tail=float(np.nanmin(tail[n].values)),
        )
        for n in names
    }
    divergences = int(np.sum(idata.sample_stats["diverging"].values))
    ebfmi = np.asarray(az.bfmi(idata), float)
    problems = []
    ess_min = thresholds["ess_min"]
    for n, d in parameters.items():
        if not d.rhat <= RHAT_MAX:
            problems.append(
                f"R-hat of {n} is {d.rhat:.3f} > {RHAT_MAX} (chains disagree; run longer or check the model)"
            )
        if not d.ess_bulk >= ess_min:
            problems.append(f"bulk ESS of {n} is {d.ess_bulk:.0f} < {ess_min:.0f}")
        if not d.ess_tail >= ess_min:
            problems.append(f"tail ESS of {n} is {d.ess_tail:.0f} < {ess_min:.0f}")
    if divergences:
        problems.append(
            f"{divergences} divergent transitions of {chains * draws} (posterior geometry the sampler cannot "
            "follow; raise target_accept or reparametrise)"
        )
    for c, value in enumerate(ebfmi):
        if not value >= EBFMI_MIN:
            problems.append(f"E-BFMI of chain {c} is {value:.2f} < {EBFMI_MIN} (heavy-tailed energy; slow exploration)")
    return Diagnostics(
        method=method,
        applicable=True,
        chains=chains,
        draws=draws,
        rhat_max=max(d.rhat for d in parameters.values()),
        ess_bulk_min=min(d.ess_bulk for d in parameters.values()),
        ess_tail_min=min(d.ess_tail for d in parameters.values()),
        divergences=divergences,
        ebfmi_min=float(np.min(ebfmi)),
        parameters=parameters,
        problems=tuple(problems),
        thresholds=thresholds,
    )
