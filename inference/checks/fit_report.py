"""The pharmacometric fit report of a posterior (what ``medsim check POSTERIOR --report DIR`` writes).

One record, :class:`FitReport`, gathers what a pharmacometrician reads before trusting a fit:
the parameter table (posterior median and 94 % HDI with units, R-hat and ESS, ``eta`` shrinkage),
the sampler diagnostics (:mod:`medsim.inference.diagnostics`), the VPC (prediction-corrected where
doses differ, :mod:`medsim.inference.checks.vpc`), the individual fits
(:mod:`medsim.inference.checks.individual`), the goodness-of-fit panels with CWRES
(:mod:`medsim.inference.checks.gof`), the stored held-out calibration gate and PSIS-LOO
(:mod:`medsim.inference.checks.loo`). :func:`fit_figures` renders its figures (the same PNGs
``medsim check --figures`` writes) and :func:`write_fit_report` writes the folder as one unit:
``fit_report.json``, ``fit_report.md``, ``fit_report.html`` (self-contained) and ``fit_figures/``.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from medsim.inference.checks.gof import GoodnessOfFit, goodness_of_fit, plot_goodness_of_fit
from medsim.inference.checks.individual import IndividualFits, individual_fits, plot_individual_fits
from medsim.inference.checks.loo import LooError, LooSummary, loo_summary
from medsim.inference.checks.predictive import PredictiveError
from medsim.inference.checks.shrinkage import epsilon_shrinkage, eta_shrinkage
from medsim.inference.checks.vpc import VPCResult, plot_vpc, vpc
from medsim.io import atomic_folder, check_folder, write_bytes, write_text

#: What a fit-report folder holds; other files in an existing folder are kept.
FIT_REPORT_ENTRIES = ("fit_report.json", "fit_report.md", "fit_report.html", "fit_figures")
TRACE_DRAWS = 250
"""Draws per chain shown in the report's trace plot (thinned evenly)."""
FIGURE_ORDER = ("vpc", "individual_fits", "goodness_of_fit", "trace", "rank", "energy")


class FitReportError(ValueError):
    """A cohort that is not the one the posterior was fitted to (the message names both hashes)."""


@dataclass(frozen=True)
class FitReport:
    """Everything the fit report shows (see the module docstring).

    Attributes
    ----------
    source : str
        The posterior file (or a name for an in-memory posterior).
    provenance : dict
        Model, version, cohort, data hash, backend, method, chains, draws, warmup, seed,
        wall time (s), created.
    parameters : dict name -> dict
        :func:`medsim.inference.summary.summarize` rows plus ``description`` and ``kind``.
    eta_shrinkage : dict random effect -> float or None
    epsilon_shrinkage : float or None
    diagnostics : inference.diagnostics.Diagnostics
    vpc : VPCResult
    fits : IndividualFits
    gof : GoodnessOfFit
    gate : CalibrationGate or None
        The stored held-out check (None: never checked).
    loo : LooSummary or None
    loo_problem : str
        Why PSIS-LOO could not be computed ("" when it was).
    seed, n_draws : int
        Seed and posterior draws of the simulations.
    """

    source: str
    provenance: dict[str, Any]
    parameters: dict[str, dict[str, Any]]
    eta_shrinkage: dict[str, float | None]
    epsilon_shrinkage: float | None
    diagnostics: Any
    vpc: VPCResult
    fits: IndividualFits
    gof: GoodnessOfFit
    gate: Any
    loo: LooSummary | None
    loo_problem: str
    seed: int
    n_draws: int

    def cwres_summary(self) -> dict[str, float | int | None]:
        """Mean, SD and share outside +-1.96 of the finite CWRES (expected 0, 1, 0.05), and their count."""
        values = self.gof.cwres[np.isfinite(self.gof.cwres)]
        if values.size < 2:
            return {"n": int(values.size), "mean": None, "sd": None, "outside_1.96": None}
        return {
            "n": int(values.size),
            "mean": float(values.mean()),
            "sd": float(values.std(ddof=1)),
            "outside_1.96": float(np.mean(np.abs(values) > 1.96)),
        }

    def to_dict(self) -> dict[str, Any]:
        """The report's tables (no per-measurement arrays) as JSON-ready values; NaN becomes None."""
        v = self.vpc
        data = {
            "source": self.source,
            "provenance": self.provenance,
            "parameters": self.parameters,
            "eta_shrinkage": self.eta_shrinkage,
            "epsilon_shrinkage": self.epsilon_shrinkage,
            "diagnostics": self.diagnostics.to_dict(),
            "vpc": {
                "prediction_corrected": v.prediction_corrected,
                "n_excluded": v.n_excluded,
                "percentiles": v.percentiles.tolist(),
                "level": v.level,
                "n_replicates": v.n_replicates,
                "bins": len(v.bin_time),
                "observed_percentiles": int(np.isfinite(v.observed).sum()),
                "outside": int(v.outside.sum()),
                "observable": v.observable,
                "unit": v.unit,
            },
            "cwres": self.cwres_summary(),
            "calibration": None if self.gate is None else json.loads(self.gate.to_json()),
            "loo": None if self.loo is None else vars(self.loo),
            "loo_problem": self.loo_problem,
            "seed": self.seed,
            "n_draws": self.n_draws,
        }
        return _finite(data)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _meaning(model: Any, site: Any) -> str:
    """What a sampled site is, in words."""
    if site is None:
        return ""
    if site.role == "omega":
        return f"between-subject SD of log {site.target}"
    if site.role == "residual_add":
        return f"additive residual SD of {site.target}"
    if site.role == "residual_prop":
        return f"proportional residual SD of {site.target} (CV)"
    return model.parameter(site.target).description


def check_fitted_cohort(posterior: Any, cohort: Any) -> None:
    """Raise :class:`FitReportError` unless ``cohort`` is the data ``posterior`` was fitted to."""
    fitted = str(posterior.attrs.get("data_hash", ""))
    if fitted != cohort.data_hash():
        raise FitReportError(
            f"the cohort (data hash {cohort.data_hash()[:12]}) is not the data the posterior was fitted to "
            f"(data hash {fitted[:12]}); give the fitted cohort"
        )


def build_fit_report(
    posterior: Any,
    cohort: Any,
    *,
    seed: int = 0,
    n_draws: int = 200,
    dt: float | None = None,
    source: str = "",
) -> FitReport:
    """Compute the fit report of ``posterior`` on its fitted ``cohort``.

    Parameters
    ----------
    posterior : inference.Posterior
    cohort : Cohort
        The data it was fitted to (checked by data hash).
    seed : int
        Seed of the simulations (the same seed gives the same report).
    n_draws : int
        Posterior draws simulated for the individual fits and IPRED; simulated studies of the VPC.
    dt : float, optional
        Simulator step (default :func:`medsim.inference.checks.predictive.default_dt`).
    source : str
        The posterior file, for the title.

    Raises
    ------
    FitReportError
        ``cohort`` is not the fitted data.
    PredictiveError
        The cohort cannot be simulated (several observables, missing covariates).
    """
    from medsim.inference.summary import summarize

    check_fitted_cohort(posterior, cohort)
    k_fits, k_vpc, k_gof = jax.random.split(jax.random.key(seed), 3)
    draws = posterior.draws()
    fits = individual_fits(draws, cohort, key=k_fits, n_draws=n_draws, dt=dt)
    check = vpc(draws, cohort, key=k_vpc, n_replicates=n_draws, dt=dt)
    gof = goodness_of_fit(draws, cohort, key=k_gof, n_draws=n_draws, dt=dt)
    sites = {s.site: s for s in posterior.priors.sites}
    parameters = {}
    for name, row in summarize(posterior).items():
        site = sites.get(name)
        kind = "" if site is None else site.role
        parameters[name] = {**row, "kind": kind, "description": _meaning(posterior.model, site)}
    for name, value in posterior.priors.held.items():  # held fixed in the fit (--fix): not estimated
        p = posterior.model.parameter(name)
        parameters[name] = {
            **dict.fromkeys(("mean", "median", "hdi_low", "hdi_high"), value),
            "sd": 0.0,
            "hdi_prob": None,
            **dict.fromkeys(("r_hat", "ess_bulk", "ess_tail")),
            "unit": p.unit,
            "kind": "fixed",
            "description": p.description,
        }
    try:
        loo, problem = loo_summary(posterior), ""
    except LooError as err:
        loo, problem = None, str(err)
    attrs = posterior.attrs
    keys = ("model_name", "model_version", "cohort_name", "data_hash", "backend", "method", "chains", "draws")
    provenance = {k: attrs[k] for k in (*keys, "warmup", "seed", "wall_time_s", "created") if k in attrs}
    if posterior.assumed_covariates:  # optional covariates the cohort lacked, at the model's reference
        provenance["assumed_covariates"] = posterior.assumed_covariates
    return FitReport(
        source=source,
        provenance=_finite({k: v.item() if hasattr(v, "item") else v for k, v in provenance.items()}),
        parameters=parameters,
        eta_shrinkage=eta_shrinkage(draws),
        epsilon_shrinkage=epsilon_shrinkage(gof.iwres),
        diagnostics=posterior.diagnostics(),
        vpc=check,
        fits=fits,
        gof=gof,
        gate=posterior.calibration(),
        loo=loo,
        loo_problem=problem,
        seed=seed,
        n_draws=n_draws,
    )


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def fit_figures(report: FitReport, posterior: Any | None = None, *, log_y: bool = False) -> dict[str, bytes]:
    """The report's figures as PNG bytes, in :data:`FIGURE_ORDER`.

    ``vpc``, ``individual_fits`` and ``goodness_of_fit`` always; with ``posterior`` also its
    sampler diagnostics (:func:`medsim.inference.diagnostic_figures.diagnostic_pngs`: ``trace``, and for
    NUTS ``rank`` and ``energy``).
    """
    out = {
        "vpc": _png(plot_vpc(report.vpc, log_y=log_y)),
        "individual_fits": _png(plot_individual_fits(report.fits, log_y=log_y)),
        "goodness_of_fit": _png(plot_goodness_of_fit(report.gof)),
    }
    if posterior is not None:
        from medsim.inference.diagnostic_figures import diagnostic_pngs

        out.update(diagnostic_pngs(posterior, max_draws=TRACE_DRAWS))
    return {k: out[k] for k in FIGURE_ORDER if k in out}


def write_fit_figures(figures: dict[str, bytes], folder: str | os.PathLike) -> list[Path]:
    """Write ``figures`` into ``folder`` (created if needed) as ``<name>.png``, each file atomically."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    return [write_bytes(out / f"{stem}.png", png) for stem, png in figures.items()]


def check_fit_report_folder(out_dir: str | os.PathLike) -> None:
    """Raise :class:`medsim.io.FolderWriteError` now if :func:`write_fit_report` would refuse ``out_dir``."""
    check_folder(out_dir, owned=FIT_REPORT_ENTRIES)


def write_fit_report(report: FitReport, out_dir: str | os.PathLike, figures: dict[str, bytes]) -> dict[str, Path]:
    """Write the report into ``out_dir`` as one unit (:func:`medsim.io.atomic_folder`).

    ``figures`` come from :func:`fit_figures`; the trace plot is left out when rank plots are
    there (``medsim check --figures`` still writes it).

    Returns
    -------
    dict
        ``json``, ``markdown``, ``html`` -> Path, and ``figures`` -> tuple of Path.
    """
    from medsim.inference.checks.fit_report_render import render_html, render_markdown

    out = Path(out_dir)
    if "rank" in figures:  # rank plots show mixing better (Vehtari et al. 2021); a trace of 4000 draws is 0.7 MB
        figures = {k: v for k, v in figures.items() if k != "trace"}
    rel = {stem: f"fit_figures/{stem}.png" for stem in figures}
    with atomic_folder(out, owned=FIT_REPORT_ENTRIES) as tmp:
        for stem, png in figures.items():
            write_bytes(tmp / rel[stem], png)
        write_text(tmp / "fit_report.json", json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
        write_text(tmp / "fit_report.md", render_markdown(report, rel))
        write_text(tmp / "fit_report.html", render_html(report, figures))
    return {
        "json": out / "fit_report.json",
        "markdown": out / "fit_report.md",
        "html": out / "fit_report.html",
        "figures": tuple(out / p for p in rel.values()),
    }


__all__ = [
    "FIT_REPORT_ENTRIES",
    "FitReport",
    "FitReportError",
    "PredictiveError",
    "build_fit_report",
    "check_fit_report_folder",
    "check_fitted_cohort",
    "fit_figures",
    "write_fit_figures",
    "write_fit_report",
]
