"""The calibration gate applied to neural models: no virtual patients from one that is not calibrated.

A neural model can fit its training data and still be overconfident on new patients; its
predictive intervals are then too narrow and every risk figure computed from it too small. The
held-out calibration of :func:`medsim.inference.neural.calibrate` stores the empirical coverage of
the model's 50% and 90% posterior predictive intervals in the model's configuration;
:func:`require_calibrated` refuses to go on when the 90% coverage is below a floor (or was never
measured), unless the caller forces it — and a forced use is recorded in provenance by the
callers (:func:`medsim.models.neural.population.sample_neural_population`, through
:func:`gate_summary`).

The rule is the one gate of every model (:func:`medsim.models.gate.judge`) with the 90%
coverage judged against the floor; figures a calibration record carries beyond coverage (width
relative to the held-out spread, CRPS skill) are judged as for mechanistic models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medsim.models.gate import CalibrationGate, MiscalibratedModelError, judge

__all__ = ["DEFAULT_FLOOR", "MiscalibratedModelError", "gate_of", "gate_summary", "require_calibrated"]

DEFAULT_FLOOR = 0.8
"""Default floor of the pooled 90% coverage. With ``n`` held-out predictions the coverage of a
calibrated model has standard error ``sqrt(0.9 * 0.1 / n)`` (0.03 at ``n = 100``), so 0.8 flags
models more than three standard errors short at that size, not unlucky calibrated ones."""


def calibration_of(model: Any) -> Mapping[str, Any]:
    """The calibration record of a neural model, its exported physiology model, or a config."""
    if isinstance(model, Mapping):
        return model.get("calibration", model)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "calibration"):
        return config.calibration
    if hasattr(model, "calibration"):
        return model.calibration
    neural = getattr(model, "neural_config", None)
    if isinstance(neural, Mapping):
        return neural.get("calibration", {})
    raise TypeError(f"not a neural model or configuration: {type(model).__name__}")


def gate_of(model: Any, *, floor: float = DEFAULT_FLOOR) -> CalibrationGate:
    """The :class:`~medsim.models.gate.CalibrationGate` of a neural model's stored calibration.

    The record's pooled figures (``coverage``, ``width`` per level, and any of the gate's other
    figures it carries) are judged with the 90% coverage against ``floor``.
    """
    record = dict(calibration_of(model))
    if not record.get("coverage"):
        return CalibrationGate.unchecked("the neural model has no held-out calibration")
    figures: dict[str, float | None] = {}
    for name in ("coverage", "width"):
        for level, value in (record.get(name) or {}).items():
            figures[f"{name}_{float(level):g}"] = None if value is None else float(value)
    for key, value in (record.get("sharpness") or {}).items():
        figures[key] = None if value is None else float(value)
    figures["rmse"] = record.get("rmse")
    return judge(
        figures,
        n_points=int(record.get("n_predictions") or 0),
        n_subjects=int(record.get("n_subjects") or 0),
        coverage_floor=floor,
        heldout=f"held-out subjects {record.get('subjects', [])}",
        method="neural forecasts 1..N measurements ahead from each origin (inference.neural.calibrate)",
    )


def require_calibrated(model: Any, *, floor: float = DEFAULT_FLOOR, force: bool = False) -> Mapping[str, Any]:
    """Check a neural model's held-out 90% coverage against ``floor``.

    Parameters
    ----------
    model : NeuralPatientModel, NeuralPhysiology, NeuralConfig or calibration mapping
    floor : float
        Smallest acceptable pooled coverage of the 90% predictive intervals, in (0, 1).
    force : bool
        Return the record instead of raising (the caller takes responsibility).

    Returns
    -------
    mapping
        The calibration record (possibly empty when forced).

    Raises
    ------
    MiscalibratedModelError
        If the model was never calibrated, or its 90% coverage is below ``floor``; the message
        gives the pooled 90% and 50% coverage, the 90% coverage and width per step ahead and the
        number of held-out predictions.
    ValueError
        If ``floor`` is not in (0, 1).
    """
    if not 0.0 < floor < 1.0:
        raise ValueError(f"calibration floor must be in (0, 1), got {floor}")
    record = dict(calibration_of(model))
    coverage = record.get("coverage", {}).get("0.9") if record else None
    if coverage is None:
        if force:
            return record
        raise MiscalibratedModelError(
            "neural model has no held-out calibration; run `medsim calibrate CHECKPOINT COHORT` on held-out "
            "subjects first (or pass force=True / --force to use it anyway)",
            coverage=None,
            floor=floor,
            calibration=record,
        )
    gate = gate_of(record, floor=floor)
    if coverage < floor and not force:
        by_step = record.get("coverage_by_step", {}).get("0.9", [])
        width = record.get("width_by_step", {}).get("0.9", [])
        steps = ", ".join(
            f"{k + 1}: {c:.2f} (width {w:.3g})" for k, (c, w) in enumerate(zip(by_step, width, strict=False))
        )
        half = record.get("coverage", {}).get("0.5")
        half_text = "n/a" if half is None else f"{half:.3f}"
        raise MiscalibratedModelError(
            f"neural model is miscalibrated: 90% predictive intervals covered {coverage:.3f} of "
            f"{record.get('n_predictions', '?')} held-out measurements ({record.get('n_subjects', '?')} subjects), "
            f"below the floor {floor:.2f} (50% intervals covered {half_text}); by steps ahead: {steps or 'n/a'}. "
            "Refusing to produce virtual patients or risk figures from it (pass force=True / --force to override)",
            gate=gate,
            coverage=float(coverage),
            floor=floor,
            calibration=record,
        )
    if gate.failed and not force:
        raise MiscalibratedModelError(
            f"neural model failed its calibration gate: {gate.summary()}. Refusing to produce virtual patients "
            "or risk figures from it (pass force=True / --force to override)",
            gate=gate,
            coverage=float(coverage),
            floor=floor,
            calibration=record,
        )
    return record


def gate_summary(model: Any, *, floor: float = DEFAULT_FLOOR, force: bool = False) -> dict[str, Any]:
    """The calibration gate's inputs and outcome as flat JSON-friendly provenance entries.

    Parameters
    ----------
    model : NeuralPatientModel, NeuralPhysiology, NeuralConfig or calibration mapping
    floor : float
        Floor of the pooled 90% coverage the gate applied.
    force : bool
        Whether the caller overrode the gate.

    Returns
    -------
    dict
        ``calibration_coverage_90`` and ``calibration_coverage_50`` (pooled empirical coverage of
        the held-out 90% / 50% predictive intervals, None if never calibrated),
        ``calibration_n_predictions``, ``calibration_n_subjects`` (None if unknown),
        ``calibration_floor``, ``calibration_passed`` (coverage measured and at least the floor)
        and ``forced``.
    """
    record = dict(calibration_of(model))
    coverage = record.get("coverage") or {}
    c90, c50 = coverage.get("0.9"), coverage.get("0.5")
    return {
        "calibration_coverage_90": None if c90 is None else float(c90),
        "calibration_coverage_50": None if c50 is None else float(c50),
        "calibration_n_predictions": record.get("n_predictions"),
        "calibration_n_subjects": record.get("n_subjects"),
        "calibration_floor": float(floor),
        "calibration_passed": gate_of(record, floor=floor).passed,
        "forced": bool(force),
    }
