"""``medsim sbc``: simulation-based calibration of the fitting machinery for any mechanistic model.

``medsim sbc MODEL --replications C`` draws ``C`` parameter sets from the model's prior,
simulates one cohort of the design from each (a single bolus at time 0, or the boluses given by
repeated ``--dose TIME:CMT:AMOUNT``, e.g. a meal and an insulin bolus), fits every cohort with
NUTS (``--method nuts``, all cohorts in one vectorised program) or SVI (``--method svi``, one
``medsim.inference.fit`` per cohort) and ranks the true values among the posterior draws
(:func:`medsim.inference.calibration.run_calibration`; Talts et al. 2018). Uniform ranks and
nominal interval coverage mean prior, simulator, likelihood and sampler agree. See
docs/calibration.md, "Simulation-based calibration". With ``--method svi`` the cohorts' fits can
run on Dask workers (``--workers N``, or ``--scheduler ADDRESS`` for an existing cluster), each
with the seed it has in one process, so the summary is the same.

Exit status (either method): 0 when no site's rank histogram is rejected as non-uniform
(chi-square test at level ``--alpha`` divided by the number of sites, Bonferroni), 1 when one
is, 2 for usage errors (unknown model, a design the model cannot take, bad option values).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medsim.cli.app import app
from medsim.cli.app import fail as _fail
from medsim.cli.outputs import output_file


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        _fail(f"{option}: expected comma-separated numbers, got {text!r}")


def _covariates(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            _fail(f"--covariate: expected NAME=NUMBER, got {item!r}")
    return out


def parse_doses(items: list[str]) -> tuple[float | None, tuple[tuple[float, int, float], ...]]:
    """``--dose`` values: one plain AMOUNT (a bolus at time 0 into ``--dose-cmt``) or any number of
    TIME:CMT:AMOUNT boluses. Returns (amount or None, boluses).

    Raises
    ------
    ValueError
        Naming ``--dose`` and the value: not a number or TIME:CMT:AMOUNT, or both forms mixed.
    """
    amount, doses = None, []
    for item in items:
        parts = item.split(":")
        try:
            if len(parts) == 1 and len(items) == 1:
                amount = float(parts[0])
            elif len(parts) == 3:
                doses.append((float(parts[0]), int(parts[1]), float(parts[2])))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"--dose: expected one AMOUNT or repeated TIME:CMT:AMOUNT (e.g. 0:2:60), got {item!r}"
            ) from None
    return amount, tuple(doses)


def build_design(model, *, subjects, times, dose, dose_cmt, obs_cmt, held_out, covariates, doses=()):
    """The :class:`~medsim.inference.calibration.Design` of the options.

    Defaults: the model's first dose and observation compartments; covariates not given take the
    model's reference values. ``doses``: (time, cmt, amount) boluses replacing the single bolus
    ``dose`` into ``dose_cmt`` at time 0.

    Raises
    ------
    ValueError
        Naming the option: a compartment the model has no dose or observation for, an unknown
        covariate, bad sampling times or doses.
    """
    from medsim.inference.calibration import Design

    dose_cmt = min(model.dose_targets) if dose_cmt is None else dose_cmt
    obs_cmt = min(model.obs_targets) if obs_cmt is None else obs_cmt
    if dose_cmt not in model.dose_targets:
        raise ValueError(f"--dose-cmt {dose_cmt}: model {model.name!r} is dosed in CMT {sorted(model.dose_targets)}")
    for _, cmt, _ in doses:
        if cmt not in model.dose_targets:
            raise ValueError(f"--dose CMT {cmt}: model {model.name!r} is dosed in CMT {sorted(model.dose_targets)}")
    if obs_cmt not in model.obs_targets:
        raise ValueError(f"--obs-cmt {obs_cmt}: model {model.name!r} observes CMT {sorted(model.obs_targets)}")
    known = [c.name for c in model.covariates]
    unknown = sorted(set(covariates) - set(known))
    if unknown:
        raise ValueError(f"--covariate {unknown[0]}: model {model.name!r} has covariates {known or '(none)'}")
    covariates = {**{c.name: float(c.reference) for c in model.covariates}, **covariates}
    kwargs = {"obs_time": times} if times else {}
    if dose is not None:
        kwargs["dose_amount"] = dose
    return Design(
        n_subjects=subjects,
        dose_cmt=dose_cmt,
        obs_cmt=obs_cmt,
        held_out=held_out,
        covariates=covariates,
        doses=tuple(doses),
        **kwargs,
    )


@app.command("sbc")
def sbc_command(
    model_name: str = typer.Argument(..., help="Registered mechanistic model (see `medsim models`)."),
    replications: int = typer.Option(20, "--replications", min=1, help="Simulated cohorts: prior draw, data, fit."),
    subjects: int = typer.Option(6, "--subjects", min=1, help="Subjects per simulated cohort."),
    times: str = typer.Option(
        None, "--times", help="Sampling times, comma-separated, model time unit (default 0.25,...,24)."
    ),
    dose: list[str] = typer.Option(
        None,
        "--dose",
        help="AMOUNT: a bolus at time 0 into --dose-cmt (default 320); or TIME:CMT:AMOUNT, repeatable "
        "(e.g. --dose 0:2:60 --dose 0:1:6 for a meal and an insulin bolus).",
    ),
    dose_cmt: int = typer.Option(None, "--dose-cmt", help="Dosed compartment (default: the model's first)."),
    obs_cmt: int = typer.Option(None, "--obs-cmt", help="Observed compartment (default: the model's first)."),
    held_out: int = typer.Option(1, "--held-out", min=1, help="Last measurements per subject kept out of the fit."),
    covariate: list[str] = typer.Option(None, "--covariate", help="NAME=VALUE shared by all subjects (repeatable)."),
    method: str = typer.Option("nuts", "--method", help="nuts (vectorised over cohorts) or svi (one fit per cohort)."),
    chains: int = typer.Option(2, "--chains", min=1, help="NUTS chains (svi: not used)."),
    warmup: int = typer.Option(300, "--warmup", min=1, help="NUTS warmup per chain (svi: not used)."),
    draws: int = typer.Option(300, "--draws", min=1, help="Posterior draws per chain (svi: from the fitted guide)."),
    svi_steps: int = typer.Option(
        5000, "--svi-steps", min=1, help="SVI optimisation steps per cohort (as `medsim fit`'s default)."
    ),
    svi_learning_rate: float = typer.Option(
        0.01, "--svi-learning-rate", min=1e-6, help="Adam's first step size per cohort (as in `medsim fit`)."
    ),
    svi_start: str = typer.Option(
        "prior",
        "--svi-start",
        help="Where each SVI fit starts, as in `medsim fit`: prior, ode (needs --process-noise), or prior,ode "
        "(both; the better ELBO kept).",
    ),
    max_substep: float = typer.Option(
        None, "--max-substep", help="The filter's longest step, model time unit (as in `medsim fit`)."
    ),
    rank_draws: int = typer.Option(99, "--rank-draws", min=1, help="Thinned draws the truth is ranked among."),
    bins: int = typer.Option(10, "--bins", min=2, help="Rank histogram bins (must divide --rank-draws + 1)."),
    process_noise: bool = typer.Option(False, "--process-noise/--ode", help="Fit the SDE model or its ODE limit."),
    full_prior: bool = typer.Option(
        False, "--full-prior", help="Use the model's prior widths (default: narrowed, see docs/calibration.md)."
    ),
    alpha: float = typer.Option(0.01, "--alpha", min=0.0, max=1.0, help="Family-wise level of the rank tests."),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(
        None,
        "--workers",
        min=1,
        help="--method svi: fit the cohorts on this many local Dask worker processes (needs medsim[dask]); "
        "same seeds, same summary as one process.",
    ),
    scheduler: str = typer.Option(
        None, "--scheduler", help="--method svi: fit the cohorts on an existing Dask cluster at this address."
    ),
    worker_threads: int = typer.Option(
        None, "--worker-threads", min=1, help="CPU threads per worker (default: the machine's cores / --workers)."
    ),
    out: Path = typer.Option(None, "--out", help="Write the JSON summary to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON summary."),
) -> None:
    """Simulation-based calibration of MODEL's fit (exit 1 if a rank histogram is not uniform)."""
    import medsim.models as registry
    from medsim.inference.calibration import narrowed_priors
    from medsim.io import atomic_write

    if out is not None:
        output_file(out, "--out")
    if (rank_draws + 1) % bins:
        _fail(f"--bins {bins} must divide --rank-draws + 1 = {rank_draws + 1}")
    if method not in ("nuts", "svi"):
        _fail(f"--method: expected nuts or svi, got {method!r}")
    if (workers is not None or scheduler is not None) and method != "svi":
        _fail("--workers / --scheduler fit the cohorts on workers with --method svi (NUTS fits them in one program)")
    if max_substep is not None and not max_substep > 0:
        _fail(f"--max-substep: expected a positive step (model time unit), got {max_substep}")
    from medsim.inference.backends.numpyro_svi import parse_starts

    try:
        starts = parse_starts(svi_start)
    except ValueError as err:
        _fail(f"--svi-start: {err}")
    if starts != ("prior",) and method != "svi":
        _fail(f"--svi-start {svi_start} applies to --method svi (NUTS starts its chains itself)")
    if "ode" in starts and not process_noise:
        _fail(
            "--svi-start ode starts an SDE fit at its ODE limit; with --ode the fits are the ODE limit "
            "(add --process-noise)"
        )
    n_draws = chains * draws if method == "nuts" else draws
    if n_draws < rank_draws:
        shown = "--chains x --draws" if method == "nuts" else "--draws"
        _fail(f"--rank-draws {rank_draws} exceeds the posterior draws ({shown} = {n_draws})")
    try:
        model = registry.get(model_name)
    except registry.UnknownModelError as err:
        _fail(str(err))
    try:
        amount, doses = parse_doses(dose or [])
        design = build_design(
            model,
            subjects=subjects,
            times=_floats(times, "--times") if times else None,
            dose=amount,
            doses=doses,
            dose_cmt=dose_cmt,
            obs_cmt=obs_cmt,
            held_out=held_out,
            covariates=_covariates(covariate or []),
        )
        result = _calibrate(
            workers,
            scheduler,
            worker_threads,
            model if full_prior else narrowed_priors(model),
            design,
            n_cohorts=replications,
            seed=seed,
            chains=chains,
            warmup=warmup,
            draws=draws,
            n_rank_draws=rank_draws,
            process_noise=process_noise,
            method=method,
            svi_steps=svi_steps,
            svi_learning_rate=svi_learning_rate,
            svi_start=",".join(starts),
            max_substep=max_substep,
        )
    except ValueError as err:
        _fail(str(err))
    summary = result.summary(n_bins=bins)
    level = alpha / max(len(summary["sites"]), 1)
    rejected = sorted(s for s, e in summary["sites"].items() if e["rank_test"]["p_value"] < level)
    summary.update({"alpha": alpha, "rank_test_level": level, "rejected": rejected, "full_prior": full_prior})
    text = json.dumps(summary, indent=2, default=float)
    if out is not None:
        atomic_write(out, lambda tmp: tmp.write_text(text + "\n"))
    if as_json:
        typer.echo(text)
    else:
        _print(summary)
    if rejected:
        raise typer.Exit(1)


def _calibrate(workers: int | None, scheduler: str | None, threads: int | None, model, design, **settings):
    """:func:`~medsim.inference.calibration.run_calibration`, its SVI fits on the cluster the options ask for."""
    from medsim.cli.cluster import cluster, worker_options
    from medsim.inference.calibration import run_calibration

    with cluster(workers, scheduler, threads, None) as client:
        if client is None:
            return run_calibration(model, design, **settings)
        from functools import partial

        from medsim.policies.dask_workers import map_on_cluster

        fits_on = partial(map_on_cluster, client, options=worker_options(workers, threads, None))
        return run_calibration(model, design, map_tasks=fits_on, **settings)


def _print(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    settings = summary["settings"]
    fitted = (
        f"{summary['divergences']} divergences"
        if settings.get("method", "nuts") == "nuts"
        else f"SVI, {settings['fits_diagnostics_ok']} of {summary['n_cohorts']} fits passed their checks"
        + (
            f"; {len(settings['fits_diverged'])} more diverged (no valid guide) and are left out of the ranks"
            if settings.get("fits_diverged")
            else ""
        )
    )
    console.print(
        f"simulation-based calibration: {summary['n_cohorts']} cohorts, ranks among {summary['n_rank_draws']} draws, "
        + fitted
    )
    table = Table("site", "rank test p", "50% coverage", "90% coverage", show_edge=False)
    for site, e in summary["sites"].items():
        cov = [e.get(f"coverage_{k}") for k in (50, 90)]
        shown = ["-" if c is None else f"{c['rate']:.2f} [{c['lower']:.2f}, {c['upper']:.2f}]" for c in cov]
        table.add_row(site, f"{e['rank_test']['p_value']:.3f}", *shown)
    console.print(table)
    held = summary["heldout_coverage_90"]
    if held["n"]:
        console.print(f"held-out 90% predictive coverage {held['rate']:.2f} [{held['lower']:.2f}, {held['upper']:.2f}]")
    else:
        console.print("held-out 90% predictive coverage: unknown (no cohort's predictions could be simulated)")
    if summary.get("heldout_cohorts_unsimulated"):
        console.print(
            f"[yellow]{summary['heldout_cohorts_unsimulated']} cohorts' held-out predictions could not be simulated[/] "
            "(a posterior draw the simulator cannot follow; left out of the coverage; reasons under "
            "settings.heldout_unsimulated in the JSON)"
        )
    if summary["rejected"]:
        console.print(f"[bold red]non-uniform ranks[/] (p < {summary['rank_test_level']:.2g}): {summary['rejected']}")
    else:
        console.print(f"[green]no rank histogram rejected[/] at family-wise level {summary['alpha']:g}")
