"""Training, calibration and checkpoints of the neural patient model (torch + torchsde).

Owns the evidence lower bound (:mod:`medsim.inference.neural.elbo`), the training loop with early
stopping (:func:`train`), the held-out calibration of predictive intervals (:func:`calibrate`),
checkpoint files (safetensors weights + JSON configuration, :func:`save_checkpoint`,
:func:`load_checkpoint`) and the one-call :func:`fit_neural`. The model itself lives in
:mod:`medsim.models.neural`; the calibration gate is re-exported from there. May import
``medsim``; imports torch, so ``inference`` does not import this package eagerly.
"""

from medsim.inference.neural.calibration import CalibrationReport, calibrate, interval_metrics, predictive_samples
from medsim.inference.neural.checkpoint import (
    Checkpoint,
    CheckpointFormatError,
    load_checkpoint,
    read_record,
    save_checkpoint,
    update_calibration,
)
from medsim.inference.neural.elbo import GridBrownian, WindowTerms, window_terms
from medsim.inference.neural.fit import NeuralFit, fit_neural, package_versions
from medsim.inference.neural.train import EpochReport, TrainResult, TrainSettings, evaluate_bound, train
from medsim.models.neural.gate import MiscalibratedModelError, require_calibrated

__all__ = [
    "CalibrationReport",
    "Checkpoint",
    "CheckpointFormatError",
    "EpochReport",
    "GridBrownian",
    "MiscalibratedModelError",
    "NeuralFit",
    "TrainResult",
    "TrainSettings",
    "WindowTerms",
    "calibrate",
    "evaluate_bound",
    "fit_neural",
    "interval_metrics",
    "load_checkpoint",
    "package_versions",
    "predictive_samples",
    "read_record",
    "require_calibrated",
    "save_checkpoint",
    "train",
    "update_calibration",
    "window_terms",
]
