"""``medsim sample``: draw a virtual population from a posterior (or from a model's priors)."""

from __future__ import annotations

from pathlib import Path

import typer

from medsim.cli.app import app


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command("sample")
def sample_command(
    posterior: Path = typer.Argument(None, help="Posterior file (netCDF) written by `medsim fit`."),
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
) -> None:
    """Sample N virtual patients (population or personalized) and write them to a netCDF file."""
    from dataclasses import replace

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    import medsim.models as registry
    from medsim.population import PosteriorDraws, sample_population

    if (posterior is None) == (prior is None):
        _fail("give either a POSTERIOR file or --prior MODEL (not both)")
    if prior is not None:
        try:
            draws = PosteriorDraws.from_prior(registry.get(prior), prior_draws, seed=seed)
        except registry.UnknownModelError as err:
            _fail(str(err))
    else:
        if not posterior.exists():
            _fail(f"{posterior}: no such posterior file")
        try:
            from inference.posterior import Posterior
        except ImportError as err:
            _fail(f"reading posterior files needs the inference package ({err}); use --prior MODEL meanwhile")
        try:
            draws = Posterior.load(posterior).draws()
        except (ValueError, OSError, KeyError) as err:  # a malformed or foreign file: say so, no traceback
            _fail(f"{posterior}: {err}")
    try:
        population = sample_population(
            draws, n, mode=mode, subject=subject, seed=seed, patients_per_draw=patients_per_draw
        )
    except ValueError as err:
        _fail(str(err))
    source = f"prior:{prior}" if prior is not None else str(posterior)
    population = replace(population, provenance={**population.provenance, "source_file": source})
    population.save(out)
    console = Console()
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
