"""The neural patient model: a neural-CDE encoder, a latent neural SDE driven by treatments, a decoder.

Owns the torch model (:class:`NeuralPatientModel`), its configuration, the forecasting windows
cut from a cohort, the export of a trained model as a JAX
:class:`~medsim.models.base.PhysiologyModel` (:func:`export_model`: every simulation of a neural
patient, rollouts and the calibration gate alike, runs through it in
:class:`medsim.simulate.Simulator`), virtual-patient sampling
(:func:`sample_neural_population`) and the calibration gate (:func:`require_calibrated`).

This is the only place in ``medsim`` that imports torch; ``import medsim`` and
``import medsim.models`` never load it. May import ``medsim.models``, ``medsim.data``,
``medsim.simulate`` and ``medsim.population``; never ``inference`` or ``policies`` (training,
calibration and checkpoints live in :mod:`medsim.inference.neural`).
"""

from medsim.models.neural.config import (
    CovariateSpec,
    DoseSpec,
    NeuralConfig,
    NeuralConfigError,
    ObservableSpec,
    config_from_cohort,
)
from medsim.models.neural.export import NeuralPhysiology, export_model, weights_digest
from medsim.models.neural.gate import DEFAULT_FLOOR, MiscalibratedModelError, gate_summary, require_calibrated
from medsim.models.neural.model import NeuralPatientModel
from medsim.models.neural.population import config_digest, sample_neural_population
from medsim.models.neural.windows import WindowBatch, WindowSet, make_windows

__all__ = [
    "DEFAULT_FLOOR",
    "CovariateSpec",
    "DoseSpec",
    "MiscalibratedModelError",
    "NeuralConfig",
    "NeuralConfigError",
    "NeuralPatientModel",
    "NeuralPhysiology",
    "ObservableSpec",
    "WindowBatch",
    "WindowSet",
    "config_digest",
    "config_from_cohort",
    "export_model",
    "gate_summary",
    "make_windows",
    "require_calibrated",
    "sample_neural_population",
    "weights_digest",
]
