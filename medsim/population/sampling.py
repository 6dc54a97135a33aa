"""Sampling virtual patients from posterior draws: digital twins and new population patients.

* ``mode="personalized"``: every patient is one fitted subject under one posterior draw ``d``:
  population values of draw ``d``, the subject's random effects ``eta[d, s]`` and its covariates.
  The spread across patients is pure parameter uncertainty about that subject (plus, later, the
  process and measurement noise of the rollout).
  When the draws carry the fitted subjects' filtered states (``PosteriorDraws.state``: the
  extended Kalman filter's mean and covariance after the subject's last recorded event, under
  each draw), a twin starts *there*: its state at rollout time 0 is drawn from
  ``Normal(mean[d, s], cov[d, s])``, one draw per patient (what the measurements leave open
  about the current state given the parameters is, like process noise, part of the within-draw
  spread), and rollout time 0 stands for the subject's time ``state_time[s]`` (recorded in the
  provenance). The states are stored as ``initial_<state>`` parameters, the convention of the
  neural twins, which :meth:`VirtualPopulation.initial_state` honours. ``start="initial"``
  keeps the model's own initial state (the basal steady state at time 0).
* ``mode="population"``: new subjects. Draw ``d`` gives population values and between-subject
  SDs ``omega_d``; each patient gets a new ``eta ~ Normal(0, omega_d)`` (the log-normal BSV of
  :class:`~medsim.models.base.Parameter`) and covariates either given by the user or resampled
  from the fitted cohort by drawing whole subjects (a bootstrap of covariate vectors keeps
  correlations such as weight with Apgar score). Covariates that are therapy settings rather
  than traits (the glucose model's pump basal rate) are then re-titrated to the new patient's
  own parameters by :meth:`~medsim.models.base.PhysiologyModel.titrated_covariates`, aiming at
  what the donor subject's setting achieved; user-given covariates are kept as given.

Draw slots are chosen without replacement from the ``D`` available draws (cycling through fresh
permutations when more slots than draws are asked for); see :mod:`medsim.population.virtual` for
the patients-per-draw layout and its trade-off.

Random numbers: every choice is a counter-based draw of the ``SAMPLING`` stream
(:mod:`medsim.population.streams`) indexed by the patient (or, for the permutations, the draw):
the random effects through :func:`~medsim.population.individuals.draw_individuals`, the covariate
donor, the twin's start. With ``patients_per_draw`` fixed, patient ``i`` is the same for any
``n`` (the first ``n`` patients of a larger population are the smaller population).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np

from medsim.population.draws import PosteriorDraws
from medsim.population.individuals import DONOR, DRAW_SLOTS, STATE, draw_individuals, individual_values
from medsim.population.streams import Stream, patient_normal, patient_uniform
from medsim.population.virtual import INITIAL_PREFIX, VirtualPopulation


def default_patients_per_draw(n: int, n_draws: int) -> int:
    """At least two patients per draw (so within-draw variance is estimable), more if draws run short."""
    return max(1, min(n, max(2, math.ceil(n / max(n_draws, 1)))))


def _draw_slots(seed: int, n_draws: int, n_slots: int) -> np.ndarray:
    # Permutation c sorts the draws by one uniform each (counter DRAW_SLOTS + c): a uniformly
    # random permutation that does not depend on how many slots are asked for.
    draws = np.arange(n_draws)
    perms = [
        np.argsort(patient_uniform(seed, Stream.SAMPLING, draws, DRAW_SLOTS + c)[:, 0], kind="stable")
        for c in range(math.ceil(n_slots / n_draws))
    ]
    return np.concatenate(perms)[:n_slots]


def _user_covariates(
    covariates: Mapping[str, float | np.ndarray], n: int, valid: tuple[str, ...]
) -> dict[str, np.ndarray]:
    out = {}
    for name, value in covariates.items():
        if name not in valid:
            raise ValueError(f"unknown covariate {name!r}; valid covariates: {', '.join(valid) or '(none)'}")
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(n, float(arr))
        if arr.shape != (n,):
            raise ValueError(f"covariate {name!r} has shape {arr.shape}; expected a scalar or ({n},)")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"covariate {name!r} has non-finite values")
        out[name] = arr
    return out


def sample_population(
    draws: PosteriorDraws,
    n: int,
    *,
    mode: str = "population",
    subject: str | None = None,
    covariates: Mapping[str, float | np.ndarray] | None = None,
    seed: int,
    patients_per_draw: int | None = None,
    start: str | None = None,
) -> VirtualPopulation:
    """Sample ``n`` virtual patients from posterior (or prior) draws.

    Parameters
    ----------
    draws : PosteriorDraws
        ``D`` draws of population parameters, BSV SDs, fitted subjects' random effects and
        covariates (``Posterior.draws()`` or ``PosteriorDraws.from_prior``).
    n : int
        Number of virtual patients.
    mode : {"population", "personalized"}
    subject : str, optional
        The fitted subject to twin (required for, and only for, ``mode="personalized"``).
    covariates : mapping name -> scalar or (n,), optional
        Covariates for population patients (others are bootstrapped from the cohort, or take the
        model's reference value when the draws carry no cohort).
    seed : int
        Same seed, same population.
    patients_per_draw : int, optional
        Patients sharing one draw (default: :func:`default_patients_per_draw`).
    start : {"filtered", "initial"}, optional
        Where twins start (``mode="personalized"`` only): the subject's filtered state after its
        last recorded event, or the model's initial state at time 0. Default: ``"filtered"``
        when the draws carry filtered states, else ``"initial"``.

    Returns
    -------
    VirtualPopulation

    Raises
    ------
    ValueError
        Naming the bad argument (unknown mode, subject or covariate, wrong shapes).
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    if mode not in ("population", "personalized"):
        raise ValueError(f"mode must be 'population' or 'personalized', got {mode!r}")
    model = draws.model
    d_total = draws.n_draws
    m = default_patients_per_draw(n, d_total) if patients_per_draw is None else int(patients_per_draw)
    if m < 1:
        raise ValueError(f"patients_per_draw must be >= 1, got {patients_per_draw!r}")
    if start not in (None, "filtered", "initial"):
        raise ValueError(f"start must be 'filtered' or 'initial', got {start!r}")
    if start is not None and mode != "personalized":
        raise ValueError("start is only used with mode='personalized' (new patients start at the initial state)")
    if start == "filtered" and not draws.state:
        raise ValueError("start='filtered' needs draws with the fitted subjects' filtered states (refit to store them)")
    n_slots = math.ceil(n / m)
    draw = np.repeat(_draw_slots(int(seed), d_total, n_slots), m)[:n].astype(np.int64)
    patient = np.arange(n)
    population = {k: np.asarray(v, np.float64)[draw] for k, v in draws.population.items()}

    cohort_cov = {k: np.asarray(v, np.float64) for k, v in draws.covariates.items()}
    valid_cov = tuple(dict.fromkeys([c.name for c in model.covariates] + list(cohort_cov)))
    who = None  # the donor subject of each new patient's covariates (population mode)
    if mode == "personalized":
        if subject is None:
            raise ValueError("mode='personalized' needs subject=<fitted subject id>")
        if covariates:
            raise ValueError("personalized patients keep their fitted covariates; do not pass covariates")
        if not draws.subject_ids or not draws.eta:
            raise ValueError("these draws carry no fitted subjects (prior draws?); use mode='population'")
        ids = [str(s) for s in draws.subject_ids]
        if str(subject) not in ids:
            shown = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")
            raise ValueError(f"unknown subject {subject!r}; fitted subjects: {shown}")
        s = ids.index(str(subject))
        fitted_eta = {k: np.asarray(v, np.float64)[draw, s] for k, v in draws.eta.items()}
        omega = {}
        cov = {k: np.full(n, v[s]) for k, v in cohort_cov.items()}
        subjects = np.full(n, str(subject), dtype=object)
    else:
        if subject is not None:
            raise ValueError("subject is only used with mode='personalized'")
        fitted_eta = {}
        names = {p.name for p in model.structural}
        omega = {k: np.asarray(v, np.float64)[draw] for k, v in draws.omega.items() if k in names}
        cov = _user_covariates(covariates or {}, n, valid_cov)
        rest = [k for k in cohort_cov if k not in cov]
        if rest and draws.n_subjects > 0:
            u = patient_uniform(int(seed), Stream.SAMPLING, patient, DONOR)[:, 0]
            who = np.minimum((u * draws.n_subjects).astype(np.int64), draws.n_subjects - 1)
            cov.update({k: cohort_cov[k][who] for k in rest})
        subjects = np.full(n, "", dtype=object)
    for c in model.covariates:
        cov.setdefault(c.name, np.full(n, float(c.reference)))

    drawn = draw_individuals(
        model, population, omega, cov, seed=int(seed), stream=Stream.SAMPLING, patient=patient, fitted_eta=fitted_eta
    )
    eta, theta = drawn.eta, drawn.params
    titrated: list[str] = []
    if mode == "population" and who is not None and draws.eta:
        # Therapy-setting covariates (a pump's basal rate) are re-titrated to the new patient's
        # physiology, aiming at what the donor subject's setting achieved under the same draw.
        donor_eta = {k: np.asarray(v, np.float64)[draw, who] for k, v in draws.eta.items()}
        donor = individual_values(model, population, donor_eta, {k: v[who] for k, v in cohort_cov.items()}, n)
        new = {k: np.asarray(v, np.float64) for k, v in model.titrated_covariates(theta, donor).items()}
        new = {k: v for k, v in new.items() if k not in (covariates or {})}
        if new:
            cov.update(new)
            titrated = sorted(new)
            theta = individual_values(model, population, eta, cov, n)
    params = theta
    origin = None
    if mode == "personalized" and draws.state and start != "initial":
        params = {**theta, **filtered_start(draws, draw, s, seed=int(seed))}
        origin = float(np.asarray(draws.state_time)[s])
    # the posterior's residual draws where it has them, the model's values otherwise
    residual = {**model.residual_values(n), **{k: np.asarray(v, np.float64)[draw] for k, v in draws.residual.items()}}

    from medsim import __version__

    provenance = {
        "posterior": dict(draws.provenance),
        "model": model.name,
        "model_version": model.version,
        "n": n,
        "mode": mode,
        "subject": "" if subject is None else str(subject),
        "seed": int(seed),
        "patients_per_draw": m,
        "n_posterior_draws": d_total,
        "covariates_given": sorted(covariates or {}),
        "covariates_titrated": titrated,
        "start": "initial state at time 0" if origin is None else "filtered state after the subject's last event",
        "start_time": 0.0 if origin is None else origin,
        "medsim_version": __version__,
    }
    return VirtualPopulation(
        model=model,
        draw=draw,
        subject=subjects,
        params=params,
        covariates=cov,
        eta=eta,
        residual=residual,
        mode=mode,
        seed=int(seed),
        patients_per_draw=m,
        provenance=provenance,
    )


def filtered_start(
    draws: PosteriorDraws,
    draw: np.ndarray,
    subject: int | np.ndarray,
    *,
    seed: int | jax.Array,
    patient: np.ndarray | None = None,
) -> dict:
    """``initial_<state>`` (n,) per state: one draw per patient from ``Normal(mean[d, s], cov[d, s])``.

    ``subject`` is one fitted subject's index for every patient, or one per patient.
    Patient ``i``'s standard normals are the ``SAMPLING`` stream's draws at counter ``STATE`` for
    patient index ``patient[i]`` (default ``i``).

    The covariance's square root comes from its eigen-decomposition with negative round-off
    eigenvalues set to 0 (states no process noise reaches have exactly zero variance, so a
    Cholesky factor does not exist).
    """
    names = draws.model.state_names
    mean = np.stack([np.asarray(draws.state[k], np.float64)[draw, subject] for k in names], axis=-1)
    cov = np.asarray(draws.state_cov, np.float64)[draw, subject]
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
    values, vectors = np.linalg.eigh(cov)
    patient = np.arange(mean.shape[0]) if patient is None else np.asarray(patient, np.int64)
    z = patient_normal(seed, Stream.SAMPLING, patient, STATE, width=mean.shape[1])
    root = vectors * np.sqrt(np.clip(values, 0.0, None))[..., None, :]
    x0 = mean + np.einsum("nij,nj->ni", root, z)
    return {f"{INITIAL_PREFIX}{k}": x0[:, j] for j, k in enumerate(names)}
