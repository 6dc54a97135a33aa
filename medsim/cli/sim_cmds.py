"""``medsim simulate``: the simulator tour — virtual patients from a model's prior under a default regimen.

The regimen and the monitored bounds are the ones each model declares
(:meth:`~medsim.models.base.PhysiologyModel.default_regimen` and ``safety_limits``, documented in
the model's file; simulation starts at time 0 = midnight): for example the glucose models' basal
rate, three meals and carbohydrate-ratio boluses with the consensus range 70-180 mg/dL, or
theophylline's 320 mg every 12 h with 20 mg/L. ``--bound`` replaces the bounds.

A model that declares no regimen runs without doses. The population is advanced in hourly interaction intervals; the
crossing probability of each bound over the horizon is reported from the Brownian-bridge estimator
(mean of ``1 - exp(sum log_survival)``) next to the grid-only estimate (a crossing seen on the
sub-step grid), each with its Monte Carlo standard error (``null`` with a reason in ``--json`` when
it cannot be estimated).

Before simulating, the command checks the work (hourly intervals against ``--max-interactions``,
planned memory against ``--max-memory``) and the step (``--dt`` against the stability limit of an
explicit scheme, from the drift's Jacobian of the sampled patients: :mod:`medsim.simulate.stability`;
``--scheme auto`` switches to the exponential scheme where the limit is exceeded and it applies).
During the run a non-finite or non-physical state stops it with an error naming the patient and
its parameters (:mod:`medsim.simulate.checks`): no number is reported from a blown-up simulation.

Environment: the command spreads chunks over all CPU cores by asking JAX for one CPU device per
core (``jax_num_cpu_devices``) before JAX initialises; set ``MEDSIM_CPU_DEVICES`` to override.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from pathlib import Path

import typer

from medsim.cli.app import app


def default_bounds(model) -> tuple:
    """The model's declared safety limits (``PhysiologyModel.safety_limits``) as simulator bounds."""
    from medsim.simulate import Bound

    return tuple(Bound(lim.observable, lim.value, lim.side) for lim in model.safety_limits)


def regimen_events(model, theta: dict, n: int, horizon: float):
    """The model's default regimen (``PhysiologyModel.default_regimen``) as dose events and rates."""
    import numpy as np

    from medsim.simulate import DoseEvents

    rows, rates = model.default_regimen(theta, horizon)
    if not rows:
        return None, rates
    time_ = np.tile([r[0] for r in rows], (n, 1))
    cmt = np.tile([r[1] for r in rows], (n, 1))
    amount = np.stack([np.broadcast_to(np.asarray(r[2], np.float64), (n,)) for r in rows], axis=1)
    return DoseEvents.from_arrays(time_, cmt, amount), rates


def _planned_memory(model, n: int, n_events: int, n_bounds: int, n_intervals: int, saved_per_interval: int) -> float:
    """Bytes the command will hold for ``n`` patients (host and device copies, a factor 2 for temporaries)."""
    per_patient = 8 * 3 * (len(model.parameters) + len(model.covariates) + 1)  # float64 draws + float32 copies
    per_patient += 4 * 8 * len(model.state_names)  # states in and out of each chunk
    per_patient += 12 * 4 * max(n_events, 1)  # dose events: host float64, planned float32, device
    per_patient += 8 * 4 * max(n_bounds, 1)  # accumulated statistics
    per_patient += 4 * 2 * 2 * n_intervals * saved_per_interval  # fan-chart paths and their concatenation
    return 2.0 * n * per_patient


def _check_work(model, n: int, hours: float, per_hour_steps: float, n_bounds: int, save_every, limits) -> None:
    """Refuse (``WorkLimitError``) a run whose hourly intervals or memory exceed ``limits``, before any work."""
    import numpy as np

    from medsim.simulate import budget

    detail = f"{n} patients over {hours:g} h in hourly intervals"
    options = {"interactions_option": "--max-interactions", "memory_option": "--max-memory"}
    n_intervals = math.ceil(hours)
    # Intervals first: the regimen below has as many doses as the horizon has days.
    budget.check_work(
        interactions=n_intervals, memory=0.0, max_interactions=limits[0], max_memory=limits[1], detail=detail, **options
    )
    typical = {
        k: np.asarray(v)[None] for k, v in {**model.reference_covariates(), **model.typical_parameters()}.items()
    }
    one, _ = regimen_events(model, typical, 1, hours * (60.0 if model.time_unit == "min" else 1.0))
    saved = 0 if save_every is None else math.ceil(per_hour_steps / save_every) + 1
    n_events = 0 if one is None else int(one.time.shape[1])
    memory = _planned_memory(model, n, n_events, n_bounds, n_intervals, saved)
    budget.check_work(
        interactions=n_intervals,
        memory=memory,
        max_interactions=limits[0],
        max_memory=limits[1],
        detail=detail,
        **options,
    )


def _use_all_cores() -> None:
    import jax

    count = int(os.environ.get("MEDSIM_CPU_DEVICES", os.cpu_count() or 1))
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already initialised (e.g. when called from Python): keep its devices
        pass


def _write_fan_chart(path: Path, time_h, values, bounds, observable: str, unit: str, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    q = np.nanpercentile(values, [5, 25, 50, 75, 95], axis=0)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.fill_between(time_h, q[0], q[4], alpha=0.25, color="C0", lw=0, label="5-95 %")
    ax.fill_between(time_h, q[1], q[3], alpha=0.45, color="C0", lw=0, label="25-75 %")
    ax.plot(time_h, q[2], color="C0", lw=1.5, label="median")
    for b in bounds:
        if b.observable == observable:
            ax.axhline(b.value, color="C3", ls="--", lw=1, label=b.name)
    ax.set_xlabel("time (h)")
    ax.set_ylabel(f"{observable} ({unit})")
    ax.set_title(f"{n} virtual patients from the prior")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    from medsim.io import atomic_write

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


@app.command("simulate")
def simulate_command(
    model_name: str = typer.Option("glucose_insulin", "--model", help="Registered model (see `medsim models`)."),
    n: int = typer.Option(1000, "--n", min=1, help="Number of virtual patients."),
    hours: float = typer.Option(24.0, "--hours", min=0.0, help="Simulated horizon in hours."),
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
    """Simulate virtual patients from a model's prior under a default regimen and report crossing risk."""
    if plot is not None:
        from medsim.cli.outputs import output_file

        output_file(plot, "--plot")
    _use_all_cores()
    import jax
    import numpy as np
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    import medsim.models as registry
    from medsim.policies.spec import parse_bound
    from medsim.population.prior import prior_population
    from medsim.simulate import SimulationError, Simulator, budget, stability
    from medsim.simulate import checks as sim_checks

    def fail(err: Exception) -> None:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)

    try:
        model = registry.get(model_name)
        bounds = tuple(parse_bound(b, where="--bound") for b in bound) if bound else default_bounds(model)
        per_hour = 60.0 if model.time_unit == "min" else 1.0
        step = float(dt) if dt is not None else per_hour / 60.0
        if not math.isfinite(hours):
            raise ValueError(f"--hours: expected a finite number of hours, got {hours}")
        sim = Simulator(model, dt=step, bounds=bounds, scheme="milstein" if scheme == "auto" else scheme)
        horizon = hours * per_hour
        save_every = max(1, round(per_hour / 12 / step)) if plot else None  # ~5-minute resolution
        limits = (max_interactions, None if max_memory is None else budget.parse_memory(max_memory))
        _check_work(model, n, hours, per_hour / step, len(bounds), save_every, limits)
    except (registry.UnknownModelError, ValueError) as err:
        fail(err)
    key = jax.random.key(seed)
    theta = prior_population(model, n, key=jax.random.fold_in(key, 0))
    events, rates = regimen_events(model, theta, n, horizon)
    x = model.initial_state(theta)
    try:
        limit = sim.step_limit(x, theta)
        if scheme == "auto":
            chosen = stability.choose_scheme(model, step, limit)
            if chosen != sim.scheme:
                sim = Simulator(model, dt=step, bounds=bounds, scheme=chosen)
                typer.echo(
                    f"note: --scheme auto chose {chosen}: dt = {step:g} {model.time_unit} is beyond the explicit "
                    f"schemes' stability limit of {limit.max_dt:.4g} {model.time_unit} for these patients",
                    err=True,
                )
        else:
            stability.check_step(model, sim.scheme, step, limit)
    except (ValueError, SimulationError) as err:
        fail(err)
    cuts = np.append(np.arange(0.0, horizon, per_hour), horizon) if horizon > 0 else np.zeros(1)
    log_surv = np.zeros((n, len(bounds)))
    grid = np.zeros((n, len(bounds)), bool)
    plotted = next((b.observable for b in bounds), model.observable_names[0])
    track_t, track_v = [], []
    steps = 0.0
    start = time.perf_counter()
    with Progress(disable=as_json, transient=True) as progress:
        task = progress.add_task(f"simulating {n} x {hours:g} h", total=len(cuts) - 1)
        for i, (t0, t1) in enumerate(itertools.pairwise(cuts)):
            try:
                res = sim.advance(
                    x,
                    theta,
                    t0,
                    t1,
                    key=jax.random.fold_in(key, i + 1),
                    events=events,
                    rates=rates,
                    save_every=save_every,
                )
            except (SimulationError, ValueError) as err:
                fail(err)
            x = res.state
            log_surv += np.asarray(res.stats.log_survival, np.float64)
            grid |= np.asarray(res.stats.grid_violation)
            if i == 0:  # the start point is on the grid too
                for k, b in enumerate(bounds):
                    grid[:, k] |= b.outside(np.asarray(res.stats.obs_start[b.observable]))
            if plot:
                track_t.append(np.asarray(res.path.time[0]))
                track_v.append(np.asarray(res.path.values[plotted]))
            steps += (t1 - t0) / step
            progress.advance(task)
    jax.block_until_ready(x)
    elapsed = time.perf_counter() - start
    days = n * horizon / (per_hour * 24.0)

    p_bridge = -np.expm1(log_surv)
    try:  # every patient's numbers were checked interval by interval; the aggregates must be finite too
        checks_values = {f"crossing probability of {b.name}": p_bridge[:, k] for k, b in enumerate(bounds)}
        sim_checks.check_finite(checks_values, theta, 0.0, horizon, time_unit=model.time_unit)
    except SimulationError as err:
        fail(err)
    no_se = "one patient: no standard error" if n == 1 else None
    summary = {
        "model": model.name,
        "n_patients": n,
        "hours": hours,
        "dt": step,
        "time_unit": model.time_unit,
        "seed": seed,
        "scheme": sim.scheme,
        **({"scheme_requested": "auto"} if scheme == "auto" else {}),
        "bounds": [],
        "seconds": elapsed,
        "patient_days_per_s": days / elapsed if elapsed > 0 else None,
        "patient_steps_per_s": n * steps / elapsed if elapsed > 0 else None,
    }
    for k, b in enumerate(bounds):
        pb, pg = p_bridge[:, k], grid[:, k].astype(float)
        summary["bounds"].append(
            {
                "bound": b.name,
                "p_bridge": float(pb.mean()),
                "se_bridge": float(pb.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
                "p_grid": float(pg.mean()),
                "se_grid": float(pg.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
                **({"se_reason": no_se} if no_se else {}),
            }
        )
    if plot:
        unit = model.observable(plotted).unit
        values = np.concatenate(track_v, axis=1)
        time_h = np.concatenate(track_t) / per_hour
        _write_fan_chart(plot, time_h, values, bounds, plotted, unit, n)
        summary["plot"] = str(plot)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, allow_nan=False))
        return
    console = Console()
    console.print(
        f"[bold]{model.name}[/bold]: {n} virtual patients from the prior, {hours:g} h at dt = {step:g} "
        f"{model.time_unit} ({sim.scheme}), seed {seed}"
    )
    table = Table("bound", "P(cross) bridge ± SE", "P(cross) grid only ± SE", show_edge=False)
    for row in summary["bounds"]:
        se_b = f" ± {row['se_bridge']:.4f}" if row["se_bridge"] is not None else ""
        se_g = f" ± {row['se_grid']:.4f}" if row["se_grid"] is not None else ""
        table.add_row(row["bound"], f"{row['p_bridge']:.4f}{se_b}", f"{row['p_grid']:.4f}{se_g}")
    console.print(table)
    console.print(
        f"{elapsed:.2f} s (including compilation): {summary['patient_days_per_s']:.3g} patient-days/s, "
        f"{summary['patient_steps_per_s']:.3g} patient-steps/s"
    )
    if plot:
        console.print(f"fan chart written to {plot}")
