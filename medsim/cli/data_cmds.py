"""``medsim datasets`` and ``medsim validate`` (cohort data commands).

Exit status of ``medsim validate``: 0 when the table is valid (warnings allowed), 1 when it has
problems, 2 for usage errors (missing file, unknown suffix or model, malformed ``--map``).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medsim.cli.app import app
from medsim.cli.pairs import parse_pairs


@app.command("datasets")
def datasets_command(
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable list."),
) -> None:
    """List the real datasets bundled with medsim (load them with medsim.data.load(NAME))."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from medsim.data import available

    infos = available()
    if as_json:
        typer.echo(json.dumps([d.to_dict() for d in infos], indent=2))
        return
    table = Table("name", "subjects", "observations", "doses", "model", "description", "source", "licence")
    for d in infos:
        table.add_row(
            escape(d.name),
            str(d.n_subjects),
            str(d.n_observations),
            str(d.n_doses),
            escape(d.model),
            escape(d.description),
            escape(d.source),
            escape(d.licence),
        )
    Console().print(table)


@app.command("validate")
def validate_command(
    table: Path = typer.Argument(..., help="Event table: .csv, .csv.gz or .parquet (NONMEM columns ID,TIME,DV,...)."),
    model: str = typer.Option(None, "--model", "-m", help="Also check the table fits this registered model."),
    column_map: list[str] = typer.Option(
        [], "--map", help="Map a column to a canonical name, FILE_COLUMN=NAME (repeatable), e.g. --map Subject=ID."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    limit: int = typer.Option(50, "--limit", min=0, help="List at most this many problems (0: all)."),
) -> None:
    """Check an event table: print a summary, or the numbered list of problems (exit status 1)."""
    from rich.console import Console
    from rich.markup import escape

    from medsim.data import validate_event_table
    from medsim.data.report import ROW_CONVENTION

    mapping = parse_pairs(column_map, "--map", "FILE_COLUMN=NAME (e.g. --map Subject=ID)")
    physiology = None
    if model is not None:
        import medsim.models as registry

        try:
            physiology = registry.get(model)
        except registry.UnknownModelError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
    try:
        report = validate_event_table(table, model=physiology, column_map=mapping or None)
    except (FileNotFoundError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
        raise typer.Exit(0 if report.ok else 1)

    console = Console(highlight=False)
    if report.ok:
        s = report.summary
        console.print(
            f"[bold green]valid[/bold green]: {escape(str(table))}" + (f" (model {escape(model)})" if model else "")
        )
        unit = f" {escape(s['time_unit'])}" if s.get("time_unit") else ""
        span = s.get("time_span") or [0.0, 0.0]
        per = s["obs_per_subject"]
        console.print(
            f"  {s['subjects']} subjects, {s['observations']} observations "
            f"(per subject {per['min']}/{per['median']:g}/{per['max']} min/median/max), "
            f"{s['doses']} doses ({s['infusions']} infusions), time {span[0]:g}-{span[1]:g}{unit}"
        )
        cmts = ", ".join(f"CMT {k}: {v}" for k, v in s["obs_cmt"].items()) or "none"
        console.print(f"  observations by CMT: {cmts}")
        for name, c in s["covariates"].items():
            unit = f" {escape(c['unit'])}" if c["unit"] else ""
            console.print(f"  covariate {escape(name)}: {c['min']:g}-{c['max']:g}{unit}")
        console.print(f"  data hash: {s['data_hash']}")
    else:
        count = len(report.problems)
        console.print(f"[bold red]invalid[/bold red]: {escape(str(table))}: {count} problem{'s' if count != 1 else ''}")
        console.print(f"  ({escape(ROW_CONVENTION)})")
        shown = report.problems if limit == 0 else report.problems[:limit]
        for i, problem in enumerate(shown, start=1):
            console.print(f"  {i}. {escape(problem.format())}")
        if len(shown) < count:
            console.print(f"  … and {count - len(shown)} more (--limit 0 or --json lists all)")
    if report.notices:
        console.print(f"[yellow]warnings[/yellow] ({len(report.notices)}):")
        for notice in report.notices:
            console.print(f"  - {escape(notice.format())}")
    raise typer.Exit(0 if report.ok else 1)
