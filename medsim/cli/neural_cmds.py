"""Neural-model commands: ``medsim calibrate``, and the neural branches of ``fit`` and ``sample``.

* ``medsim calibrate CHECKPOINT COHORT`` measures the held-out coverage and width of a neural
  model's predictive intervals and stores them in the checkpoint (the calibration gate reads
  them before any virtual patient is produced).
* :func:`fit_neural_cli` is what ``medsim fit COHORT --model neural --out NAME`` runs.
* :func:`checkpoint_argument` and :func:`neural_population_cli` let ``medsim sample`` and
  ``medsim risk`` accept a neural checkpoint where they take a posterior file: the calibration
  gate first, then virtual patients whose provenance names the checkpoint (weights and
  configuration digests, training data hash, calibration, whether the gate was forced).

torch is imported inside the functions only, so ``medsim --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medsim.cli.app import app
from medsim.cli.app import fail as _fail
from medsim.cli.outputs import output_file

if TYPE_CHECKING:
    from medsim.inference.neural.checkpoint import Checkpoint


def load_cohort(source: str) -> Any:
    """A bundled dataset by name, or an event table (CSV / Parquet) by path."""
    path = Path(source)
    if path.exists():
        from medsim.data.eventtable import read_event_table

        try:
            return read_event_table(path)
        except (ValueError, OSError) as err:
            _fail(str(err))
    from medsim.data.datasets import UnknownDatasetError, load

    try:
        return load(source)
    except UnknownDatasetError as err:
        _fail(f"{source}: neither a file nor a bundled dataset ({err})")
    return None


def is_neural_checkpoint(path: Path | None) -> bool:
    """Whether ``path`` names a neural checkpoint (``NAME``, ``NAME.json`` or ``NAME.safetensors``)."""
    if path is None:
        return False
    from medsim.inference.neural.checkpoint import CheckpointFormatError, checkpoint_paths, read_record

    _, json_path = checkpoint_paths(path)
    if not json_path.exists():
        return False
    try:
        read_record(json_path)
    except CheckpointFormatError:
        return False
    return True


def model_source(posterior: Path | None, prior: str | None, cohort: str | None) -> Path | None:
    """Check the model arguments of ``medsim sample`` / ``medsim risk``; the checkpoint's JSON, if any.

    Exactly one of a POSTERIOR file (or neural checkpoint) and ``--prior`` must be given, and
    ``--cohort`` only applies to a checkpoint; otherwise the command stops with status 2.
    """
    if (posterior is None) == (prior is None):
        _fail("give either a POSTERIOR file or --prior MODEL (not both)")
    checkpoint = checkpoint_argument(posterior)
    if checkpoint is None and cohort is not None:
        _fail("--cohort applies to neural checkpoints only; a posterior file carries its fitted subjects")
    return checkpoint


def checkpoint_argument(path: Path | None) -> Path | None:
    """The JSON file of the neural checkpoint ``path`` names, or None if it names none.

    A path ending in ``.json`` or ``.safetensors`` claims to be a checkpoint: when it is not a
    readable one the command stops with the reason (exit status 2) instead of trying to read it
    as a posterior file.
    """
    claims = path is not None and path.suffix in (".json", ".safetensors")
    if path is None or not (claims or path.with_name(path.name + ".json").exists()):
        return None  # a posterior file: decided without importing torch (checkpoint names: NAME[.json])
    from medsim.inference.neural.checkpoint import CheckpointFormatError, checkpoint_paths, read_record

    weights, json_path = checkpoint_paths(path)
    if not json_path.exists():
        if claims and weights.exists():
            _fail(f"{json_path}: not found; the weights {weights.name} need the checkpoint's JSON record next to them")
        if claims:
            _fail(f"{path}: no such checkpoint file")
        return None
    try:
        read_record(json_path)
    except CheckpointFormatError as err:
        if claims:
            _fail(str(err))
        return None
    return json_path


def _set_threads(threads: int) -> None:
    import torch

    # The networks are small: one thread per process avoids synchronisation overhead on
    # shared machines (measured ~5x faster training on 2 busy cores).
    torch.set_num_threads(max(1, threads))


def fit_neural_cli(
    cohort: str,
    *,
    out: Path,
    template: str | None = None,
    seed: int = 0,
    epochs: int = 300,
    patience: int = 30,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    test_fraction: float = 0.2,
    steps_ahead: int = 5,
    samples: int = 200,
    floor: float = 0.8,
    threads: int = 1,
    device: str = "cpu",
) -> int:
    """Train, calibrate and save a neural model with a progress bar; return the exit status.

    ``medsim fit COHORT --model neural --out NAME`` should call this (``template`` from
    ``--template MODEL`` names observables and doses after a mechanistic model). The status is
    1 when the held-out 90% coverage is below ``floor`` (the checkpoint is written anyway, and
    the calibration gate will refuse to sample from it without ``--force``), else 0.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    import medsim.models as registry
    from medsim.inference.neural import TrainSettings, fit_neural

    _set_threads(threads)
    data = load_cohort(cohort)
    model = None
    if template is not None:
        try:
            model = registry.get(template)
        except registry.UnknownModelError as err:
            _fail(str(err))
    console = Console()
    settings = TrainSettings(
        epochs=epochs, patience=patience, batch_size=batch_size, learning_rate=learning_rate, device=device
    )
    columns = (
        TextColumn("training"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("fit", total=epochs, status="")

        def progress(report: Any) -> None:
            bar.update(
                task,
                completed=report.epoch,
                status=f"loss {report.train_loss:.3g}  held-out ELBO/obs {report.validation_elbo:.3g}",
            )

        try:
            fit = fit_neural(
                data,
                seed=seed,
                template=model,
                test_fraction=test_fraction,
                settings=settings,
                steps_ahead=steps_ahead,
                calibration_samples=samples,
                out=out,
                progress=progress,
            )
        except (ValueError, KeyError) as err:
            _fail(str(err))
    training = fit.training
    console.print(
        f"trained [bold]{fit.config.name}[/bold] ({fit.model.n_weights()} weights) on {len(training.train_ids)} "
        f"subjects, {training.n_train_windows} windows; best epoch {training.best_epoch} of {len(training.history)}, "
        f"held-out ELBO {training.best_validation_elbo:.3f} nats/observation, {training.seconds:.1f} s"
    )
    console.print(f"checkpoint: {fit.checkpoint}")
    if fit.calibration is None:
        console.print("[yellow]no test subjects: run `medsim calibrate` before sampling from this model[/]")
        return 0
    _print_calibration(console, fit.calibration.to_dict())
    return _verdict(console, fit.calibration.to_dict(), floor)


def _print_calibration(console: Any, record: dict) -> None:
    from rich.table import Table

    table = Table("steps ahead", "n", "cover 50%", "width 50%", "cover 90%", "width 90%", "RMSE", show_edge=False)
    for k in range(record["steps_ahead"]):
        table.add_row(
            str(k + 1),
            str(record["n_by_step"][k]),
            f"{record['coverage_by_step']['0.5'][k]:.2f}",
            f"{record['width_by_step']['0.5'][k]:.3g}",
            f"{record['coverage_by_step']['0.9'][k]:.2f}",
            f"{record['width_by_step']['0.9'][k]:.3g}",
            f"{record['rmse_by_step'][k]:.3g}",
        )
    table.add_row(
        "all",
        str(record["n_predictions"]),
        f"{record['coverage']['0.5']:.2f}",
        f"{record['width']['0.5']:.3g}",
        f"{record['coverage']['0.9']:.2f}",
        f"{record['width']['0.9']:.3g}",
        f"{record['rmse']:.3g}",
    )
    console.print(f"held-out calibration on {record['n_subjects']} subjects ({record['samples']} samples per window):")
    console.print(table)


def _verdict(console: Any, record: dict, floor: float) -> int:
    coverage = record["coverage"]["0.9"]
    if coverage < floor:
        console.print(
            f"[bold red]90% intervals cover {coverage:.2f} < floor {floor:.2f}: the model is miscalibrated; "
            "virtual patients and risk reports will be refused without --force[/]"
        )
        return 1
    console.print(f"[green]90% coverage {coverage:.2f} >= floor {floor:.2f}[/]")
    return 0


@app.command("calibrate")
def calibrate_command(
    checkpoint: Path = typer.Argument(..., help="Neural checkpoint (NAME, NAME.json or NAME.safetensors)."),
    cohort: str = typer.Argument(..., help="Held-out cohort: bundled dataset name or event table path."),
    subjects: str = typer.Option(
        "test", "--subjects", help="'test': the checkpoint's recorded test subjects; 'all': every subject given."
    ),
    steps: int = typer.Option(5, "--steps", min=1, help="Predict 1..STEPS measurements ahead."),
    samples: int = typer.Option(200, "--samples", min=2, help="Simulated patients per forecast window."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    floor: float = typer.Option(0.8, "--floor", help="Smallest acceptable 90% coverage (exit status 1 below)."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads."),
) -> None:
    """Measure a neural model's predictive coverage on held-out subjects and store it in the checkpoint."""
    from rich.console import Console

    from medsim.inference.neural import CheckpointFormatError, calibrate, load_checkpoint, update_calibration

    _set_threads(threads)
    try:
        loaded = load_checkpoint(checkpoint)
    except CheckpointFormatError as err:
        _fail(str(err))
    output_file(loaded.path, "CHECKPOINT")  # the calibration is stored in it
    data = load_cohort(cohort)
    if subjects == "test":
        wanted = [i for i in loaded.provenance.get("test_ids", []) if i in data.ids]
        if not wanted:
            _fail(
                "the checkpoint records no test subjects present in this cohort; pass --subjects all with a "
                "cohort of subjects the model was not trained on"
            )
        chosen = [data.subject(i) for i in wanted]
    elif subjects == "all":
        trained = set(loaded.provenance.get("train_ids", [])) | set(loaded.provenance.get("validation_ids", []))
        overlap = sorted(trained & set(data.ids))
        if overlap:
            _fail(f"subjects {overlap[:10]} were used in training; calibration needs held-out subjects")
        chosen = list(data.subjects)
    else:
        _fail(f"--subjects must be 'test' or 'all', got {subjects!r}")
    try:
        report = calibrate(loaded.model, chosen, steps_ahead=steps, samples=samples, seed=seed)
    except (ValueError, KeyError) as err:
        _fail(str(err))
    update_calibration(loaded.path, report.to_dict())
    console = Console()
    _print_calibration(console, report.to_dict())
    console.print(f"stored in {loaded.path}")
    raise typer.Exit(_verdict(console, report.to_dict(), floor))


def _cohort_quietly(name: str) -> Any:
    """The cohort ``name`` (file or bundled dataset), or None when there is no such thing."""
    from medsim.data.datasets import UnknownDatasetError

    if not Path(name).exists():
        from medsim.data.datasets import info

        try:
            info(name)
        except UnknownDatasetError:
            return None
    return load_cohort(name)


def cohort_for(loaded: Checkpoint, cohort: str | None) -> tuple[Any, str]:
    """The cohort to twin or resample covariates from, and a label saying which it is.

    ``cohort`` when given; otherwise the training cohort the checkpoint records (a bundled
    dataset, or a file still present), provided its data hash still matches the one recorded at
    training. ``(None, why)`` when neither is available.
    """
    if cohort is not None:
        return load_cohort(cohort), cohort
    source = str(loaded.provenance.get("cohort_source") or "")
    if not source:
        return None, "the checkpoint records no training cohort"
    data = _cohort_quietly(source.removeprefix("medsim:"))
    if data is None:
        return None, f"the training cohort {source} recorded in the checkpoint was not found"
    recorded = str(loaded.provenance.get("data_hash") or "")
    if recorded and data.data_hash() != recorded:
        return None, (
            f"the training cohort {source} has changed since training (data hash {data.data_hash()[:12]}, "
            f"checkpoint records {recorded[:12]})"
        )
    return data, f"the training cohort {source}"


def checkpoint_provenance(loaded: Checkpoint) -> dict[str, Any]:
    """What a population or report records about the checkpoint its patients come from."""
    prov = loaded.provenance
    keys = ("cohort", "data_hash", "best_epoch", "epochs_run", "best_validation_elbo_per_observation", "n_weights")
    return {
        "checkpoint": str(loaded.path),
        "checkpoint_weights_sha256": loaded.weights_sha256,
        **{f"training_{k}" if k == "cohort" else k: prov[k] for k in keys if prov.get(k) is not None},
    }


def neural_population_cli(
    checkpoint: Path,
    n: int,
    *,
    seed: int,
    mode: str = "population",
    subject: str | None = None,
    cohort: str | None = None,
    patients_per_draw: int | None = None,
    floor: float = 0.8,
    force: bool = False,
) -> Any:
    """A gated :class:`VirtualPopulation` from a neural checkpoint, for ``medsim sample`` / ``medsim risk``.

    The calibration gate comes first: a model whose held-out 90% coverage is below ``floor`` (or
    was never measured) stops the command with status 2 and the measured 50% / 90% coverage,
    unless ``force``. ``cohort`` (default: the training cohort recorded in the checkpoint, see
    :func:`cohort_for`) supplies the twin's record (personalized) or the covariate vectors to
    resample (population; without a cohort, every new patient gets the training means).
    The population's provenance names the checkpoint (:func:`checkpoint_provenance`), the gate's
    outcome (:func:`medsim.models.neural.gate.gate_summary`) and where the covariates came from.
    """
    from dataclasses import replace

    from medsim.inference.neural import CheckpointFormatError, MiscalibratedModelError, load_checkpoint
    from medsim.models.neural import require_calibrated, sample_neural_population

    try:
        loaded = load_checkpoint(checkpoint)
    except CheckpointFormatError as err:
        _fail(str(err))
    try:
        require_calibrated(loaded.model, floor=floor, force=force)
    except MiscalibratedModelError as err:
        _fail(f"{loaded.path}: {err}; --coverage-floor sets the floor")
    except ValueError as err:
        _fail(f"--coverage-floor: {err}")
    data, label = cohort_for(loaded, cohort)
    if mode == "personalized":
        if subject is None:
            _fail("--mode personalized needs --subject ID (the subject to twin)")
        if data is None:
            _fail(f"--mode personalized needs the subject's record: pass --cohort COHORT ({label})")
        if str(subject) not in data.ids:
            some = ", ".join(repr(i) for i in list(data.ids)[:10])
            _fail(f"--subject {subject!r} is not in {label}; its subject IDs include {some}")
    try:
        population = sample_neural_population(
            loaded.model,
            n,
            seed=seed,
            mode=mode,
            subject=subject,
            subjects=None if data is None else list(data.subjects),
            patients_per_draw=patients_per_draw,
            floor=floor,
            force=force,
        )
    except KeyError as err:  # str() of a KeyError quotes its message
        _fail(str(err.args[0]) if err.args else repr(err))
    except (MiscalibratedModelError, ValueError) as err:
        _fail(str(err))
    source = label if data is not None else f"training means ({label})"
    extra = {**checkpoint_provenance(loaded), "cohort_used": source}
    if data is not None:  # observed ranges, for the risk report's out-of-support flag
        from medsim.inference.cohort_support import cohort_support, support_ranges

        ranges = support_ranges(cohort_support(data, population.model))
        extra["data_support"] = {k: [lo, hi] for k, (lo, hi) in ranges.items()}
    return replace(population, provenance={**population.provenance, **extra})
