"""``medsim risk``: evaluate treatment policies' chance-constraint risk on virtual patients.

posterior (or a model's priors, or a neural checkpoint) -> virtual population -> closed-loop
rollouts of every policy on common random numbers -> risk report (``report.json``,
``report.md``, ``report.html``).

Every model's calibration gate (:mod:`medsim.models.gate`) goes into the report: for a posterior
file, the record ``medsim check --heldout-...`` stored in it; a model that failed it gets no PASS
verdict and the report leads with MISCALIBRATED and the gate's figures, unless ``--force``
(recorded in the report's provenance); an unchecked model's report says so first. A neural
checkpoint passes the calibration gate first (refused, with its measured coverage, unless
``--force``). Its report names the checkpoint (weights and configuration digests,
training data hash, calibration) in the provenance and opens with a warning that the patients
come from a learned model, and a second one when the gate was forced.

Exit status: 0 on success whatever the verdicts, 1 with ``--fail-on-violation`` when a policy
FAILs its chance constraint, 2 on bad input (a miscalibrated neural model included).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from medsim.cli.app import app, use_all_cores
from medsim.cli.app import fail as _fail
from medsim.cli.cluster import cluster
from medsim.cli.risk_sources import SUPPORT_UNKNOWN, load_draws, neural_report_context

_COLORS = {"PASS": "green", "FAIL": "red", "UNDECIDED": "yellow"}


def summarise(report: Any, files: Any, console: Any) -> None:
    """Print the verdicts, the warnings and where the report went."""
    from rich.table import Table

    from medsim.policies.report.text import pct_ci

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
    for p in report.policies:
        if getattr(p, "recorded_patients", None) is not None:
            console.print(f"note: {p.policy}: {p.recorded_note}")
    console.print(f"report: {files.html}  (also {files.markdown.name}, {files.json.name})")


def finish(report: Any, results: Sequence[Any], *, out: Path, fail_on_violation: bool, console: Any) -> int:
    """Write the risk report, print its summary and return the exit status."""
    from medsim.io import FolderWriteError
    from medsim.policies.report import write_report

    try:
        files = write_report(report, out, results=results)
    except FolderWriteError as err:
        _fail(str(err))
    summarise(report, files, console)
    failed = any(p.verdict.decision == "FAIL" for p in report.policies)
    return 1 if (fail_on_violation and failed) else 0


@app.command("risk")
def risk_command(
    posterior: Path = typer.Argument(
        None, help="Posterior file (netCDF) written by `medsim fit`, or a neural checkpoint (NAME.json)."
    ),
    policy: list[str] = typer.Option(
        ...,
        "--policy",
        help=(
            "Policy: a built-in NAME[:key=value,...] (fixed, tdm, basal_bolus, pid, flip, safe_timing), a trained "
            "agent learned:AGENT.json (JSON architecture + safetensors weights), or your own "
            "Python code as module:attr[:key=value,...] or file.py[:attr]. Loading your code imports and runs it: "
            "name only code you trust (medsim then calls only policy classes, policy functions and factories "
            "named make_policy or marked @policy_factory). Repeat to compare policies."
        ),
    ),
    spec_text: str = typer.Option(
        ..., "--spec", help="Safety spec: a .toml/.json file or inline 'conc<=20,conc>=5;horizon=72h;epsilon=0.05'."
    ),
    n: int = typer.Option(1000, "--n", min=1, help="Number of virtual patients."),
    out: Path = typer.Option(..., "--out", help="Folder for report.json, report.md, report.html and figures/."),
    mode: str = typer.Option("population", "--mode", help="population (new patients) or personalized (twins)."),
    subject: str = typer.Option(None, "--subject", help="Fitted subject ID to twin (with --mode personalized)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same report."),
    dt: float = typer.Option(None, "--dt", help="Simulator sub-step in the model's time unit (default: 1 minute)."),
    scheme: str = typer.Option(
        "milstein",
        "--scheme",
        help="SDE scheme: milstein, euler, or exponential (stable for fast first-order rates at coarse --dt).",
    ),
    scenario: str = typer.Option("auto", "--scenario", help="Disturbances: auto (meals for glucose), meals, none."),
    patients_per_draw: int = typer.Option(None, "--patients-per-draw", min=1, help="Patients sharing one draw."),
    prior: str = typer.Option(None, "--prior", help="Use this model's priors instead of a posterior (no fit)."),
    prior_draws: int = typer.Option(200, "--prior-draws", min=2, help="Prior draws to use with --prior."),
    fail_on_violation: bool = typer.Option(
        False, "--fail-on-violation", help="Exit with status 1 when any policy FAILs its chance constraint."
    ),
    cohort: str = typer.Option(
        None, "--cohort", help="Neural checkpoints: cohort to twin or resample covariates from (default: training)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Give verdicts even from a model that failed its calibration gate (recorded)."
    ),
    coverage_floor: float = typer.Option(
        0.8, "--coverage-floor", help="Neural checkpoints: smallest acceptable held-out 90% coverage."
    ),
    max_interactions: int = typer.Option(
        None,
        "--max-interactions",
        min=1,
        help="Most policy interactions per patient (horizon / interval); default 100000. Larger runs are refused "
        "before any work unless this is raised.",
    ),
    max_memory: str = typer.Option(
        None,
        "--max-memory",
        help="Most memory a policy's rollout may plan to use, e.g. 8GiB (default: half the machine's memory). "
        "Larger runs are refused before any work unless this is raised.",
    ),
    workers: int = typer.Option(
        None,
        "--workers",
        min=1,
        help="Shard the patients over this many local Dask worker processes (needs medsim[dask]); the report is "
        "the one a single process gives.",
    ),
    scheduler: str = typer.Option(
        None,
        "--scheduler",
        help="Shard the patients over an existing Dask cluster at this address (e.g. tcp://host:8786; SLURM via "
        "dask-jobqueue, see docs/scale.md).",
    ),
    worker_threads: int = typer.Option(
        None,
        "--worker-threads",
        min=1,
        help="CPU threads per worker (default: the machine's cores / --workers); local workers are pinned to that "
        "many cores each.",
    ),
    worker_memory: float = typer.Option(
        None,
        "--worker-memory-fraction",
        help="Fraction of an accelerator's memory each worker may take (several workers sharing one GPU).",
    ),
    rare_budget: float = typer.Option(
        None,
        "--rare-budget",
        min=100,
        help="Path-equivalents per policy for the rare-event follow-up (closed-loop splitting where the plain "
        "estimate saw fewer than 10 patients with a crossing; spec key rare=auto|off|ams). Overrides the spec's "
        "rare_budget; default 4000.",
    ),
    loop: str = typer.Option(
        "auto",
        "--loop",
        help="Where the closed loop runs: auto (compiled for policies with an array step from 4096 patients on), "
        "device (compiled; refused for Python policies) or host (Python loop, any policy). The numbers are the same.",
    ),
    statistics: str = typer.Option(
        "auto",
        "--statistics",
        help="What each rollout keeps: rows (every interaction of every patient), stream (per-patient sums of every "
        "patient from the compiled loop, every interaction of the first --recorded-patients; built-in policies) or "
        "auto (rows unless they exceed the memory limit). Streamed reports take risk curves, margins, the support "
        "flag, glucose metrics, AGP and fan charts from the recorded patients and say so.",
    ),
    recorded_patients: int = typer.Option(
        2000, "--recorded-patients", min=1, help="Patients recorded in full when streaming (see --statistics)."
    ),
    on_failure: str = typer.Option(
        "stop",
        "--on-failure",
        help="A patient that cannot be simulated (non-finite or runaway state, unusable option): stop (name it and "
        "end the run) or count (freeze it and count it as violating every bound from the time it failed; the report "
        "leads with a warning listing such patients).",
    ),
) -> None:
    """Estimate each policy's probability of leaving the safe range, between measurements included."""
    from medsim.cli.outputs import output_dir

    output_dir(out, "--out")
    use_all_cores()  # chunks of patients side by side, one per core (the same numbers)
    from dataclasses import replace

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from medsim.cli.neural_cmds import model_source, neural_population_cli
    from medsim.policies.evaluate import evaluate_policies, policy_context, resolve_scenario
    from medsim.policies.loading import PolicySpecError, build_policies
    from medsim.policies.protocol import MissingCovariateError
    from medsim.policies.spec import SpecError
    from medsim.policies.spec_file import parse_spec
    from medsim.simulate.budget import parse_memory

    console = Console(stderr=False)
    try:
        memory_limit = None if max_memory is None else parse_memory(max_memory)
    except ValueError as err:
        _fail(f"--max-memory: {err}")
    if loop not in ("auto", "device", "host"):
        _fail(f"--loop: expected auto, device or host, got {loop!r}")
    if on_failure not in ("stop", "count"):
        _fail(f"--on-failure: expected stop or count, got {on_failure!r}")
    if statistics not in ("auto", "rows", "stream"):
        _fail(f"--statistics: expected auto, rows or stream, got {statistics!r}")
    checkpoint = model_source(posterior, prior, cohort)
    population, notices = None, ()
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
        draws, model = None, population.model
        prov, notices = neural_report_context(population.provenance)
        from medsim.models.neural.gate import gate_of  # imports torch: only for neural checkpoints

        prov["calibration"] = gate_of(population.model, floor=coverage_floor)
        support = {k: tuple(v) for k, v in population.provenance.get("data_support", {}).items()} or None
    else:
        draws, prov, support = load_draws(posterior, prior, prior_draws, seed)
        model = draws.model
    if support is None:  # reported as "not checked" with this reason, never as 0 % outside
        source = "checkpoint" if checkpoint is not None else "prior" if prior is not None else "posterior"
        prov["support_unknown"] = SUPPORT_UNKNOWN[source].format(posterior)
    try:
        spec = parse_spec(spec_text, model=model)
        if rare_budget is not None:
            spec = replace(spec, rare_budget=float(rare_budget))
    except SpecError as err:
        _fail(str(err))
    prov = {**prov, "calibration_forced": force, "command": shlex.join(["medsim", *sys.argv[1:]])}
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"))
    with (
        cluster(workers, scheduler, worker_threads, worker_memory) as client,
        Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar,
    ):
        task = bar.add_task(f"simulating {len(policy)} policies x {n} patients", total=len(policy))
        try:
            # The command line's strings become objects here; workers of a cluster rebuild the
            # policies from their spec strings, so those travel as given.
            context = policy_context(model, spec, draws=draws, dt=dt, scheme=scheme)
            policies = policy if client is not None else build_policies(policy, context=context)
            report, results = evaluate_policies(
                draws,
                policies,
                spec,
                n=n,
                seed=seed,
                mode=mode,
                subject=subject,
                dt=dt,
                scenario=resolve_scenario(model, scenario, seed),
                patients_per_draw=patients_per_draw,
                support=support,
                provenance=prov,
                progress=lambda done, total: bar.update(task, completed=done),
                population=population,
                scheme=scheme,
                max_interactions=max_interactions,
                max_memory=memory_limit,
                client=client,
                loop=loop,
                on_failure=on_failure,
                statistics=statistics,
                recorded=recorded_patients,
            )
        except (PolicySpecError, ValueError, FloatingPointError) as err:
            hint = " (a neural checkpoint has none)" if checkpoint is not None and "posterior draws" in str(err) else ""
            _fail(f"{err}{hint}")
        except MissingCovariateError as err:
            message = str(err)
            # Built-in policies name a covariate they need only when they first act.
            have = sorted(population.covariates) if population is not None else [c.name for c in model.covariates]
            source = f"the neural model {model.name!r} is conditioned on" if checkpoint is not None else "patients have"
            _fail(f"{message}; {source} covariates {have or '(none)'}")
        bar.update(task, completed=len(policy))
    if notices:
        report = replace(report, warnings=(*notices, *report.warnings))
    code = finish(report, results, out=out, fail_on_violation=fail_on_violation, console=console)
    raise typer.Exit(code)
