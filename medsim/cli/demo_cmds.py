"""``medsim demo``: the shipped examples end to end (fit → sample → evaluate → report)."""

from __future__ import annotations

from pathlib import Path

import typer

from medsim.cli.app import app
from medsim.cli.outputs import output_dir


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("reports"), "--out", help="Parent folder; each example writes OUT/<name>/."),
    only: list[str] = typer.Option(None, "--only", help="Run only these examples (theoph, glucose); repeatable."),
    seed: int = typer.Option(1, "--seed", help="Seed of the fits, populations and rollouts."),
    n: int = typer.Option(None, "--n", min=10, help="Override the number of virtual patients per example."),
) -> None:
    """Fit Theoph and a T1D cohort from an independent simulator, compare policies on virtual patients, write reports.

    theoph: fixed q12h vs TDM titration vs posterior-aware safe timing against 5 <= conc <= 20 mg/L.
    glucose: the bundled t1d_sim cohort (6 patients simulated by simglucose, CGM every 15 min) fitted
    with glucose_insulin; basal-bolus vs PID, sparse vs dense measurement, against glucose >= 70 mg/dL.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from medsim.policies.examples import GLUCOSE, THEOPH, run_example

    examples = {"theoph": THEOPH, "glucose": GLUCOSE}
    chosen = only or list(examples)
    unknown = [name for name in chosen if name not in examples]
    if unknown:
        typer.echo(f"error: unknown example(s) {unknown}; choose from {list(examples)}", err=True)
        raise typer.Exit(2)
    output_dir(out, "--out")
    for name in chosen:
        output_dir(out / name, "--out")
        if examples[name].fit_report:
            output_dir(out / f"{name}-fit", "--out")
    console = Console()
    columns = (TextColumn("{task.description:<60}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"))
    for name in chosen:
        with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task(name, total=1.0)

            def stage(text: str, task=task, bar=bar) -> None:
                bar.update(task, description=text, completed=0.0, total=1.0)

            def progress(done: float, total: float, task=task, bar=bar) -> None:
                bar.update(task, completed=done, total=max(total, 1e-12))

            result = run_example(examples[name], out / name, seed=seed, n_patients=n, stage=stage, progress=progress)
            if examples[name].fit_report:
                from medsim.policies.examples import write_example_fit_report

                stage(f"{name}: fit report (VPC, individual fits, goodness of fit)")
                fit_html = write_example_fit_report(
                    examples[name], result.posterior_file, out / f"{name}-fit", seed=seed
                )
        if result.fit_ok is False:
            console.print(f"[bold red]{name}: the fit failed its diagnostics; see {result.out_dir / 'report.html'}[/]")
        for policy, decision in result.verdicts.items():
            color = {"PASS": "green", "FAIL": "red"}.get(decision, "yellow")
            console.print(f"  {policy}: [{color}]{decision}[/]")
        console.print(f"{name}: report in {result.out_dir / 'report.html'} (and report.md, report.json)")
        if examples[name].fit_report:
            console.print(f"{name}: fit report in {fit_html} (and fit_report.md, fit_report.json)")
