"""Virtual patients from a trained neural model: digital twins and new population patients.

The result is an ordinary :class:`~medsim.population.VirtualPopulation` of the exported model
(:func:`medsim.models.neural.export.export_model`), so the rollout, the risk estimators and the
population files treat it like a mechanistic one. Layout as there: patients
``[j * m, (j + 1) * m)`` share draw slot ``j``.

* ``mode="personalized"``: the twin of one subject. The encoder reads the subject's whole record
  (forecast origin = its last observation; rollout time 0 is that moment, the model being
  time-homogeneous). Each draw slot ``j`` takes one draw of the drift weights ``delta ~ q`` and
  one draw of ``(z, e)`` from the encoder's conditional prior given the record, both shared by
  the slot's patients: what the record leaves open about the subject is epistemic, and the
  patients of a slot differ only by process and measurement noise. The dose filters start at
  their value just before the origin (the subject's earlier doses keep acting).
* ``mode="population"``: new patients. Each slot draws ``delta``; each patient draws ``(z, e)``
  from the conditional prior given an *empty* record and its covariates (the training windows
  with no history fit exactly this distribution), the analogue of a new ``eta ~ N(0, omega)``.
  Covariates are given, or resampled (whole subjects) from ``subjects``, or the training means.

Every sample passes the calibration gate first (:func:`medsim.models.neural.gate.require_calibrated`).
The population's provenance identifies the model (name, weights version, :func:`config_digest`)
and records the gate's outcome (:func:`medsim.models.neural.gate.gate_summary`), a forced use
included, so a population file or risk report made from it says what it came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from medsim.models.base import residual_key
from medsim.models.neural.config import NeuralConfig
from medsim.models.neural.dose_filter import filter_values
from medsim.models.neural.export import export_model
from medsim.models.neural.gate import DEFAULT_FLOOR, gate_summary, require_calibrated
from medsim.models.neural.model import NeuralPatientModel
from medsim.models.neural.windows import WindowBatch, make_windows
from medsim.population.individuals import DONOR, NEURAL_DELTA, NEURAL_LATENT, normal_effects
from medsim.population.sampling import default_patients_per_draw
from medsim.population.streams import Stream, patient_uniform
from medsim.population.virtual import VirtualPopulation


def mean_device(model: NeuralPatientModel) -> torch.device:
    """The device of the model's weights."""
    return next(model.parameters()).device


def config_digest(config: NeuralConfig) -> str:
    """SHA-256 (hex) of a configuration's architecture, units and normalisation.

    The held-out calibration is left out: re-calibrating a model (``medsim calibrate``) changes
    what the gate decides, not the model, so it must not change the model's identity.
    """
    described = {k: v for k, v in config.to_dict().items() if k != "calibration"}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _empty_history(model: NeuralPatientModel, standardised: np.ndarray) -> WindowBatch:
    n, cfg = standardised.shape[0], model.config
    dev = next(model.parameters()).device
    zeros = torch.zeros(n, 1, device=dev)
    return WindowBatch(
        knot_time=zeros,
        knot_value=torch.zeros(n, 1, cfg.n_channels, device=dev),
        cut_index=torch.zeros(n, dtype=torch.long, device=dev),
        last_index=torch.zeros(n, dtype=torch.long, device=dev),
        target_time=zeros,
        target_value=zeros,
        target_obs=torch.zeros(n, 1, dtype=torch.long, device=dev),
        target_mask=torch.zeros(n, 1, dtype=torch.bool, device=dev),
        dose_time=zeros,
        dose_index=torch.zeros(n, 1, dtype=torch.long, device=dev),
        dose_amount=zeros,
        dose_rate=zeros,
        dose_mask=torch.zeros(n, 1, dtype=torch.bool, device=dev),
        covariates=torch.as_tensor(standardised, dtype=torch.float32, device=dev),
    )


def _covariates(
    model: NeuralPatientModel,
    n: int,
    given: Mapping[str, float | np.ndarray] | None,
    subjects: Sequence | None,
    seed: int,
) -> dict[str, np.ndarray]:
    specs = model.config.covariates
    valid = [c.name for c in specs]
    out: dict[str, np.ndarray] = {}
    if subjects:
        u = patient_uniform(seed, Stream.SAMPLING, np.arange(n), DONOR)[:, 0]
        pick = np.minimum((u * len(subjects)).astype(np.int64), len(subjects) - 1)
        for c in specs:
            out[c.name] = np.array([subjects[i].covariates[c.name] for i in pick], dtype=np.float64)
    else:
        out = {c.name: np.full(n, c.mean) for c in specs}
    for name, value in (given or {}).items():
        if name not in valid:
            raise ValueError(f"unknown covariate {name!r}; the neural model is conditioned on {valid or '(none)'}")
        arr = np.broadcast_to(np.asarray(value, np.float64), (n,)).copy()
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"covariate {name!r} has non-finite values")
        out[name] = arr
    return out


def sample_neural_population(
    model: NeuralPatientModel,
    n: int,
    *,
    seed: int,
    mode: str = "population",
    subject: str | None = None,
    subjects: Sequence | None = None,
    covariates: Mapping[str, float | np.ndarray] | None = None,
    n_draws: int | None = None,
    patients_per_draw: int | None = None,
    floor: float = DEFAULT_FLOOR,
    force: bool = False,
) -> VirtualPopulation:
    """Sample ``n`` virtual patients from a trained neural model (see the module docstring).

    Parameters
    ----------
    model : NeuralPatientModel
        Trained and calibrated.
    n : int
        Number of patients.
    seed : int
        Seeds every draw: counter-based draws of the ``SAMPLING`` stream through
        :func:`medsim.population.individuals.normal_effects` (patient ``i``'s latent start and
        embedding, draw ``d``'s drift weights and each donor choice do not depend on ``n``).
    mode : {"population", "personalized"}
    subject : str, optional
        ID of the subject to twin (personalized mode; must be in ``subjects``).
    subjects : sequence of Subject, optional
        The cohort's subjects: the twin's record, or covariate vectors to resample.
    covariates : mapping name -> scalar or (n,), optional
        Covariates of new patients (population mode), overriding resampled ones.
    n_draws : int, optional
        Posterior draws of the drift weights (default: ``n // 2``, at least 1).
    patients_per_draw : int, optional
        Default :func:`medsim.population.default_patients_per_draw`.
    floor, force
        Calibration gate (:func:`require_calibrated`).

    Raises
    ------
    MiscalibratedModelError
        If the model fails the calibration gate and ``force`` is False.
    ValueError, KeyError
        On an unknown mode, a missing or unknown subject, or bad covariates.
    """
    record = require_calibrated(model, floor=floor, force=force)
    if mode not in ("population", "personalized"):
        raise ValueError(f"mode must be 'population' or 'personalized', got {mode!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    draws = max(1, n // 2) if n_draws is None else int(n_draws)
    per_draw = patients_per_draw or default_patients_per_draw(n, draws)
    slots = -(-n // per_draw)
    draw = np.repeat(np.arange(slots), per_draw)[:n] % max(draws, 1)
    slot = np.repeat(np.arange(slots), per_draw)[:n]
    cfg = model.config
    names = model.latent_names + model.embedding_names  # the columns of zeta = (z, e)
    stream = {"seed": int(seed), "stream": Stream.SAMPLING}
    with torch.no_grad():
        delta_draws = normal_effects(
            model.dynamics.delta_mean.detach().cpu().numpy(),
            torch.exp(model.dynamics.delta_log_sd).detach().cpu().numpy(),
            model.delta_names,
            patient=np.arange(draws),
            counter=NEURAL_DELTA,
            **stream,
        )
        if mode == "personalized":
            if subject is None or not subjects:
                raise ValueError("personalized mode needs the subject's ID and the cohort's subjects")
            matches = [s for s in subjects if s.id == str(subject)]
            if not matches:
                some = ", ".join(repr(s.id) for s in list(subjects)[:10])
                raise KeyError(f"no subject {subject!r} to twin; the cohort's IDs include {some}")
            target = matches[0]
            windows = make_windows([target], cfg, history_at_end=True)
            batch = windows.batch([0], history_only=True, device=mean_device(model))
            hidden = model.encode(batch, history_only=True)
            mean, sd = model.initial_prior(hidden[0:1, int(batch.cut_index[0])])
            zeta = normal_effects(
                mean.cpu().numpy(), sd.cpu().numpy(), names, patient=np.arange(slots), counter=NEURAL_LATENT, **stream
            )[slot]
            start = (
                filter_values(
                    torch.zeros(1, 1, device=batch.dose_time.device),
                    batch.dose_time,
                    batch.dose_index,
                    batch.dose_amount,
                    batch.dose_rate,
                    batch.dose_mask,
                    model.filter_time_constants,
                    inclusive=False,
                )[0, 0]
                .cpu()
                .numpy()
            )
            filters = np.repeat(start[None], n, axis=0)
            covs = {c.name: np.full(n, float(target.covariates[c.name])) for c in cfg.covariates}
            subject_ids = np.full(n, target.id, dtype=object)
        else:
            covs = _covariates(model, n, covariates, subjects, int(seed))
            standardised = np.zeros((n, len(cfg.covariates)))
            for j, c in enumerate(cfg.covariates):
                standardised[:, j] = (covs[c.name] - c.mean) / c.sd
            batch = _empty_history(model, standardised)
            hidden = model.encode(batch)
            mean, sd = model.initial_prior(hidden[:, 0])
            zeta = normal_effects(
                mean.cpu().numpy(), sd.cpu().numpy(), names, patient=np.arange(n), counter=NEURAL_LATENT, **stream
            )
            filters = np.zeros((n, cfg.n_filters))
            subject_ids = np.full(n, "", dtype=object)
    latent, embedding = zeta[:, : cfg.latent_dim], zeta[:, cfg.latent_dim :]
    params = {name: embedding[:, i] for i, name in enumerate(model.embedding_names)}
    params.update({name: delta_draws[draw, i] for i, name in enumerate(model.delta_names)})
    params.update({f"initial_{name}": latent[:, i] for i, name in enumerate(model.latent_names)})
    params.update({f"initial_{name}": filters[:, i] for i, name in enumerate(model.filter_names)})
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    add, prop = model.decoder.residual_add.detach().cpu().numpy(), model.decoder.residual_prop.detach().cpu().numpy()
    residual = {}
    for j, o in enumerate(cfg.observables):
        residual[residual_key(o.name, "add")] = np.full(n, float(add[j]))
        residual[residual_key(o.name, "prop")] = np.full(n, float(prop[j]))
    exported = export_model(model)
    provenance = {
        "source": "neural",
        "model": cfg.name,
        "model_version": exported.version,
        "config_sha256": config_digest(cfg),
        "mode": mode,
        "subject": "" if subject is None else str(subject),
        "n_draws": draws,
        **gate_summary(record, floor=floor, force=force),
    }
    return VirtualPopulation(
        model=exported,
        draw=draw.astype(np.int64),
        subject=subject_ids.astype(str),
        params=params,
        covariates=covs,
        residual=residual,
        mode=mode,
        seed=int(seed),
        patients_per_draw=int(per_draw),
        provenance=provenance,
    )
