"""``medsim risk``: evaluate treatment policies' chance-constraint risk on virtual patients.

posterior (or a model's priors) -> virtual population -> closed-loop rollouts of every policy on
common random numbers -> risk report (``report.json``, ``report.md``, ``report.html``).
Exit status: 0 on success whatever the verdicts, 1 with ``--fail-on-violation`` when a policy
FAILs its chance constraint, 2 on bad input.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from medsim.cli.app import app

_COLORS = {"PASS": "green", "FAIL": "red", "UNDECIDED": "yellow"}


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _load_draws(posterior: Path | None, prior: str | None, prior_draws: int, seed: int) -> tuple[Any, dict]:
    """Posterior draws and the provenance that goes with them (data hash, fit diagnostics)."""
    import medsim.models as registry
    from medsim.population import PosteriorDraws

    if (posterior is None) == (prior is None):
        _fail("give either a POSTERIOR file or --prior MODEL (not both)")
    if prior is not None:
        try:
            draws = PosteriorDraws.from_prior(registry.get(prior), prior_draws, seed=seed)
        except registry.UnknownModelError as err:
            _fail(str(err))
        fit = {"ok": None, "problems": (), "summary": {"source": "model priors (no fit)"}}
        return draws, {"posterior_file": f"prior:{prior}", "fit_diagnostics": fit}
    if not posterior.exists():
        _fail(f"{posterior}: no such posterior file")
    try:
        from inference.posterior import Posterior
    except ImportError as err:
        _fail(f"reading posterior files needs the inference package ({err}); use --prior MODEL meanwhile")
    try:
        post = Posterior.load(posterior)
        draws = post.draws()
    except ValueError as err:
        _fail(str(err))
    prov = dict(draws.provenance)
    fit = prov.get("fit_diagnostics", prov.get("diagnostics"))
    diagnostics = getattr(post, "diagnostics", None)
    if fit is None and diagnostics is not None:
        fit = diagnostics() if callable(diagnostics) else diagnostics
    return draws, {"posterior_file": str(posterior), "data_hash": prov.get("data_hash", ""), "fit_diagnostics": fit}


def _support(posterior: Path | None) -> dict | None:
    """Observed ranges of the fitted cohort (for the out-of-support flag), if the posterior has them."""
    if posterior is None:
        return None
    from inference.posterior import Posterior

    support = getattr(Posterior.load(posterior), "support", None)
    return support() if callable(support) else support


def summarise(report: Any, files: Any, console: Any) -> None:
    """Print the verdicts, the warnings and where the report went."""
    from rich.table import Table

    from policies.report.text import pct_ci

    for w in report.all_warnings:
        console.print(f"[bold white on red] WARNING [/] [bold red]{w}[/]")
    table = Table("policy", "verdict", "P(violation)", "only between measurements", "sequential", show_edge=False)
    for p in report.policies:
        color = _COLORS.get(p.verdict.decision, "white")
        table.add_row(
            p.policy,
            f"[bold {color}]{p.verdict.decision}[/]",
            pct_ci(p.joint.bridge),
            pct_ci(p.joint.between_bridge),
            f"{p.sequential.decision} ({p.sequential.stopped_at}/{p.sequential.n_units} {p.sequential.unit}s)",
        )
    console.print(table)
    for p in report.policies:
        console.print(f"[{_COLORS.get(p.verdict.decision, 'white')}]{p.policy}: {p.verdict.statement}[/]")
    console.print(f"report: {files.html}  (also {files.markdown.name}, {files.json.name})")


def finish(report: Any, results: Sequence[Any], *, out: Path, fail_on_violation: bool, console: Any) -> int:
    """Write the risk report, print its summary and return the exit status."""
    from policies.report import write_report

    files = write_report(report, out, results=results)
    summarise(report, files, console)
    failed = any(p.verdict.decision == "FAIL" for p in report.policies)
    return 1 if (fail_on_violation and failed) else 0


@app.command("risk")
def risk_command(
    posterior: Path = typer.Argument(None, help="Posterior file (netCDF) written by `medsim fit`."),
    policy: list[str] = typer.Option(..., "--policy", help="Policy NAME[:params]; repeat to compare policies."),
    spec_text: str = typer.Option(
        ..., "--spec", help="Safety spec: a .toml/.json file or inline 'conc<=20,conc>=5;horizon=72h;epsilon=0.05'."
    ),
    n: int = typer.Option(1000, "--n", min=1, help="Number of virtual patients."),
    out: Path = typer.Option(..., "--out", help="Folder for report.json, report.md, report.html and figures/."),
    mode: str = typer.Option("population", "--mode", help="population (new patients) or personalized (twins)."),
    subject: str = typer.Option(None, "--subject", help="Fitted subject ID to twin (with --mode personalized)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same report."),
    dt: float = typer.Option(None, "--dt", help="Simulator sub-step in the model's time unit (default: 1 minute)."),
    scenario: str = typer.Option("auto", "--scenario", help="Disturbances: auto (meals for glucose), meals, none."),
    patients_per_draw: int = typer.Option(None, "--patients-per-draw", min=1, help="Patients sharing one draw."),
    prior: str = typer.Option(None, "--prior", help="Use this model's priors instead of a posterior (no fit)."),
    prior_draws: int = typer.Option(200, "--prior-draws", min=2, help="Prior draws to use with --prior."),
    fail_on_violation: bool = typer.Option(
        False, "--fail-on-violation", help="Exit with status 1 when any policy FAILs its chance constraint."
    ),
) -> None:
    """Estimate each policy's probability of leaving the safe range, between measurements included."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from policies.evaluate import evaluate_policies
    from policies.loading import PolicySpecError
    from policies.spec import SpecError, parse_spec

    console = Console(stderr=False)
    draws, prov = _load_draws(posterior, prior, prior_draws, seed)
    model = draws.model
    try:
        spec = parse_spec(spec_text, model=model)
    except SpecError as err:
        _fail(str(err))
    prov = {**prov, "command": shlex.join(["medsim", *sys.argv[1:]])}
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"))
    with Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(f"simulating {len(policy)} policies x {n} patients", total=len(policy))
        try:
            report, results = evaluate_policies(
                draws,
                policy,
                spec,
                n=n,
                seed=seed,
                mode=mode,
                subject=subject,
                dt=dt,
                scenario=scenario,
                patients_per_draw=patients_per_draw,
                support=_support(posterior),
                provenance=prov,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        except (PolicySpecError, ValueError, FloatingPointError) as err:
            _fail(str(err))
        bar.update(task, completed=len(policy))
    code = finish(report, results, out=out, fail_on_violation=fail_on_violation, console=console)
    raise typer.Exit(code)
