"""``medsim simulate``: the simulator tour — virtual patients from a model's prior under its declared regimen.

A thin use of the library's loop (``docs/architecture.md``): the model's prior population
(:func:`~medsim.population.prior_population`, typical values with the literature's between-subject
variability) -> the closed-loop rollout (:func:`~medsim.policies.rollout.rollout`) of the regimen
the model declares (:class:`~medsim.policies.regimen.DeclaredRegimen`, from
:meth:`~medsim.models.base.PhysiologyModel.default_regimen`; time 0 is midnight) -> the risk report
(:func:`~medsim.policies.risk.risk_report`) against the model's declared ``safety_limits`` (or
``--bound``, read by the safety spec's bound parser). For example the glucose models' basal rate,
three meals and carbohydrate-ratio boluses against the consensus range 70-180 mg/dL, or
theophylline's 320 mg every 12 h against 20 mg/L. ``medsim risk --prior MODEL`` runs the same
rollout and report for named policies over patients whose population values are drawn from the
prior as well, and writes the whole report.

Patients are looked at every hour (a measurement each time) and at every dose. The crossing
probability of each bound over the horizon is the report's Brownian-bridge estimate next to its
grid-only estimate (a crossing seen on the sub-step grid), each with its standard error and
interval (``null`` with a reason in ``--json`` when it cannot be estimated); ``--plot`` writes the
report's fan chart.

Before simulating, the command checks the work (hourly intervals against ``--max-interactions``,
planned memory against ``--max-memory``, with the rollout's own memory estimate) and the step
(``--dt`` against the stability limit of an explicit scheme, from the drift's Jacobian of the
sampled patients: :mod:`medsim.simulate.stability`; ``--scheme auto`` switches to the exponential
scheme where the limit is exceeded and it applies). During the run a non-finite or non-physical
state stops it with an error naming the patient and its parameters (:mod:`medsim.simulate.checks`):
no number is reported from a blown-up simulation.

Environment: the command spreads chunks over all CPU cores by asking JAX for one CPU device per
core (``jax_num_cpu_devices``) before JAX initialises; set ``MEDSIM_CPU_DEVICES`` to override.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import typer

from medsim.cli.app import app, use_all_cores

#: Patients whose paths the fan chart draws its quantile bands from.
FAN_PATHS = 1000
#: Points saved per path over the horizon (the rollout's default).
PATH_POINTS = 400


def prior_patients(model, n: int, seed: int):
    """The ``n`` virtual patients ``medsim simulate --seed seed`` simulates (a ``VirtualPopulation``).

    The model's typical-value prior population (:func:`medsim.population.prior_population`) drawn
    with the key ``fold_in(key(seed), 0)``; patient ``i`` is the same for any ``n``.
    """
    import jax

    from medsim.population import VirtualPopulation
    from medsim.population.prior import prior_population

    theta = prior_population(model, n, key=jax.random.fold_in(jax.random.key(seed), 0))
    provenance = {"source": "model prior (typical values, literature between-subject variability)", "seed": seed}
    return VirtualPopulation.from_parameters(model, theta, seed=seed, provenance=provenance)


def simulation_spec(model, bounds: list[str] | None, hours: float):
    """The safety spec ``medsim simulate`` reports on: ``--bound`` or the model's declared limits, over ``hours``.

    Raises
    ------
    SpecError
        A bound that does not parse, names an observable the model lacks, or leaves no safe value;
        a model that declares no limits when no ``--bound`` is given.
    """
    from medsim.policies.regimen import declared_bounds
    from medsim.policies.spec import SafetySpec, SpecError, parse_bound

    if bounds:
        parsed, source = tuple(parse_bound(b, where="--bound") for b in bounds), "--bound"
    else:
        parsed, source = declared_bounds(model), f"model {model.name!r} safety limits"
        if not parsed:
            raise SpecError(f"model {model.name!r} declares no safety limits; give one with --bound")
    # rare=off: the summary reports the plain estimators; `medsim risk` runs the rare-event follow-up.
    spec = SafetySpec(bounds=parsed, horizon=float(hours), time_unit="h", rare="off", source=source)
    return spec.validate(model)


def _check_work(model, n: int, horizon: float, look: float, n_bounds: int, n_paths: int, limits) -> None:
    """Refuse (``WorkLimitError``) a run whose hourly intervals or memory exceed ``limits``, before any work.

    Memory: the population (as :func:`medsim.policies.evaluate.evaluate_policies` plans it), the
    regimen's per-patient amounts, the rollout's records (:func:`medsim.policies.rollout_setup.planned_memory`)
    and the fan chart's saved paths.
    """
    import numpy as np

    from medsim.policies.rollout_setup import planned_memory
    from medsim.simulate import budget
    from medsim.units import convert_time

    hours = convert_time(horizon, model.time_unit, "h")
    detail = f"{n} patients over {hours:g} h in hourly intervals"
    options = {"interactions_option": "--max-interactions", "memory_option": "--max-memory"}
    intervals = budget.interaction_count(horizon, look)
    # Intervals first: the regimen below has as many doses as the horizon has dosing times.
    budget.check_work(
        interactions=intervals, memory=0.0, max_interactions=limits[0], max_memory=limits[1], **options, detail=detail
    )
    typical = {
        k: np.asarray(v)[None] for k, v in {**model.reference_covariates(), **model.typical_parameters()}.items()
    }
    n_doses = len(model.default_regimen(typical, horizon)[0])
    width = len(model.parameters) + len(model.covariates) + len(model.state_names) + 8
    memory = 4.0 * 8 * width * n + 8.0 * n_doses * n
    memory += planned_memory(model, n_bounds, n, intervals + n_doses, 0, horizon)
    memory += 2 * 2 * 4.0 * n_paths * PATH_POINTS * len(model.observable_names)  # float32 segments and joined
    budget.check_work(
        interactions=intervals,
        memory=memory,
        max_interactions=limits[0],
        max_memory=limits[1],
        detail=detail,
        **options,
    )


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def bound_summary(risk) -> list[dict]:
    """Per-bound rows of the summary from a report's ``PolicyRisk``: bridge and grid estimates with SE and interval."""
    rows = []
    for vp in risk.per_bound:
        bridge, grid = vp.bridge, vp.grid
        row = {
            "bound": vp.bound,
            "p_bridge": bridge.value,
            "se_bridge": _finite(bridge.se),
            "interval_bridge": [_finite(bridge.lower), _finite(bridge.upper)],
            "p_grid": grid.value,
            "se_grid": _finite(grid.se),
            "interval_grid": [_finite(grid.lower), _finite(grid.upper)],
            "level": bridge.level,
        }
        if row["se_bridge"] is None or row["se_grid"] is None:
            row["se_reason"] = (
                "one patient: no standard error" if bridge.n < 2 else bridge.no_interval or grid.no_interval
            )
        rows.append(row)
    return rows


@app.command("simulate")
def simulate_command(
    model_name: str = typer.Option("glucose_insulin", "--model", help="Registered model (see `medsim models`)."),
    n: int = typer.Option(1000, "--n", min=1, help="Number of virtual patients."),
    hours: float = typer.Option(24.0, "--hours", min=0.0, help="Simulated horizon in hours (> 0)."),
    dt: float = typer.Option(None, "--dt", help="Sub-step in the model's time unit (default: 1 minute)."),
    scheme: str = typer.Option(
        "milstein",
        "--scheme",
        help="SDE scheme: milstein, euler, exponential (stable for fast absorption/elimination at large --dt) "
        "or auto (milstein, or exponential where --dt is beyond milstein's stability limit). An explicit scheme "
        "at a --dt beyond its stability limit is refused with the largest stable step.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the patients and their process noise."),
    bound: list[str] = typer.Option(None, "--bound", help="Safety bound, e.g. 'glucose_mg_dL>=70' (repeatable)."),
    plot: Path = typer.Option(None, "--plot", help="Write a fan chart of the first bounded observable (PNG)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
    max_interactions: int = typer.Option(
        None,
        "--max-interactions",
        min=1,
        help="Most hourly intervals (i.e. simulated hours) to run; default 100000. Longer horizons are refused "
        "before any work unless this is raised.",
    ),
    max_memory: str = typer.Option(
        None,
        "--max-memory",
        help="Most memory the run may plan to use, e.g. 8GiB (default: half the machine's memory). Larger runs "
        "(too many patients or hours) are refused before any work unless this is raised.",
    ),
) -> None:
    """Simulate virtual patients from a model's prior under its declared regimen and report crossing risk."""
    if plot is not None:
        from medsim.cli.outputs import output_file

        output_file(plot, "--plot")
    use_all_cores()
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    import medsim.models as registry
    from medsim.io import write_bytes
    from medsim.policies.regimen import DeclaredRegimen
    from medsim.policies.risk import risk_report
    from medsim.policies.rollout import rollout
    from medsim.policies.spec import SpecError
    from medsim.simulate import SimulationError, Simulator, budget, stability
    from medsim.simulate.schemes import SCHEMES
    from medsim.units import convert_time

    def fail(err: Exception) -> None:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)

    try:
        model = registry.get(model_name)
        if not (math.isfinite(hours) and hours > 0):
            raise ValueError(f"--hours: expected a positive, finite number of hours, got {hours}")
        if scheme not in (*SCHEMES, "auto"):
            raise ValueError(f"--scheme: expected one of {[*SCHEMES, 'auto']}, got {scheme!r}")
        spec = simulation_spec(model, bound, hours)
        unit = model.time_unit
        horizon, look = spec.horizon, convert_time(1.0, "h", unit)
        step = float(dt) if dt is not None else convert_time(1.0, "min", unit)
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"--dt: expected a positive step in {unit}, got {dt}")
        limits = (max_interactions, None if max_memory is None else budget.parse_memory(max_memory))
        n_paths = min(n, FAN_PATHS) if plot else 0
        _check_work(model, n, horizon, look, len(spec.bounds), n_paths, limits)
        population = prior_patients(model, n, seed)
        policy = DeclaredRegimen.for_population(population, horizon, look_every=look)
        chosen = scheme
        if scheme == "auto":  # Milstein where dt is stable for every patient, else the exponential scheme
            limit = Simulator(model, dt=step).step_limit(population.initial_state(), population.simulation_parameters())
            chosen = stability.choose_scheme(model, step, limit)
            if chosen != "milstein":
                typer.echo(
                    f"note: --scheme auto chose {chosen}: dt = {step:g} {unit} is beyond the explicit "
                    f"schemes' stability limit of {limit.max_dt:.4g} {unit} for these patients",
                    err=True,
                )
    except (registry.UnknownModelError, SpecError, ValueError) as err:
        fail(err)
    start = time.perf_counter()
    with Progress(disable=as_json, transient=True) as progress:
        task = progress.add_task(f"simulating {n} x {hours:g} h", total=1.0)
        try:
            result = rollout(
                model,
                population,
                policy,
                bounds=spec.bounds,
                horizon=horizon,
                dt=step,
                seed=seed,
                n_paths_saved=n_paths,
                progress=lambda done, total: progress.update(task, completed=done / total),
                scheme=chosen,
                max_interactions=limits[0],
                max_memory=limits[1],
            )
        except (SimulationError, ValueError) as err:
            fail(err)
    elapsed = time.perf_counter() - start
    provenance = {
        "posterior_file": f"prior:{model.name}",
        "population": f"prior, n={n}",
        "policy": "the model's declared regimen (PhysiologyModel.default_regimen)",
        "support_unknown": "patients are drawn from the model's priors, there is no fitted cohort to compare with",
    }
    report = risk_report([result], spec, provenance=provenance, model=model)
    days = n * hours / 24.0
    summary = {
        "model": model.name,
        "n_patients": n,
        "hours": hours,
        "horizon": horizon,
        "dt": step,
        "time_unit": unit,
        "seed": seed,
        "scheme": chosen,
        **({"scheme_requested": "auto"} if scheme == "auto" else {}),
        "bounds": bound_summary(report.policies[0]),
        "warnings": list(report.all_warnings),
        "seconds": elapsed,
        "patient_days_per_s": days / elapsed if elapsed > 0 else None,
        "patient_steps_per_s": n * (horizon / step) / elapsed if elapsed > 0 else None,
    }
    if plot:
        from medsim.policies.report.figures import fan_chart

        label = f"{n} virtual patients from the prior, declared regimen"
        write_bytes(plot, fan_chart(result, report.spec, label=label, units=report.units))
        summary["plot"] = str(plot)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, allow_nan=False))
        return
    console = Console()
    console.print(
        f"[bold]{model.name}[/bold]: {n} virtual patients from the prior under the declared regimen, {hours:g} h "
        f"at dt = {step:g} {unit} ({chosen}), seed {seed}"
    )
    for w in summary["warnings"]:
        console.print(f"[bold red]warning:[/] {w}")
    level = f"{100 * report.policies[0].per_bound[0].bridge.level:g}%"
    table = Table("bound", "P(cross) bridge ± SE", f"{level} interval", "P(cross) grid only ± SE", show_edge=False)
    for row in summary["bounds"]:
        se_b = f" ± {row['se_bridge']:.4f}" if row["se_bridge"] is not None else ""
        se_g = f" ± {row['se_grid']:.4f}" if row["se_grid"] is not None else ""
        lo, hi = row["interval_bridge"]
        interval = f"[{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else "n/a"
        table.add_row(row["bound"], f"{row['p_bridge']:.4f}{se_b}", interval, f"{row['p_grid']:.4f}{se_g}")
    console.print(table)
    console.print(
        f"{elapsed:.2f} s (including compilation): {summary['patient_days_per_s']:.3g} patient-days/s, "
        f"{summary['patient_steps_per_s']:.3g} patient-steps/s"
    )
    if plot:
        console.print(f"fan chart written to {plot}")
