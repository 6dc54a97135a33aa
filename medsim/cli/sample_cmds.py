"""``medsim sample``: draw a virtual population from a posterior, a model's priors, or a neural checkpoint.

A neural checkpoint (``NAME``, ``NAME.json`` or ``NAME.safetensors`` written by ``medsim fit
--model neural``) goes through the calibration gate first: a model whose held-out 90% coverage is
below ``--coverage-floor`` is refused (exit status 2, with the measured coverage) unless
``--force``, which the population file records. A posterior file's stored calibration gate
(``medsim check --heldout-...``) is recorded in the population's provenance
(``calibration_gate``: passed, failed or not_checked, and its summary) and announced when it did
not pass. Exit status 2 on bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medsim.cli.app import app
from medsim.cli.app import fail as _fail
from medsim.cli.outputs import output_file


@app.command("sample")
def sample_command(
    posterior: Path = typer.Argument(
        None, help="Posterior file (netCDF) written by `medsim fit`, or a neural checkpoint (NAME.json)."
    ),
    n: int = typer.Option(..., "--n", min=1, help="Number of virtual patients."),
    out: Path = typer.Option(..., "--out", help="Where to write the virtual population (netCDF)."),
    mode: str = typer.Option("population", "--mode", help="population (new patients) or personalized (twins)."),
    subject: str = typer.Option(None, "--subject", help="Fitted subject ID to twin (with --mode personalized)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same population."),
    patients_per_draw: int = typer.Option(
        None, "--patients-per-draw", min=1, help="Patients sharing one posterior draw (default: at least 2)."
    ),
    prior: str = typer.Option(None, "--prior", help="Sample from this model's priors instead of a posterior."),
    prior_draws: int = typer.Option(1000, "--prior-draws", min=1, help="Prior draws to use with --prior."),
    cohort: str = typer.Option(
        None, "--cohort", help="Neural checkpoints: cohort to twin or resample covariates from (default: training)."
    ),
    force: bool = typer.Option(False, "--force", help="Neural checkpoints: sample even if miscalibrated (recorded)."),
    coverage_floor: float = typer.Option(
        0.8, "--coverage-floor", help="Neural checkpoints: smallest acceptable held-out 90% coverage."
    ),
) -> None:
    """Sample N virtual patients (population or personalized) and write them to a netCDF file."""
    output_file(out, "--out")
    from dataclasses import replace

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from medsim.cli.neural_cmds import model_source, neural_population_cli

    checkpoint = model_source(posterior, prior, cohort)
    console = Console()
    if checkpoint is not None:
        population = neural_population_cli(
            checkpoint,
            n,
            seed=seed,
            mode=mode,
            subject=subject,
            cohort=cohort,
            patients_per_draw=patients_per_draw,
            floor=coverage_floor,
            force=force,
        )
        _announce_neural(console, population.provenance)
    else:
        population = _mechanistic(posterior, prior, prior_draws, n, mode, subject, seed, patients_per_draw)
        _announce_gate(console, population.provenance.get("posterior", {}))
    source = f"prior:{prior}" if prior is not None else str(checkpoint or posterior)
    population = replace(population, provenance={**population.provenance, "source_file": source})
    population.save(out)
    model = population.model
    console.print(
        f"wrote {population.n_patients} {population.mode} virtual patients of [bold]{model.name}[/bold] "
        f"({len(np.unique(population.draw))} draws x {population.patients_per_draw} patients per draw) to {out}"
    )
    table = Table("parameter", "unit", "median", "5%", "95%", show_edge=False)
    units = {p.name: p.unit for p in model.parameters}
    for name, values in population.params.items():
        q5, q50, q95 = np.quantile(values, [0.05, 0.5, 0.95])
        table.add_row(name, units.get(name, ""), f"{q50:.4g}", f"{q5:.4g}", f"{q95:.4g}")
    console.print(table)


def _announce_neural(console: Any, provenance: dict) -> None:
    """Say that the patients come from a learned model, how it calibrated, and whether the gate was forced."""
    c90, c50 = provenance.get("calibration_coverage_90"), provenance.get("calibration_coverage_50")
    floor = provenance["calibration_floor"]
    measured = "never calibrated" if c90 is None else f"held-out 90% coverage {c90:.3f} (50%: {c50:.3f})"
    console.print(
        f"neural model [bold]{provenance['model']}[/bold] from {provenance['checkpoint']}: {measured}, "
        f"floor {floor:.2f}; covariates / record from {provenance['cohort_used']}"
    )
    if not provenance["calibration_passed"]:
        console.print(
            "[bold white on red] WARNING [/] [bold red]calibration gate overridden with --force: the model's "
            "predictive intervals are not known to be wide enough; the file records it[/]"
        )


def _announce_gate(console: Any, provenance: dict) -> None:
    """Warn when the posterior's calibration gate failed or was never run."""
    status = provenance.get("calibration_gate")
    if status == "failed":
        console.print(f"[bold white on red] MISCALIBRATED [/] [bold red]{provenance['calibration_summary']}[/]")
    elif status == "not_checked":
        console.print(f"[bold yellow]calibration not checked:[/] {provenance['calibration_summary']}")


def _mechanistic(
    posterior: Path | None,
    prior: str | None,
    prior_draws: int,
    n: int,
    mode: str,
    subject: str | None,
    seed: int,
    patients_per_draw: int | None,
) -> Any:
    """Virtual patients from a posterior file or from a registered model's priors."""
    from dataclasses import replace

    from medsim.cli.risk_sources import prior_draws as from_prior
    from medsim.cli.risk_sources import read_posterior
    from medsim.population import sample_population

    if prior is not None:
        draws = from_prior(prior, prior_draws, seed)
    else:
        _, draws, gate = read_posterior(posterior)
        draws = replace(
            draws,
            provenance={
                **draws.provenance,
                "calibration_gate": gate.status,
                "calibration_summary": gate.summary(),
            },
        )
    try:
        return sample_population(draws, n, mode=mode, subject=subject, seed=seed, patients_per_draw=patients_per_draw)
    except ValueError as err:
        _fail(str(err))
    return None
