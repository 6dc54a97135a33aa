"""``medsim models``: list the registered physiology models."""

from __future__ import annotations

import json

import typer

from medsim.cli.app import app


@app.command("models")
def models_command(
    name: str = typer.Argument(None, help="Show one model in full (states, parameters, units, citation)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable description."),
) -> None:
    """List the registered physiology models with their states, parameters and units."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    import medsim.models as registry

    try:
        names = [name] if name else list(registry.available())
        models = [registry.get(n) for n in names]
    except registry.UnknownModelError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps([m.describe() for m in models], indent=2, default=str))
        return
    console = Console()
    for m in models:
        console.print(f"[bold]{m.name}[/bold] v{m.version} — {m.description} (time in {m.time_unit})")
        console.print(f"  source: {m.citation}")
        states = Table("state", "unit", "description", title=None, show_edge=False)
        for s in m.states:
            states.add_row(s.name, s.unit, s.description)
        console.print(states)
        params = Table("parameter", "unit", "typical", "kind", "BSV (log-SD)", "description", show_edge=False)
        for p in m.parameters:
            params.add_row(p.name, p.unit, f"{p.typical:.4g}", p.kind, f"{p.bsv:.3g}" if p.bsv else "-", p.description)
        console.print(params)
        obs = Table("observable", "unit", "residual error", "description", show_edge=False)
        for o in m.observables:
            r = m.residual.get(o.name)
            rtxt = "-" if r is None else f"{r.kind} (add={r.add:g}, prop={r.prop:g})"
            obs.add_row(o.name, o.unit, rtxt, o.description)
        console.print(obs)
        doses = escape(", ".join(f"CMT {c} → {s} [{m.dose_units.get(c, '')}]" for c, s in m.dose_targets.items()))
        observed = ", ".join(f"CMT {c} → {o}" for c, o in m.obs_targets.items())
        console.print(f"  doses: {doses}\n  observations: {observed}")
        if m.covariates:
            console.print("  covariates: " + escape(", ".join(f"{c.name} [{c.unit}]" for c in m.covariates)))
        console.print(f"  process noise on: {', '.join(m.noisy_states)}\n")
