"""Held-out calibration of the neural model: coverage and width of predictive intervals.

For every held-out subject and forecast origin (each observation in turn, and the empty
history), the model predicts the next ``N`` measurements (1..N steps ahead) by simulation:
``M`` patients per window, each with its own draw of the drift weights ``delta ~ q``, of the
latent state and embedding from the encoder's conditional prior given the history, a Brownian
path of the prior SDE through the window's doses (the model exported to JAX,
:func:`~medsim.models.neural.export.export_model`, stepped by :class:`~medsim.simulate.Simulator`:
the same code that runs rollouts), and measurement noise from the residual-error model. The central 50% and 90%
intervals of the ``M`` simulated measurements are compared with what was measured:

* coverage — the share of measurements inside their interval (0.5 / 0.9 when calibrated);
* width — the mean interval width (observable unit; narrower is better *at* nominal coverage);
* RMSE of the predictive mean (observable unit).

This is the coverage/width metric of Bayesian neural CDEs (Hess et al. 2024, §5), per step
ahead and pooled. The pooled predictions are also scored as the calibration gate scores every
model (:func:`medsim.inference.checks.calibration_gate.interval_figures`: width relative to the
held-out measurements' 5–95 % range, CRPS and its skill over their own distribution), so the
gate (:mod:`medsim.models.gate`) judges the neural model's sharpness too.
Its Monte Carlo error: with ``M`` samples the interval end points are
empirical quantiles, so coverage is biased by ``O(1/M)``; ``M = 200`` keeps that below 0.01.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import numpy as np
import torch

from medsim.inference.checks.calibration_gate import interval_figures
from medsim.models.neural.dose_filter import filter_values
from medsim.models.neural.export import export_model
from medsim.models.neural.model import NeuralPatientModel
from medsim.models.neural.windows import make_windows
from medsim.simulate.simulator import Simulator
from medsim.simulate.types import DoseEvents

LEVELS = (0.5, 0.9)
SHARPNESS = (
    "spread_5_95",
    "relative_width_0.9",
    "interval_score_0.9",
    "interval_score_0.9_climatology",
    "crps",
    "crps_climatology",
    "crps_skill",
)


@dataclass(frozen=True)
class CalibrationReport:
    """Coverage, width and error of held-out predictions (see the module docstring).

    Attributes
    ----------
    coverage, width : dict level -> float
        Pooled over all predictions (keys ``"0.5"``, ``"0.9"``).
    coverage_by_step, width_by_step : dict level -> list of float
        Entry ``k`` is ``k + 1`` steps ahead.
    rmse_by_step : list of float
        RMSE of the predictive mean, per step ahead (observable unit; pooled over observables).
    sharpness : dict str -> float
        The calibration gate's figures of the pooled predictions: ``spread_5_95``,
        ``relative_width_0.9``, ``interval_score_0.9`` (and ``_climatology``), ``crps``,
        ``crps_climatology``, ``crps_skill`` (module docstring; empty in records written before).
    n_by_step : list of int
        Predictions per step ahead.
    n_predictions, n_subjects, n_windows, steps_ahead, samples, seed : int
    dt : float
        Simulator sub-step.
    subjects : list of str
        Held-out subject IDs.
    """

    coverage: dict[str, float]
    width: dict[str, float]
    coverage_by_step: dict[str, list[float]]
    width_by_step: dict[str, list[float]]
    rmse_by_step: list[float]
    rmse: float
    n_by_step: list[int]
    n_predictions: int
    n_subjects: int
    n_windows: int
    steps_ahead: int
    samples: int
    seed: int
    dt: float
    subjects: list[str]
    sharpness: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predictive_samples(
    model: NeuralPatientModel,
    subjects: Sequence,
    *,
    steps_ahead: int,
    samples: int,
    seed: int,
    dt: float | None = None,
    max_cuts_per_subject: int | None = None,
) -> dict[str, np.ndarray]:
    """Simulated measurements for the next ``steps_ahead`` observations of every window.

    Returns
    -------
    dict
        ``"simulated"`` (W, steps_ahead, M), ``"measured"`` (W, steps_ahead), ``"mask"``
        (W, steps_ahead) bool, ``"subject"`` (W,) int, and ``"windows"`` (the WindowSet).
    """
    cfg = model.config
    windows = make_windows(subjects, cfg, max_cuts_per_subject=max_cuts_per_subject)
    n_win, m = len(windows), samples
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    rng = np.random.default_rng([int(seed), 11])
    device = next(model.parameters()).device
    batch = windows.batch(np.arange(n_win), history_only=True, device=device)
    with torch.no_grad():
        hidden = model.encode(batch, history_only=True)
        mean, sd = model.initial_prior(hidden[torch.arange(n_win), batch.cut_index])
        eps = torch.randn(n_win, m, mean.shape[1], generator=generator).to(device)
        zeta = mean[:, None] + sd[:, None] * eps
        z0, embedding = model.split_state(zeta.reshape(n_win * m, -1))
        delta = model.dynamics.sample_delta(n_win * m, generator=generator)
        filters = filter_values(
            torch.zeros(n_win, 1, device=device),
            batch.dose_time,
            batch.dose_index,
            batch.dose_amount,
            batch.dose_rate,
            batch.dose_mask,
            model.filter_time_constants,
            inclusive=False,
        )[:, 0].cpu()
    z0, embedding, delta = z0.cpu(), embedding.cpu(), delta.cpu()
    state = {n: z0[:, i].numpy() for i, n in enumerate(model.latent_names)}
    state.update({n: np.repeat(filters[:, i].numpy(), m) for i, n in enumerate(model.filter_names)})
    params = {n: embedding[:, i].numpy() for i, n in enumerate(model.embedding_names)}
    params.update({n: delta[:, i].numpy() for i, n in enumerate(model.delta_names)})
    params.update({f"initial_{n}": v for n, v in state.items()})  # the exported model's start-state parameters
    # Planned doses of each window from its origin on (earlier ones are in the filter state).
    future = windows.dose_mask & (windows.dose_time >= 0)
    cmts = np.array([d.cmt for d in cfg.doses], dtype=np.int64)
    events = DoseEvents.from_arrays(
        np.repeat(np.where(future, windows.dose_time, np.inf), m, axis=0),
        np.repeat(cmts[windows.dose_index] if cmts.size else np.ones_like(windows.dose_index), m, axis=0),
        np.repeat(np.where(future, windows.dose_amount, 0.0), m, axis=0),
        np.repeat(np.where(future, windows.dose_rate, 0.0), m, axis=0),
    )
    # Euler–Maruyama, the scheme the model was trained with (its ELBO steps the prior SDE so).
    sim = Simulator(export_model(model), dt=cfg.dt if dt is None else dt, scheme="euler")
    simulated = np.zeros((n_win, steps_ahead, m))
    measured = np.zeros((n_win, steps_ahead))
    mask = np.zeros((n_win, steps_ahead), dtype=bool)
    t_prev = np.zeros(n_win * m)
    add = model.decoder.residual_add.detach().cpu().numpy().astype(np.float64)
    prop = model.decoder.residual_prop.detach().cpu().numpy().astype(np.float64)
    key = jax.random.key(int(seed))
    for k in range(steps_ahead):
        has = windows.target_mask[:, k] if k < windows.target_mask.shape[1] else np.zeros(n_win, bool)
        t_next = np.where(has, windows.target_time[:, min(k, windows.target_time.shape[1] - 1)], -np.inf)
        t_next = np.maximum(np.repeat(t_next, m), t_prev)  # windows without a k-th target stand still
        res = sim.advance(state, params, t_prev, t_next, key=jax.random.fold_in(key, k), events=events)
        state, t_prev = res.state, t_next
        obs_index = np.repeat(windows.target_obs[:, min(k, windows.target_obs.shape[1] - 1)], m)
        true = np.stack([res.stats.obs_end[o.name] for o in cfg.observables], axis=1)[np.arange(n_win * m), obs_index]
        true = true.astype(np.float64)
        noise_sd = np.sqrt(add[obs_index] ** 2 + (prop[obs_index] * true) ** 2)
        draw = true + noise_sd * rng.standard_normal(true.shape)
        simulated[:, k] = draw.reshape(n_win, m)
        measured[:, k] = windows.target_value[:, min(k, windows.target_value.shape[1] - 1)]
        mask[:, k] = has
    return {"simulated": simulated, "measured": measured, "mask": mask, "subject": windows.subject, "windows": windows}


def interval_metrics(simulated: np.ndarray, measured: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Coverage and width of central predictive intervals, and RMSE of the predictive mean.

    Parameters
    ----------
    simulated : (W, N, M) array
        ``M`` predictive draws for step ``1..N`` ahead of each of ``W`` forecast windows.
    measured : (W, N) array
    mask : (W, N) bool
        Which predictions exist.

    Returns
    -------
    dict
        ``coverage``, ``width`` (pooled, per level), ``coverage_by_step``, ``width_by_step``,
        ``rmse_by_step``, ``rmse``, ``n_by_step``, ``n_predictions``, ``sharpness`` (the
        :class:`CalibrationReport` fields of the same names).

    Raises
    ------
    ValueError
        If ``mask`` selects nothing.
    """
    if not mask.any():
        raise ValueError("calibrate: the held-out subjects have no observation after any forecast origin")
    steps = mask.shape[1]

    def per_step(values: np.ndarray) -> list[float]:
        return [float(values[:, k][mask[:, k]].mean()) if mask[:, k].any() else float("nan") for k in range(steps)]

    coverage, width, cov_step, width_step = {}, {}, {}, {}
    for level in LEVELS:
        lo = np.quantile(simulated, (1 - level) / 2, axis=-1)
        hi = np.quantile(simulated, (1 + level) / 2, axis=-1)
        inside = ((measured >= lo) & (measured <= hi)).astype(np.float64)
        key = f"{level:g}"
        coverage[key] = float(inside[mask].mean())
        width[key] = float((hi - lo)[mask].mean())
        cov_step[key] = per_step(inside)
        width_step[key] = per_step(hi - lo)
    squared = (simulated.mean(axis=-1) - measured) ** 2
    window = np.broadcast_to(np.arange(mask.shape[0])[:, None], mask.shape)[mask]
    pooled = interval_figures(np.moveaxis(simulated[mask], -1, 0), measured[mask], window)
    return {
        "coverage": coverage,
        "width": width,
        "coverage_by_step": cov_step,
        "width_by_step": width_step,
        "rmse_by_step": [float(np.sqrt(v)) for v in per_step(squared)],
        "rmse": float(np.sqrt(squared[mask].mean())),
        "n_by_step": [int(v) for v in mask.sum(axis=0)],
        "n_predictions": int(mask.sum()),
        "sharpness": {k: pooled[k] for k in SHARPNESS},
    }


def calibrate(
    model: NeuralPatientModel,
    subjects: Sequence,
    *,
    steps_ahead: int = 5,
    samples: int = 200,
    seed: int = 0,
    dt: float | None = None,
    max_cuts_per_subject: int | None = None,
) -> CalibrationReport:
    """Coverage and width of the model's predictive intervals on held-out ``subjects``.

    Parameters
    ----------
    model : NeuralPatientModel
    subjects : sequence of Subject
        Subjects the model was not trained (or early-stopped) on.
    steps_ahead : int
        ``N``: predict the next 1..N measurements from each origin.
    samples : int
        ``M`` simulated patients per window.
    seed : int
    dt : float, optional
        Simulator sub-step (default: the training ``dt``).
    max_cuts_per_subject : int, optional
        Forecast origins per subject (see :func:`make_windows`).

    Raises
    ------
    ValueError
        If there is nothing to predict (no held-out observation after an origin) or the
        arguments are out of range.
    """
    if steps_ahead < 1 or samples < 2:
        raise ValueError(f"calibrate: need steps_ahead >= 1 and samples >= 2, got {steps_ahead}, {samples}")
    if not subjects:
        raise ValueError("calibrate: no held-out subjects given")
    out = predictive_samples(
        model,
        subjects,
        steps_ahead=steps_ahead,
        samples=samples,
        seed=seed,
        dt=dt,
        max_cuts_per_subject=max_cuts_per_subject,
    )
    metrics = interval_metrics(out["simulated"], out["measured"], out["mask"])
    return CalibrationReport(
        **metrics,
        n_subjects=len(subjects),
        n_windows=int(out["mask"].shape[0]),
        steps_ahead=int(steps_ahead),
        samples=int(samples),
        seed=int(seed),
        dt=float(model.config.dt if dt is None else dt),
        subjects=[s.id for s in subjects],
    )
