"""``medsim import-t1d``: a tidy CGM / insulin / carbohydrate table -> a validated event table.

Exit status: 0 when the event table was written (warnings allowed), 1 when the table has
problems (listed, nothing written), 2 for usage errors (missing file, unknown suffix or model,
malformed ``--unit``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer

from medsim.cli.app import app
from medsim.cli.pairs import parse_pairs


@app.command("import-t1d")
def import_t1d_command(
    table: Path = typer.Argument(..., help="Tidy table (.csv, .csv.gz, .parquet): one row per subject and time."),
    out: Path = typer.Argument(..., help="Event table to write (.csv, .csv.gz or .parquet) plus its units sidecar."),
    unit: list[str] = typer.Option(
        [], "--unit", help="Unit of a column whose name carries none, COLUMN=UNIT (repeatable), e.g. insulin=U/min."
    ),
    cgm_every: float = typer.Option(
        None, "--cgm-every", min=0.0, help="Keep CGM readings only at multiples of this many minutes (e.g. 15)."
    ),
    model: str = typer.Option("glucose_insulin", "--model", "-m", help="The glucose model the cohort is for."),
    cgm_floor: float = typer.Option(
        None, "--cgm-floor", help="Sensor floor (mg/dL, e.g. 39): readings at or below it are censored (M3)."
    ),
    cgm_ceiling: float = typer.Option(
        None, "--cgm-ceiling", help="Sensor ceiling (mg/dL, e.g. 400): readings at or above it are censored (M3)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Convert a tidy T1D table (simglucose's patient,time_min,cgm,cho_g_per_min,insulin_U_per_min, or pump
    and CGM exports with units in the column names) into a NONMEM-style event table for the glucose models.

    Units must be explicit: in the column name (cho_g, cho_g_per_min, insulin_U_per_h, bolus_U) or
    with --unit. Magnitudes are checked per compartment (a basal rate of 60 U/h is an error).
    """
    from rich.console import Console
    from rich.markup import escape

    import medsim.models as registry
    from medsim.data import write_event_table
    from medsim.data.report import ROW_CONVENTION
    from medsim.data.t1d import check_t1d_table

    units = parse_pairs(unit, "--unit", "COLUMN=UNIT (e.g. --unit insulin=U/min)")
    try:
        physiology = registry.get(model)
    except registry.UnknownModelError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            limits = None
            if cgm_floor is not None or cgm_ceiling is not None:
                limits = (0.0 if cgm_floor is None else cgm_floor, float("inf") if cgm_ceiling is None else cgm_ceiling)
            report, cohort = check_t1d_table(
                table, units=units, cgm_every=cgm_every, model=physiology, cgm_limits=limits
            )
    except (FileNotFoundError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if cohort is not None:
        write_event_table(cohort, out)
    if as_json:
        typer.echo(json.dumps(report.to_dict() | {"written": str(out) if cohort else None}, indent=2, default=str))
        raise typer.Exit(0 if cohort is not None else 1)
    console = Console(highlight=False)
    if cohort is None:
        count = len(report.problems)
        console.print(f"[bold red]invalid[/bold red]: {escape(str(table))}: {count} problem{'s' if count != 1 else ''}")
        console.print(f"  ({escape(ROW_CONVENTION)})")
        for i, problem in enumerate(report.problems[:50], start=1):
            console.print(f"  {i}. {escape(problem.format())}")
    else:
        console.print(
            f"[bold green]written[/bold green]: {escape(str(out))}: {cohort.n_subjects} subjects, "
            f"{cohort.n_observations} CGM readings, {cohort.n_doses} doses (insulin U / carbohydrate g), "
            f"model {escape(model)}"
        )
    for notice in report.notices:
        console.print(f"  [yellow]warning[/yellow]: {escape(notice.format())}")
    raise typer.Exit(0 if cohort is not None else 1)
