"""One call from a cohort to a trained, calibrated, saved neural patient model.

``fit_neural(cohort, ...)`` splits the subjects into a training part and a held-out test part
(by subject, :meth:`Cohort.split`), derives the configuration from the training part, trains
(with early stopping on validation subjects carved from the training part), measures the
coverage and width of the predictive intervals on the test subjects, stores those numbers in
the configuration and, when asked, writes the checkpoint. The test subjects never influence the
weights or the stopping epoch.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchsde

from medsim.inference.neural.calibration import CalibrationReport, calibrate
from medsim.inference.neural.checkpoint import save_checkpoint
from medsim.inference.neural.train import EpochReport, TrainResult, TrainSettings, train
from medsim.models.neural.config import NeuralConfig, config_from_cohort
from medsim.models.neural.model import NeuralPatientModel


@dataclass(frozen=True)
class NeuralFit:
    """Outcome of :func:`fit_neural`."""

    model: NeuralPatientModel
    training: TrainResult
    calibration: CalibrationReport | None
    test_ids: tuple[str, ...]
    provenance: Mapping[str, Any]
    checkpoint: Path | None

    @property
    def config(self) -> NeuralConfig:
        return self.model.config


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a neural model's numbers."""
    from medsim import __version__

    return {
        "medsim": __version__,
        "torch": torch.__version__,
        "torchsde": getattr(torchsde, "__version__", "unknown"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def fit_neural(
    cohort: Any,
    *,
    seed: int = 0,
    template: Any = None,
    test_fraction: float = 0.2,
    settings: TrainSettings | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    steps_ahead: int = 5,
    calibration_samples: int = 200,
    name: str = "neural",
    out: str | Path | None = None,
    progress: Callable[[EpochReport], None] | None = None,
) -> NeuralFit:
    """Train and calibrate a neural patient model on ``cohort``.

    Parameters
    ----------
    cohort : medsim.data.Cohort
    seed : int
        Seeds the test split, the validation split, the weights and every Monte Carlo draw.
    template : PhysiologyModel, optional
        Mechanistic model that names observables and doses (see :func:`config_from_cohort`).
    test_fraction : float
        Share of subjects held out for calibration; 0 skips calibration (the model then fails
        the calibration gate until ``medsim calibrate`` is run on other held-out data).
    settings : TrainSettings, optional
    config_overrides : mapping, optional
        :class:`NeuralConfig` fields to override (sizes, ``dt``, ``horizon``...).
    steps_ahead, calibration_samples : int
        See :func:`medsim.inference.neural.calibrate`.
    name : str
        Model name.
    out : path, optional
        Write the checkpoint there (``NAME.safetensors`` + ``NAME.json``).
    progress : callable, optional
        Receives every :class:`EpochReport`.

    Raises
    ------
    ValueError
        If the split leaves no training or test subject, or there is nothing to train on.
    """
    started = time.perf_counter()
    if test_fraction > 0:
        train_part, test_part = cohort.split(1.0 - test_fraction, seed)
    else:
        train_part, test_part = cohort, None
    config = config_from_cohort(train_part, name=name, template=template, **dict(config_overrides or {}))
    training = train(train_part.subjects, config, seed=seed, settings=settings, progress=progress)
    model = training.model
    report = None
    if test_part is not None:
        report = calibrate(model, test_part.subjects, steps_ahead=steps_ahead, samples=calibration_samples, seed=seed)
        model.config = model.config.with_calibration(report.to_dict())
    provenance = {
        "cohort": getattr(cohort, "name", ""),
        "cohort_source": getattr(cohort, "source", ""),
        "data_hash": cohort.data_hash(),
        "seed": int(seed),
        "template": getattr(template, "name", None),
        "train_ids": list(training.train_ids),
        "validation_ids": list(training.validation_ids),
        "test_ids": [] if test_part is None else list(test_part.ids),
        "best_epoch": training.best_epoch,
        "best_validation_elbo_per_observation": training.best_validation_elbo,
        "epochs_run": len(training.history),
        "train_loss": [round(r.train_loss, 6) for r in training.history],
        "validation_elbo": [round(r.validation_elbo, 6) for r in training.history],
        "training_seconds": training.seconds,
        "settings": {k: getattr(training.settings, k) for k in training.settings.__dataclass_fields__},
        "n_train_windows": training.n_train_windows,
        "n_weights": model.n_weights(),
        "versions": package_versions(),
        "wall_seconds": time.perf_counter() - started,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = save_checkpoint(model, out, provenance=provenance) if out is not None else None
    return NeuralFit(
        model=model,
        training=training,
        calibration=report,
        test_ids=() if test_part is None else tuple(test_part.ids),
        provenance=provenance,
        checkpoint=path,
    )
