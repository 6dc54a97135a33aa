"""The held-out calibration gate and model comparison behind ``medsim check``.

``medsim check POSTERIOR --cohort COHORT --heldout-fraction 0.25`` (or ``--heldout-after T``,
``--heldout-last N``) splits every subject's measurements into an earlier, training part and a
later, held-out window; fits the training part with the posterior's recorded settings (model,
priors and coordinates, backend, method, chains, draws, warmup, SVI steps, target acceptance,
seed) unless the posterior was itself fitted to exactly that training part (same data hash);
predicts the window from the recorded doses; and judges the predictions with the calibration
gate (:mod:`medsim.models.gate`). The gate record is written into POSTERIOR (attribute
``calibration``, the file replaced atomically), where ``medsim risk`` reads it.

The gate judges the model *and its fitting procedure*: when POSTERIOR is the full-data fit, the
record says how well the same procedure predicted the later measurements of these subjects.

``medsim check A.nc B.nc --compare`` compares fitted models on the same data: PSIS-LOO of their
stored pointwise log-likelihood, and their stored held-out log scores when both were checked on
the same held-out window; with ``--figures DIR`` it also writes the comparison plot
``DIR/loo_compare.png``.

``medsim check POSTERIOR --report DIR`` writes the pharmacometric fit report
(:mod:`medsim.inference.checks.fit_report`); ``--figures DIR`` writes its figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HELDOUT_DRAWS = 200
"""Posterior draws simulated for the held-out predictions: the interval end points are
empirical quantiles of this many draws, biased by O(1 / draws) in coverage (under 0.01)."""


SHOWN = (
    "coverage_0.5",
    "coverage_0.8",
    "coverage_0.9",
    "coverage_0.95",
    "width_0.9",
    "spread_5_95",
    "crps",
    "log_score",
    "brier",
    "brier_constant",
    "auc",
    "n_unsafe",
    "below_0.9_unsafe",
)


def refit_settings(posterior: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`medsim.inference.fit` that reproduce ``posterior``'s fit."""
    attrs = posterior.attrs
    sampler = json.loads(attrs.get("sampler", "{}") or "{}")
    priors = posterior.priors
    if priors.scaling:
        centered: Any = "auto"
    elif priors.centering:
        centered = dict(priors.centering)
    else:
        centered = ()
    settings = {
        "backend": str(attrs["backend"]),
        "method": str(attrs["method"]),
        "chains": int(attrs.get("chains", 1)),
        "draws": int(attrs.get("draws", 1000)),
        "warmup": int(attrs.get("warmup", 0)),
        "seed": int(attrs.get("seed", 0)),
        "process_noise": bool(int(attrs.get("process_noise", 1))),
        "centered": centered,
    }
    if priors.held:  # structural parameters the fit held fixed (--fix)
        settings["fix"] = dict(priors.held)
    if "svi_steps" in attrs:
        settings["svi_steps"] = int(attrs["svi_steps"])
    if "guide_kind" in sampler:  # SVI fits since the guide became a choice
        settings["guide"] = str(sampler["guide_kind"])
        settings["svi_particles"] = int(sampler["particles"])
        settings["svi_learning_rate"] = float(sampler["learning_rate"])
    if "svi_start" in attrs:  # where SVI started (recorded since it became a choice)
        settings["svi_start"] = str(attrs["svi_start"])
    if "svi_coarse_steps" in attrs:  # coarse first steps (recorded when used)
        settings["svi_coarse_steps"] = int(attrs["svi_coarse_steps"])
        settings["svi_coarse_substeps"] = int(attrs["svi_coarse_substeps"])
    if "target_accept" in sampler:
        settings["target_accept"] = float(sampler["target_accept"])
    substeps = json.loads(attrs.get("filter", "{}") or "{}").get("substeps")
    if substeps:
        settings["substeps"] = int(substeps)
    if "max_substep" in attrs:  # recorded since fits keep their filter step
        settings["max_substep"] = float(attrs["max_substep"])
    return settings


def split_cohort(cohort: Any, *, after: float | None, fraction: float | None, last: int | None):
    """(training cohort, held-out mask, description) for exactly one of the three options."""
    from medsim.inference.checks.heldout import heldout_mask, split_after, split_last
    from medsim.inference.checks.predictive import PredictiveError

    given = [x is not None for x in (after, fraction, last)]
    if sum(given) != 1:
        raise PredictiveError("give exactly one of --heldout-after, --heldout-fraction, --heldout-last")
    if last is not None:
        return split_last(cohort, last), heldout_mask(cohort, last), f"the last {last} measurements of each subject"
    training, held = split_after(cohort, after=after, fraction=fraction)
    what = f"measurements after t = {after:g}" if after is not None else f"the last {fraction:.0%} of each span"
    return training, held, what


def heldout_gate(
    posterior: Any,
    cohort: Any,
    *,
    after: float | None = None,
    fraction: float | None = None,
    last: int | None = None,
    bounds: Sequence[Any] = (),
    seed: int = 0,
    n_draws: int = HELDOUT_DRAWS,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Any, Any, bool]:
    """Run the held-out check of ``posterior``'s model and fitting procedure on ``cohort``.

    Returns
    -------
    (CalibrationGate, training posterior, refitted)
        ``refitted`` is False when ``posterior`` was already the fit of the training part.

    Raises
    ------
    inference.checks.predictive.PredictiveError
        A split that leaves a subject nothing to fit, or bounds the model lacks.
    """
    import jax

    from medsim.inference import fit
    from medsim.inference.checks.calibration_gate import heldout_check
    from medsim.inference.checks.predictive import PredictiveError

    training, held, what = split_cohort(cohort, after=after, fraction=fraction, last=last)
    fitted = str(posterior.attrs.get("data_hash", ""))
    if fitted not in (training.data_hash(), cohort.data_hash()):
        raise PredictiveError(
            "the posterior was fitted to other data than this cohort or its training part (data hashes differ); "
            "give the cohort it was fitted to with --cohort"
        )
    refitted = fitted != training.data_hash()
    trained = posterior
    settings = refit_settings(posterior)
    if refitted:
        trained = fit(training, posterior.model, progress=progress, **settings)
    description = f"{what} ({'refitted with the posterior settings' if refitted else 'posterior fitted without them'})"
    gate = heldout_check(
        trained,
        cohort,
        held,
        key=jax.random.key(seed),
        bounds=bounds,
        n_draws=n_draws,
        description=description,
    )
    return gate, trained, refitted


def print_gate(console: Any, gate: Any) -> None:
    """The gate's verdict, criteria and figures as a table."""
    from rich.table import Table

    color = {"passed": "green", "failed": "red", "not_checked": "yellow"}[gate.status]
    console.print(f"[bold {color}]{gate.summary()}[/]")
    table = Table("criterion", "value", "accepted", "status", show_edge=False)
    for c in gate.criteria:
        lo = "" if c.lower is None else f">= {c.lower:.3g}"
        hi = "" if c.upper is None else f"<= {c.upper:.3g}"
        value = "-" if c.value is None else f"{c.value:.3f}"
        table.add_row(c.name, value, " and ".join(x for x in (lo, hi) if x) or "-", c.status)
    console.print(table)
    console.print(", ".join(f"{k} {gate.figure(k):.3g}" for k in SHOWN if gate.figure(k) is not None))


def comparison(files: Sequence[Path], posteriors: Sequence[Any], *, figure: Path | None = None) -> dict[str, Any]:
    """PSIS-LOO and held-out log scores of fitted models (names are the file names).

    With ``figure``, the PSIS-LOO comparison plot is also written there (PNG, atomically).
    """
    from medsim.inference.checks.loo import loo_compare

    names = [str(f) for f in files]
    loo = loo_compare(dict(zip(names, posteriors, strict=True)))
    if figure is not None:
        from medsim.inference.checks.figures import save_figure
        from medsim.inference.checks.loo import plot_loo_compare

        save_figure(plot_loo_compare(loo), figure)
    rows = {}
    for name, post in zip(names, posteriors, strict=True):
        elpd_diff, dse = loo.difference(name)
        row = loo.table.loc[name]
        gate = post.calibration()
        rows[name] = {
            "elpd_loo": float(row["elpd_loo"]),
            "se": float(row["se"]),
            "elpd_diff": elpd_diff,
            "dse": dse,
            "pareto_k_above": int(loo.pareto_k_above[name]),
            "heldout_log_score": None if gate is None else gate.figure("log_score"),
            "heldout_points": None if gate is None else gate.n_points,
            "heldout": None if gate is None else gate.heldout,
            "heldout_data_hash": None if gate is None else gate.data_hash,
            "gate": "not_checked" if gate is None else gate.status,
        }
    # Log scores compare only on the same held-out points: same cohort, same window, same count.
    windows = {(r["heldout_data_hash"], r["heldout"].split(" (")[0], r["heldout_points"]) for r in rows.values()}
    same = all(r["heldout_log_score"] is not None for r in rows.values()) and len(windows) == 1
    return {
        "best_loo": loo.best(),
        "unit": loo.unit,
        "n_points": loo.n_points,
        "models": rows,
        "heldout_comparable": same,
    }


def write_fit_outputs(
    path: Path, posterior: Any, cohort: Any, *, report: Path | None, figures: Path | None, seed: int, draws: int
) -> list[str]:
    """Build the fit report once; write it (``report``) and its figures (``figures``); lines to print.

    Without the fitted ``cohort`` only the sampler plots go into ``figures`` (the VPC, individual
    fits and goodness of fit simulate the cohort).

    Raises
    ------
    inference.checks.predictive.PredictiveError
        A cohort the model cannot simulate.
    """
    from medsim.inference.checks.fit_report import build_fit_report, fit_figures, write_fit_figures, write_fit_report
    from medsim.inference.diagnostic_figures import write_figures

    if cohort is None:
        written = write_figures(posterior, figures)
        note = "(VPC, individual fits and goodness of fit need the fitted cohort: give --cohort)"
        return ["figures: " + ", ".join(str(p) for p in written) + " " + note]
    built = build_fit_report(posterior, cohort, seed=seed, n_draws=draws, source=str(path))
    pngs = fit_figures(built, posterior)
    lines = []
    if figures is not None:
        lines.append("figures: " + ", ".join(str(p) for p in write_fit_figures(pngs, figures)))
    if report is not None:
        files = write_fit_report(built, report, pngs)
        lines.append(f"fit report: {files['html']} (and {files['markdown'].name}, {files['json'].name})")
    return lines
