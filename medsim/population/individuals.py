"""Drawing virtual individuals: the one place random effects become individual parameters.

Every sampler of virtual patients — the typical-value population
(:func:`~medsim.population.prior.prior_population`), new patients and digital twins from posterior
or prior draws (:func:`~medsim.population.sampling.sample_population`), the particles of the
``safe_timing`` policy — hands this module the same three things per patient: the population
values of its draw, the between-subject SDs ``omega`` of that draw and its covariates, plus a
random stream. :func:`draw_individuals` draws ``eta ~ Normal(0, omega)`` (or takes a fitted
subject's ``eta``) and applies the model's
:meth:`~medsim.models.base.PhysiologyModel.individual_parameters`.

Random numbers come from the counter-based streams of :mod:`medsim.population.streams`: patient
``i``'s random effect on parameter ``p`` is a pure function of ``(seed, stream, i, counter, p)``.
It does not depend on how many patients are drawn, on chunking, or on which other parameters
the model has. The counters below keep the different uses within one stream apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.population.streams import Stream, patient_named_normal
from medsim.transfer import to_device

# Counters of the SAMPLING stream (the "patient" index is the one named in each comment).
EFFECTS = 0  # random effects eta (patient)
DONOR = 1  # the fitted subject a new patient's covariates are resampled from (patient)
STATE = 2  # a twin's start within its filtered-state distribution (patient)
PRIOR_DRAW = 3  # population values drawn from the prior (draw index)
NEURAL_DELTA = 4  # a neural model's drift-weight draws (draw index)
NEURAL_LATENT = 5  # a neural patient's latent start and embedding (patient, or draw slot for twins)
DRAW_SLOTS = 1 << 20  # + cycle c: the c-th permutation of the posterior draws (draw index)


@dataclass(frozen=True)
class Individuals:
    """Individuals drawn by :func:`draw_individuals`.

    Attributes
    ----------
    eta : dict name -> (n,) float64
        Random effect of every structural parameter that has one (a BSV or a fitted ``eta``).
    params : dict name -> (n,) float64
        Individual value of every model parameter.
    """

    eta: dict[str, np.ndarray]
    params: dict[str, np.ndarray]


def individual_values(
    model: PhysiologyModel, population: Mapping, eta: Mapping, covariates: Mapping, n: int
) -> dict[str, np.ndarray]:
    """The model's individual parameters, shape (n,) float64, from given random effects."""
    theta = model.individual_parameters(
        {k: to_device(v) for k, v in population.items()},
        {k: to_device(v) for k, v in eta.items()},
        {k: to_device(v) for k, v in covariates.items()},
    )
    return {k: np.broadcast_to(np.asarray(v, np.float64), (n,)).copy() for k, v in theta.items()}


def normal_effects(
    mean: np.ndarray,
    sd: np.ndarray,
    names: Sequence[str],
    *,
    seed: int | jax.Array,
    stream: Stream | int,
    patient: np.ndarray,
    counter: int,
) -> np.ndarray:
    """Gaussian random effects ``mean + sd * z``, shape ``(n, len(names))``, one row per patient.

    ``z[i, j]`` is the counter-based standard normal of patient ``patient[i]`` named ``names[j]``
    (:func:`~medsim.population.streams.patient_named_normal`). ``mean`` and ``sd`` broadcast to
    ``(n, len(names))``. Used for a mechanistic model's ``eta ~ Normal(0, omega)`` and a neural
    model's latent start, embedding and drift-weight draws alike.
    """
    z = patient_named_normal(seed, stream, patient, counter, names)
    return np.asarray(mean, np.float64) + np.asarray(sd, np.float64) * z


def draw_individuals(
    model: PhysiologyModel,
    population: Mapping[str, np.ndarray],
    omega: Mapping[str, np.ndarray],
    covariates: Mapping[str, np.ndarray],
    *,
    seed: int | jax.Array,
    stream: Stream | int,
    patient: np.ndarray,
    counter: int = EFFECTS,
    fitted_eta: Mapping[str, np.ndarray] | None = None,
    fitted: np.ndarray | None = None,
) -> Individuals:
    """Draw ``n`` individuals from their draws' population values, BSV SDs and covariates.

    Parameters
    ----------
    model : PhysiologyModel
    population : mapping parameter -> (n,)
        Each patient's population values (every model parameter: the draw the patient belongs to).
    omega : mapping structural parameter -> (n,)
        Each patient's between-subject SD (absent: the parameter has no BSV).
    covariates : mapping covariate -> (n,)
        Missing covariates take the model's reference value.
    seed : int or jax key
    stream : Stream or int
    patient : (n,) int
        Global indices of the patients (the counter-based stream's patient index).
    counter : int
        Which use within the stream (default :data:`EFFECTS`).
    fitted_eta : mapping structural parameter -> (n,), optional
        Fitted random effects, used instead of a new draw where ``fitted`` is True.
    fitted : (n,) bool, optional
        Which patients take ``fitted_eta`` (default: all when ``fitted_eta`` is given).

    Returns
    -------
    Individuals
    """
    patient = np.asarray(patient, np.int64)
    n = patient.size
    fitted_eta = dict(fitted_eta or {})
    mask = np.ones(n, bool) if fitted is None else np.asarray(fitted, bool)
    names = [p.name for p in model.structural if p.name in omega]
    sd = np.stack([np.broadcast_to(np.asarray(omega[k], np.float64), (n,)) for k in names], axis=1) if names else 0.0
    drawn = normal_effects(0.0, sd, names, seed=seed, stream=stream, patient=patient, counter=counter)
    eta: dict[str, np.ndarray] = {}
    for p in model.structural:
        new = drawn[:, names.index(p.name)] if p.name in omega else None
        if p.name in fitted_eta:
            old = np.asarray(fitted_eta[p.name], np.float64)
            new = old if new is None and fitted is None else np.where(mask, old, 0.0 if new is None else new)
        if new is not None:
            eta[p.name] = np.broadcast_to(new, (n,)).copy()
    return Individuals(eta=eta, params=individual_values(model, population, eta, covariates, n))
