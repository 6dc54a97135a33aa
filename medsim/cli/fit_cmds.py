"""``medsim fit`` (fit a hierarchical SDE model to a cohort) and ``medsim check`` (diagnose a fit).

Exit status: 0 when the fit's diagnostics pass, 1 when they fail (the posterior file is still
written, flagged with ``diagnostics_ok = 0``), 2 for usage errors (unknown dataset, model,
backend or method; unreadable table or posterior file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from medsim.cli.app import app


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


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

    from inference.summary import summarize

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
    max_substep: float = typer.Option(
        None,
        "--max-substep",
        min=0.0,
        help="Largest filter (RK4) step in the model's time unit, e.g. 10 (min) for glucose_insulin; long "
        "gaps between events are split so no step exceeds it (default: from the model's fastest rate).",
    ),
    substeps: int = typer.Option(4, "--substeps", min=1, help="Filter (RK4) steps per interval between events."),
    target_accept: float = typer.Option(
        0.9, "--target-accept", min=0.5, max=0.99, help="NUTS adaptation target; raise it if a fit diverges."
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
        from medsim.cli.neural_cmds import fit_neural_cli

        raise typer.Exit(fit_neural_cli(cohort, out=out, template=template, seed=seed))
    if chain_method == "parallel":
        _request_host_devices(chains)  # before anything below starts JAX
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import medsim.models as registry
    from inference import FitConfigError, FitDataError, TimelineError, fit

    try:
        physiology = registry.get(model)
    except registry.UnknownModelError as err:
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
                substeps=substeps,
                max_substep=max_substep,
            )
        except (FitConfigError, FitDataError, TimelineError) as err:
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
    posterior_file: Path = typer.Argument(..., help="Posterior file written by `medsim fit`."),
    as_json: bool = typer.Option(False, "--json", help="Print per-parameter statistics and diagnostics as JSON."),
    figures: Path = typer.Option(None, "--figures", help="Write trace/rank/energy plots into this folder."),
) -> None:
    """Print a posterior's convergence diagnostics (exit 1 if they fail)."""
    from rich.console import Console

    from inference import Posterior, PosteriorFormatError
    from inference.summary import summarize

    try:
        posterior = Posterior.load(posterior_file)
    except (FileNotFoundError, PosteriorFormatError) as err:
        _fail(str(err))
    diagnostics = posterior.diagnostics()
    if figures is not None:
        from inference.diagnostic_figures import write_figures

        written = write_figures(posterior, figures)
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
        if figures is not None:
            console.print("figures: " + ", ".join(str(p) for p in written))
        if not diagnostics.ok:
            _announce_failure(console, diagnostics, posterior_file)
    if not diagnostics.ok:
        raise typer.Exit(1)
