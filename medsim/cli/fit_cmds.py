"""``medsim fit`` (fit a hierarchical SDE model to a cohort) and ``medsim check`` (diagnose a fit).

``medsim check`` also runs the held-out calibration gate and compares fits
(:mod:`medsim.cli.check_cmds`). Exit status: 0 when the fit's diagnostics (and a stored
calibration gate) pass, 1 when they fail (the posterior file is still
written, flagged with ``diagnostics_ok = 0``), 2 for usage errors (unknown dataset, model,
backend or method; unreadable table or posterior file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from medsim.cli.app import app
from medsim.cli.app import fail as _fail
from medsim.cli.outputs import output_dir, output_file


def _load_cohort(cohort: str):
    """A bundled dataset by name, or an event table by path."""
    import medsim.data as data

    path = Path(cohort)
    if path.exists():
        try:
            return data.read_event_table(path)
        except (ValueError, OSError) as err:
            _fail(str(err))
    try:
        return data.load(cohort)
    except data.UnknownDatasetError as err:
        _fail(f"{cohort!r} is neither an existing event-table file nor a bundled dataset: {err}")


def _request_host_devices(chains: int) -> None:
    """Ask XLA for one CPU device per core (at most one per chain); only effective before JAX
    starts its backend. More devices than cores would only make the chains share the cores."""
    flag = f"--xla_force_host_platform_device_count={max(1, min(chains, os.cpu_count() or 1))}"
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f)
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


def _print_diagnostics(console, posterior, diagnostics) -> None:
    from rich.table import Table

    from medsim.inference.summary import summarize

    rows = summarize(posterior)
    table = Table("parameter", "unit", "median", "94% HDI", "R-hat", "ESS bulk", "ESS tail", show_edge=False)
    for name, r in rows.items():
        table.add_row(
            name,
            r["unit"],
            f"{r['median']:.4g}",
            f"[{r['hdi_low']:.4g}, {r['hdi_high']:.4g}]",
            "-" if r["r_hat"] is None else f"{r['r_hat']:.3f}",
            "-" if r["ess_bulk"] is None else f"{r['ess_bulk']:.0f}",
            "-" if r["ess_tail"] is None else f"{r['ess_tail']:.0f}",
        )
    console.print(table)
    held = posterior.priors.held
    if held:
        console.print("held fixed (not estimated): " + ", ".join(f"{k} = {v:.4g}" for k, v in held.items()))
    assumed = posterior.assumed_covariates
    if assumed:
        console.print(
            "[yellow]covariates not in the cohort, every subject at the model's reference:[/] "
            + ", ".join(f"{k} = {v:g}" for k, v in assumed.items())
        )
    for line in diagnostics.lines():
        console.print(line)


def _announce_failure(console, diagnostics, path: Path) -> None:
    console.print(
        f"[bold white on red] DIAGNOSTICS FAILED [/] [bold red]{len(diagnostics.problems)} problem(s); the posterior "
        f"was written to {path} but is flagged (diagnostics_ok = 0). Do not use it for decisions before "
        "fixing the fit (more warmup/draws, or a reparametrised model).[/]"
    )


@app.command("fit")
def fit_command(
    cohort: str = typer.Argument(..., help="Bundled dataset name (see `medsim datasets`) or an event-table path."),
    model: str = typer.Option(..., "--model", "-m", help="Registered model name (see `medsim models`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Posterior file to write (netCDF, e.g. posterior.nc)."),
    backend: str = typer.Option("numpyro", "--backend", help="numpyro (nuts, svi) or pymc (nuts)."),
    method: str = typer.Option("nuts", "--method", help="nuts (exact up to Monte Carlo error) or svi (fast)."),
    chains: int = typer.Option(4, "--chains", min=1, help="NUTS chains."),
    draws: int = typer.Option(1000, "--draws", min=1, help="Kept draws per chain."),
    warmup: int = typer.Option(1000, "--warmup", min=0, help="Warmup iterations per chain."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same draws)."),
    no_process_noise: bool = typer.Option(False, "--no-process-noise", help="Fit the ODE limit."),
    chain_method: str = typer.Option(
        "parallel", "--chain-method", help="parallel (chains spread over the CPU cores), vectorized or sequential."
    ),
    svi_steps: int = typer.Option(5000, "--svi-steps", min=1, help="Optimisation steps of --method svi."),
    guide: str = typer.Option(
        "mvn", "--guide", help="SVI guide: mvn (full-covariance normal) or lowrank (low-rank plus diagonal)."
    ),
    svi_particles: int = typer.Option(1, "--svi-particles", min=1, help="Monte Carlo draws per SVI ELBO gradient."),
    svi_learning_rate: float = typer.Option(
        0.01, "--svi-learning-rate", min=1e-6, help="Adam's first step size (decays tenfold over the run)."
    ),
    svi_start: str = typer.Option(
        "prior",
        "--svi-start",
        help="Where SVI starts: prior (the prior medians), ode (a first fit of the ODE limit, whose random effects "
        "carry the differences between subjects), or prior,ode (both; the best ELBO is kept and optima of equal "
        "ELBO that disagree fail the diagnostics).",
    ),
    svi_coarse_steps: int = typer.Option(
        0,
        "--svi-coarse-steps",
        min=0,
        help="Run the first N of the --svi-steps on a filter with fewer steps per interval (--svi-coarse-substeps; "
        "about half the cost per step); the fit ends, and is judged, on its own filter. 0: none.",
    ),
    svi_coarse_substeps: int = typer.Option(
        None, "--svi-coarse-substeps", min=1, help="Filter steps per interval of --svi-coarse-steps (default: half)."
    ),
    max_substep: float = typer.Option(
        None,
        "--max-substep",
        min=0.0,
        help="Largest filter (RK4) step in the model's time unit, e.g. 10 (min) for glucose_insulin; long "
        "gaps between events are split so no step exceeds it (default: the step the model declares, "
        "else from its fastest rate).",
    ),
    substeps: int = typer.Option(4, "--substeps", min=1, help="Filter (RK4) steps per interval between events."),
    target_accept: float = typer.Option(
        0.9, "--target-accept", min=0.5, max=0.99, help="NUTS adaptation target; raise it if a fit diverges."
    ),
    fix: list[str] = typer.Option(
        None,
        "--fix",
        help="Hold a structural parameter fixed (NONMEM's FIX), with no between-subject variability: NAME (at the "
        "model's typical value) or NAME=VALUE, in the parameter's unit; repeatable or comma-separated, e.g. "
        "--fix kp2,Vg=1.9.",
    ),
    template: str = typer.Option(
        None, "--template", help="With --model neural: name observables and doses after this mechanistic model."
    ),
    centered: str = typer.Option(
        "auto",
        "--centered",
        help="Sampler coordinates of the random effects: auto (NUTS: scaled, centred where the subjects' data "
        "determine them, non-centred as their BSV goes to 0; SVI: non-centred), rule (each fully centred or "
        "not), partial (a weight per effect in between), none (all non-centred), or e.g. CL,V (those centred).",
    ),
) -> None:
    """Fit a Bayesian SDE model to a cohort and write the posterior (with diagnostics).

    ``--model neural`` trains the neural CDE/SDE patient model instead (checkpoint + JSON config,
    calibrated on held-out subjects; exit status 1 when its 90% coverage is below the floor).
    """
    if model == "neural":
        if fix:
            _fail("--fix holds parameters of a mechanistic model; the neural model has none to hold")
        from medsim.cli.neural_cmds import fit_neural_cli
        from medsim.inference.neural.checkpoint import checkpoint_paths

        for path in checkpoint_paths(out):
            output_file(path, "--out")
        raise typer.Exit(fit_neural_cli(cohort, out=out, template=template, seed=seed))
    output_file(out, "--out")
    if chain_method == "parallel":
        _request_host_devices(chains)  # before anything below starts JAX
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import medsim.models as registry
    from medsim.inference import FitConfigError, FitDataError, SviDivergedError, TimelineError, fit
    from medsim.inference.priors import PriorError, parse_fix
    from medsim.inference.problem import check_fix

    try:
        physiology = registry.get(model)
        held = parse_fix(fix or [])
        check_fix(physiology, held)  # before the cohort is read
    except (registry.UnknownModelError, PriorError) as err:
        _fail(str(err))
    data = _load_cohort(cohort)
    import jax

    if chain_method == "parallel" and jax.local_device_count() < 2:
        chain_method = "sequential"  # one core, or JAX was started before the request could take effect
    console = Console(stderr=True)
    unit = "iterations (all chains)" if method == "nuts" else "optimisation steps"
    with Progress(
        TextColumn(f"fitting {physiology.name} to {cohort} [{method}]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("fit", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            posterior = fit(
                data,
                physiology,
                backend=backend,
                method=method,
                chains=chains,
                draws=draws,
                warmup=warmup,
                seed=seed,
                process_noise=not no_process_noise,
                progress=progress,
                chain_method=chain_method,
                svi_steps=svi_steps,
                target_accept=target_accept,
                centered=centered,
                guide=guide,
                svi_particles=svi_particles,
                svi_learning_rate=svi_learning_rate,
                svi_start=svi_start,
                svi_coarse_steps=svi_coarse_steps,
                svi_coarse_substeps=svi_coarse_substeps,
                substeps=substeps,
                max_substep=max_substep,
                fix=held,
            )
        except (FitConfigError, FitDataError, TimelineError, SviDivergedError) as err:
            _fail(str(err))
    path = posterior.save(out)
    diagnostics = posterior.diagnostics()
    console = Console()
    priors = posterior.priors
    console.print(
        f"wrote {path} ({posterior.attrs['wall_time_s']:.1f} s sampling, chain method {chain_method}; "
        f"random effects: {priors.describe_coordinates()})"
    )
    _print_diagnostics(console, posterior, diagnostics)
    if not diagnostics.ok:
        _announce_failure(console, diagnostics, path)
        raise typer.Exit(1)


@app.command("check")
def check_command(
    posterior_files: list[Path] = typer.Argument(
        ..., help="Posterior file written by `medsim fit` (two or more with --compare)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print per-parameter statistics and diagnostics as JSON."),
    figures: Path = typer.Option(
        None,
        "--figures",
        help="Write the fit report's figures into this folder: VPC, individual fits, goodness of fit (these need "
        "the fitted cohort, see --cohort) and trace/rank/energy plots; with --compare, the PSIS-LOO comparison.",
    ),
    report: Path = typer.Option(
        None,
        "--report",
        help="Write the fit report into this folder: fit_report.html, .md, .json and fit_figures/ (parameters with "
        "shrinkage, diagnostics, VPC, individual fits, CWRES, held-out check, PSIS-LOO).",
    ),
    predictive_draws: int = typer.Option(
        200, "--predictive-draws", min=10, help="Posterior draws simulated for the report's VPC and predictions."
    ),
    cohort: str = typer.Option(
        None,
        "--cohort",
        help="The fitted cohort, for the held-out check, --report and --figures (default: the posterior's, if it "
        "is a bundled dataset).",
    ),
    heldout_fraction: float = typer.Option(
        None, "--heldout-fraction", help="Held-out check: predict the last FRACTION of each subject's time span."
    ),
    heldout_after: float = typer.Option(
        None, "--heldout-after", help="Held-out check: predict measurements after this time (model time unit)."
    ),
    heldout_last: int = typer.Option(None, "--heldout-last", min=1, help="Held-out check: the last N per subject."),
    bound: list[str] = typer.Option(
        None, "--bound", help="Held-out check: event bound such as 'glucose_mg_dL>=70' (repeatable)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out and report predictive simulations."),
    compare: bool = typer.Option(False, "--compare", help="Compare the posteriors: PSIS-LOO and held-out log score."),
) -> None:
    """Print a posterior's convergence diagnostics and calibration (exit 1 if either fails).

    With --heldout-fraction / --heldout-after / --heldout-last, run the held-out calibration gate
    first and store its result in the posterior file (see docs/calibration.md). With --report,
    write the pharmacometric fit report (docs/fitting.md, "Fit report").
    """
    from rich.console import Console

    from medsim.cli import check_cmds
    from medsim.inference import Posterior, PosteriorFormatError
    from medsim.inference.summary import summarize

    if figures is not None:
        output_dir(figures, "--figures")
    if report is not None:
        _report_folder(report)
    try:
        posteriors = [Posterior.load(f) for f in posterior_files]
    except (FileNotFoundError, PosteriorFormatError) as err:
        _fail(str(err))
    if compare:
        _compare(posterior_files, posteriors, as_json, figures)
        return
    if len(posteriors) != 1:
        _fail("give one posterior file (or several with --compare)")
    posterior_file, posterior = posterior_files[0], posteriors[0]
    fitted = _fitted_cohort(posterior, cohort, required=report is not None) if report or figures else None
    if any(x is not None for x in (heldout_fraction, heldout_after, heldout_last)):
        posterior = _heldout(
            posterior_file, posterior, cohort, heldout_after, heldout_fraction, heldout_last, bound or [], seed
        )
    gate = posterior.calibration()
    diagnostics = posterior.diagnostics()
    written = []
    if report is not None or figures is not None:
        from medsim.inference.checks.predictive import PredictiveError

        try:
            written = check_cmds.write_fit_outputs(
                posterior_file, posterior, fitted, report=report, figures=figures, seed=seed, draws=predictive_draws
            )
        except PredictiveError as err:
            _fail(str(err))
    if as_json:
        attrs = posterior.attrs
        report = {
            "file": str(posterior_file),
            "model": attrs["model_name"],
            "model_version": attrs["model_version"],
            "cohort": attrs.get("cohort_name", ""),
            "data_hash": attrs["data_hash"],
            "backend": attrs["backend"],
            "method": attrs["method"],
            "seed": int(attrs.get("seed", -1)),
            "wall_time_s": float(attrs.get("wall_time_s", float("nan"))),
            "divergences": diagnostics.divergences,
            "diagnostics": diagnostics.to_dict(),
            "parameters": summarize(posterior),
            "held_fixed": posterior.priors.held,
            "assumed_covariates": posterior.assumed_covariates,
            "calibration": None if gate is None else json.loads(gate.to_json()),
        }
        typer.echo(json.dumps(report, indent=2, default=float))
    else:
        console = Console()
        attrs = posterior.attrs
        console.print(
            f"{posterior_file}: {attrs['model_name']} v{attrs['model_version']} fitted to "
            f"{attrs.get('cohort_name', '') or '(unnamed cohort)'} by {attrs['backend']} {attrs['method']} "
            f"in {float(attrs.get('wall_time_s', float('nan'))):.1f} s"
        )
        _print_diagnostics(console, posterior, diagnostics)
        if gate is None:
            console.print(
                "[bold yellow]calibration not checked[/]: run `medsim check POSTERIOR --cohort COHORT "
                "--heldout-fraction 0.25` (docs/calibration.md)"
            )
        else:
            check_cmds.print_gate(console, gate)
        for line in written:
            console.print(line)
        if not diagnostics.ok:
            _announce_failure(console, diagnostics, posterior_file)
    if not diagnostics.ok or (gate is not None and gate.failed):
        raise typer.Exit(1)


def _report_folder(folder: Path) -> None:
    """Check the --report folder before any work."""
    from medsim.inference.checks.fit_report import check_fit_report_folder
    from medsim.io import FolderWriteError

    output_dir(folder, "--report")
    try:
        check_fit_report_folder(folder)
    except FolderWriteError as err:
        _fail(f"--report {err}")


def _fitted_cohort(posterior, cohort: str | None, *, required: bool):
    """The cohort ``posterior`` was fitted to (--cohort, else its bundled dataset), checked by data hash.

    None when it cannot be found and is not ``required`` (--figures then writes the sampler plots only).
    """
    from medsim.inference.checks.fit_report import FitReportError, check_fitted_cohort

    name = cohort or str(posterior.attrs.get("cohort_name", ""))
    if not name or not (cohort or Path(name).exists() or name in _bundled()):
        if required:
            _fail("--report needs the fitted cohort: give --cohort (the posterior does not name a bundled dataset)")
        return None
    data = _load_cohort(name)
    try:
        check_fitted_cohort(posterior, data)
    except FitReportError as err:
        _fail(f"--cohort {name}: {err}")
    return data


def _bundled() -> list[str]:
    import medsim.data as data

    return [d.name for d in data.available()]


def _heldout(path: Path, posterior, cohort, after, fraction, last, bounds, seed):
    """Run the held-out calibration gate and store it in ``path``; returns the updated posterior."""
    from rich.console import Console

    from medsim.cli import check_cmds
    from medsim.inference import FitConfigError, FitDataError, TimelineError
    from medsim.inference.checks.predictive import PredictiveError
    from medsim.policies.spec import SpecError, parse_bound

    name = cohort or str(posterior.attrs.get("cohort_name", ""))
    if not name:
        _fail("the held-out check needs the cohort: give --cohort (the posterior does not name one)")
    data = _load_cohort(name)
    try:
        parsed = [parse_bound(b, where="--bound") for b in bounds]
    except SpecError as err:
        _fail(str(err))
    Console(stderr=True).print(f"held-out check of {path}: fitting the training part of {name} ...")
    try:
        gate, _, _ = check_cmds.heldout_gate(
            posterior, data, after=after, fraction=fraction, last=last, bounds=parsed, seed=seed
        )
    except (PredictiveError, FitConfigError, FitDataError, TimelineError) as err:
        _fail(str(err))
    updated = posterior.with_calibration(gate)
    updated.save(path)
    return updated


def _compare(files: list[Path], posteriors: list, as_json: bool, figures: Path | None) -> None:
    """Print PSIS-LOO and held-out log scores of several posteriors (and plot them into ``figures``)."""
    from rich.console import Console
    from rich.table import Table

    from medsim.cli import check_cmds
    from medsim.inference.checks.loo import LooError

    try:
        plot = None if figures is None else figures / "loo_compare.png"
        result = check_cmds.comparison(files, posteriors, figure=plot)
    except LooError as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=float))
        return
    console = Console()
    table = Table("posterior", "ELPD (PSIS-LOO)", "difference", "held-out log score / point", "gate", show_edge=False)
    for name, r in result["models"].items():
        score = "-" if r["heldout_log_score"] is None else f"{r['heldout_log_score']:.3f} ({r['heldout_points']} pts)"
        table.add_row(
            name, f"{r['elpd_loo']:.1f} +- {r['se']:.1f}", f"{r['elpd_diff']:.1f} +- {r['dse']:.1f}", score, r["gate"]
        )
    console.print(table)
    console.print(f"best by PSIS-LOO ({result['unit']}s left out, {result['n_points']} points): {result['best_loo']}")
    if plot is not None:
        console.print(f"PSIS-LOO comparison plot: {plot}")
    if not result["heldout_comparable"]:
        console.print(
            "held-out log scores are not comparable: check every posterior on the same cohort and window "
            "(`medsim check FILE --cohort COHORT --heldout-...`)"
        )
