"""Posterior predictive simulation of a cohort through the medsim simulator.

For ``R`` posterior draws and every subject of a cohort, the subject's parameters are rebuilt
from the draw (``model.individual_parameters(population, eta, covariates)``), the latent SDE is
simulated on the subject's own dosing history with :func:`medsim.simulate.simulate_schedule`
(process noise included, with the draw's noise scales; the ODE solution when they are 0), and
residual error with the draw's residual parameters is added. Two kinds of subjects:

* ``mode="individual"``: the fitted subjects themselves (their posterior random effects ``eta``):
  the individual predictions of individual-fit plots (Bayesian IPRED).
* ``mode="population"``: new subjects with the fitted subjects' covariates and doses and random
  effects drawn afresh, ``eta ~ Normal(0, omega)`` with the draw's ``omega``: the simulated
  replicates of a visual predictive check (the study re-run on new patients).

Individuals are drawn by :func:`medsim.population.individuals.draw_individuals`, the sampler
every virtual population uses (replicate ``r`` of subject ``s`` is patient ``r * S + s`` of
its counter-based stream). With ``start="filtered"`` (individual mode) each replicate starts
from the subject's filtered state after its last fitted event (a draw from the filter's
Gaussian, :func:`medsim.population.sampling.filtered_start`) at that time: the forecast a digital
twin makes from "now", which keeps what the measurements said about where the patient is.

The simulator steps with a fixed ``dt`` (Euler–Maruyama / Milstein, first order in ``dt`` for
the drift: a process of rate ``lambda`` is off by about ``lambda dt / 2`` relative), so ``dt``
defaults to ``0.02 / lambda_max`` for the model's fastest typical rate (:func:`default_dt`): about
1 % on the fastest process, less on the slower ones that dominate the shipped PK models'
concentrations, well below their residual error. A model may declare its own step
(``predictive_dt``) where that rule overstates its rates, as ``t1d_ou`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from medsim.inference.likelihood.timeline import default_max_substep
from medsim.models.base import PhysiologyModel, residual_key
from medsim.population.draws import PosteriorDraws
from medsim.population.individuals import draw_individuals
from medsim.population.streams import Stream
from medsim.simulate import DoseEvents, simulate_schedule

#: ``rate_dt`` of :func:`default_dt`: the step is this fraction of the fastest typical process's time constant.
DEFAULT_RATE_DT = 0.02


Mode = Literal["individual", "population"]


class PredictiveError(ValueError):
    """A cohort or posterior that cannot be simulated as asked (names the subject or field)."""


@dataclass(frozen=True)
class PredictiveSample:
    """Simulated replicates of a cohort's measurements (``R`` draws, ``S`` subjects, ``T`` points).

    Attributes
    ----------
    subject_ids : tuple of str, length S
    time : (S, T) float
        Time of each point (model time unit); rows are non-decreasing, padding repeats the last time.
    mask : (S, T) bool
        Real points (False for padding).
    observable : (S, T) int
        Index into :attr:`observables` of the quantity at each point.
    observables : tuple of str
        The model's observable names.
    observed : (S, T) float or None
        The cohort's measurements at the points (None for time grids that are not the cohort's).
    prediction : (R, S, T) float
        Simulated latent observable (process noise included, no measurement error).
    replicate : (R, S, T) float
        ``prediction`` plus simulated residual (measurement) error: a replicate data set.
    draw_index : (R,) int
        Which flattened posterior draws were used.
    mode : {"individual", "population"}
    seed_key : (2,) uint32
        Raw words of the PRNG key used (provenance).
    residual_sd : (R, S, T) float or None
        SD of the simulated residual error at each point (0 where the observable has none).
    """

    subject_ids: tuple[str, ...]
    time: np.ndarray
    mask: np.ndarray
    observable: np.ndarray
    observables: tuple[str, ...]
    observed: np.ndarray | None
    prediction: np.ndarray
    replicate: np.ndarray
    draw_index: np.ndarray
    mode: str
    seed_key: np.ndarray
    residual_sd: np.ndarray | None = None


def draws_of(posterior: Any) -> PosteriorDraws:
    """``posterior.draws()`` for a medsim ``Posterior``; a ``PosteriorDraws`` is returned as is."""
    if isinstance(posterior, PosteriorDraws):
        return posterior
    if hasattr(posterior, "draws"):
        return posterior.draws()
    raise TypeError(f"expected a medsim Posterior or PosteriorDraws, got {type(posterior).__name__}")


def draws_from_samples(data: Any, samples: Mapping[str, np.ndarray]) -> PosteriorDraws:
    """:class:`~medsim.population.PosteriorDraws` of raw sampler draws (no posterior file needed).

    Parameters
    ----------
    data : inference.problem.FitData
        The prepared cohort the draws belong to.
    samples : mapping site -> (D, ...) array
        Flattened draws of the population sites and of ``eta_<p>`` (S,) per draw.
    """
    from medsim.inference.hierarchical import split_sites

    values = {k: np.asarray(v) for k, v in samples.items()}
    population, eta, _, residual = split_sites(data.priors, values)
    n = len(values[data.priors.sites[0].site])
    return PosteriorDraws(
        model=data.model,
        population={k: np.broadcast_to(np.asarray(v, float), (n,)) for k, v in population.items()},
        omega={p: values[f"omega_{p}"] for p in data.priors.random_effects},
        eta={k: np.asarray(v) for k, v in eta.items()},
        residual={k: np.asarray(v) for k, v in residual.items()},
        subject_ids=data.subject_ids,
        covariates={k: np.asarray(v) for k, v in data.covariates.items()},
        provenance={"source": "sampler draws"},
    )


def padded_of(cohort: Any) -> Any:
    """The ``PaddedCohort`` of a ``Cohort`` (a padded cohort is returned as is)."""
    return cohort.padded() if hasattr(cohort, "padded") else cohort


def select_draws(n_available: int, n_draws: int | None) -> np.ndarray:
    """``n_draws`` evenly spaced indices into ``n_available`` flattened draws (all if None or more).

    Evenly spaced (thinned) rather than random draws keep the selection deterministic and spread
    over every chain.
    """
    if n_draws is None or n_draws >= n_available:
        return np.arange(n_available)
    if n_draws < 1:
        raise PredictiveError(f"n_draws must be >= 1, got {n_draws}")
    return np.unique(np.round(np.linspace(0, n_available - 1, n_draws)).astype(int))


def default_dt(model: PhysiologyModel, *, rate_dt: float = DEFAULT_RATE_DT) -> float:
    """Simulator step ``rate_dt / lambda_max`` (model time unit) for the fastest typical rate.

    ``lambda_max`` is the largest eigenvalue modulus of the drift Jacobian at the typical
    parameters (as :func:`medsim.inference.likelihood.default_max_substep` computes it). A model
    that declares its step (``model.predictive_dt``, with its error stated in the model file) gets
    that step, scaled by ``rate_dt / 0.02`` when a caller asks for a finer one than the default.
    """
    if model.predictive_dt is not None:
        return float(model.predictive_dt) * rate_dt / DEFAULT_RATE_DT
    return default_max_substep(model, safety=rate_dt)


def observable_index(model: PhysiologyModel, obs_cmt: np.ndarray) -> np.ndarray:
    """Index into ``model.observable_names`` of the observable each CMT measures.

    Raises
    ------
    PredictiveError
        A CMT the model does not observe.
    """
    names = model.observable_names
    out = np.zeros(np.shape(obs_cmt), np.int32)
    for cmt in np.unique(obs_cmt):
        if int(cmt) not in model.obs_targets:
            raise PredictiveError(
                f"observation CMT {int(cmt)} is not observed by model {model.name!r} "
                f"(observed CMTs: {sorted(model.obs_targets)})"
            )
        out[obs_cmt == cmt] = names.index(model.obs_targets[int(cmt)])
    return out


def _covariates(model: PhysiologyModel, padded: Any) -> dict[str, np.ndarray]:
    available = dict(padded.covariates)
    out = {}
    for c in model.covariates:
        if c.name not in available:
            raise PredictiveError(
                f"model {model.name!r} needs covariate {c.name!r} [{c.unit}], which the cohort lacks "
                f"(it has {sorted(available)})"
            )
        out[c.name] = np.asarray(available[c.name], np.float32)
    return out


def _dose_events(model: PhysiologyModel, padded: Any, repeats: int) -> DoseEvents:
    mask = np.asarray(padded.dose_mask, bool)
    time = np.where(mask, np.asarray(padded.dose_time, float), np.inf)
    # Padding entries get a CMT the model can dose (they sit at +inf and are never applied).
    cmt = np.where(mask, np.asarray(padded.dose_cmt), min(model.dose_targets))
    amount = np.where(mask, np.asarray(padded.dose_amount, float), 0.0)
    rate = np.where(mask, np.asarray(padded.dose_rate, float), 0.0)
    tile = (repeats, 1)
    return DoseEvents.from_arrays(np.tile(time, tile), np.tile(cmt, tile), np.tile(amount, tile), np.tile(rate, tile))


def posterior_predictive(
    posterior: Any,
    cohort: Any,
    *,
    key: jax.Array,
    n_draws: int | None = 200,
    mode: Mode = "individual",
    times: np.ndarray | None = None,
    observable: str | None = None,
    dt: float | None = None,
    start: Literal["initial", "filtered"] = "initial",
) -> PredictiveSample:
    """Simulate replicates of ``cohort``'s measurements from posterior draws.

    Parameters
    ----------
    posterior : Posterior or PosteriorDraws
        A fit of the model (its ``draws()``); ``D`` flattened draws.
    cohort : Cohort or PaddedCohort
        Supplies doses, covariates and (by default) the measurement times. In ``individual`` mode
        its subjects must be the fitted ones, in the same order.
    key : jax PRNG key
        Split into independent keys for new random effects, process noise and residual error.
    n_draws : int or None
        Posterior draws used (evenly spaced over the flattened chains); None: all.
    mode : {"individual", "population"}
        See the module docstring.
    times : (S, T) array, optional
        Simulate at these times (model time unit, rows non-decreasing) instead of the cohort's
        measurement times, e.g. a dense grid for plots; ``observed`` is then None.
    observable : str, optional
        With ``times``: the observable reported at every point (default: the cohort's only
        measured observable).
    dt : float, optional
        Simulator step (model time unit); default :func:`default_dt`.
    start : {"initial", "filtered"}
        ``"initial"``: every subject starts at time 0 from the model's initial state.
        ``"filtered"`` (``mode="individual"``, needs a posterior that stores filtered states and
        ``times`` at or after each subject's filtered time): from the filtered state after the
        subject's last fitted event; doses before then are in that state. Without ``times``, the
        cohort's points before that time are not simulated (``mask`` False, time moved to the
        start).

    Returns
    -------
    PredictiveSample

    Raises
    ------
    PredictiveError
        Subjects that do not match the posterior's, missing covariates, unknown CMTs or observable,
        bad ``times``, or ``start="filtered"`` without filtered states or before their time.
    """
    draws = draws_of(posterior)
    model = draws.model
    padded = padded_of(cohort)
    ids = tuple(str(i) for i in padded.ids)
    if mode not in ("individual", "population"):
        raise PredictiveError(f"mode must be 'individual' or 'population', got {mode!r}")
    if mode == "individual" and ids != tuple(draws.subject_ids):
        raise PredictiveError(
            f"individual predictions need the fitted subjects in the fitted order; the posterior has "
            f"{list(draws.subject_ids)[:10]}, the cohort {list(ids)[:10]}"
        )
    obs_index = observable_index(model, np.asarray(padded.obs_cmt))
    if times is None:
        time = np.asarray(padded.obs_time, float)
        mask = np.asarray(padded.obs_mask, bool)
        observed: np.ndarray | None = np.asarray(padded.obs_value, float)
    else:
        time = np.asarray(times, float)
        if time.ndim != 2 or time.shape[0] != len(ids):
            raise PredictiveError(f"times: expected shape ({len(ids)}, T), one row per subject; got {time.shape}")
        measured = sorted(set(obs_index[np.asarray(padded.obs_mask, bool)].tolist()))
        if observable is None:
            if len(measured) != 1:
                raise PredictiveError("times given for a cohort measuring several observables: name the observable")
            chosen = measured[0]
        elif observable in model.observable_names:
            chosen = model.observable_names.index(observable)
        else:
            raise PredictiveError(f"model {model.name!r} has no observable {observable!r}: {model.observable_names}")
        obs_index = np.full(time.shape, chosen, np.int32)
        mask = np.ones(time.shape, bool)
        observed = None
    idx = select_draws(draws.n_draws, n_draws)
    n_rep, n_sub = len(idx), len(ids)
    k_eta, k_path, k_res = jax.random.split(key, 3)

    if start not in ("initial", "filtered"):
        raise PredictiveError(f"start must be 'initial' or 'filtered', got {start!r}")
    draw = np.repeat(idx, n_sub)  # replicate r of subject s is row r * S + s
    subject = np.tile(np.arange(n_sub), n_rep)
    population = {k: np.asarray(v, np.float64)[draw] for k, v in draws.population.items()}
    covariates = {k: np.asarray(v, np.float64)[subject] for k, v in _covariates(model, padded).items()}
    if mode == "individual":
        omega: dict[str, np.ndarray] = {}
        fitted = {k: np.asarray(v, np.float64)[draw, subject] for k, v in draws.eta.items()}
    else:
        omega = {k: np.asarray(v, np.float64)[draw] for k, v in draws.omega.items()}
        fitted = {}
    drawn = draw_individuals(
        model,
        population,
        omega,
        covariates,
        seed=k_eta,
        stream=Stream.SAMPLING,
        patient=np.arange(n_rep * n_sub),
        fitted_eta=fitted or None,
    )
    flat = {k: jnp.asarray(v, jnp.float32) for k, v in drawn.params.items()}
    flat.update({k: jnp.asarray(v, jnp.float32) for k, v in covariates.items() if k not in flat})
    x0 = t0 = None
    if start == "filtered":
        if times is None and draws.state_time is not None:
            # the cohort's own points before the filtered state are not forecast (masked out)
            t_start = np.asarray(draws.state_time, float)[:, None]
            mask = mask & (time >= t_start)
            time = np.maximum(time, t_start)
        x0, t0 = _filtered_start(draws, mode, draw, subject, jax.random.fold_in(key, 3), time)
    sim_time = np.tile(time, (n_rep, 1))
    try:
        paths = simulate_schedule(
            model,
            flat,
            _dose_events(model, padded, n_rep),
            sim_time,
            key=k_path,
            dt=default_dt(model) if dt is None else float(dt),
            x0=x0,
            t0=t0,
        )
    except ValueError as err:
        raise PredictiveError(f"cannot simulate the cohort's schedule: {err}") from None
    prediction = np.zeros((n_rep, n_sub, time.shape[1]))
    replicate = np.zeros_like(prediction)
    residual_sd = np.zeros_like(prediction)
    noise = np.asarray(jax.random.normal(k_res, prediction.shape))
    for i, name in enumerate(model.observable_names):
        at = obs_index == i
        if not at.any():
            continue
        values = np.asarray(paths[name], float).reshape(prediction.shape)
        spec = model.residual.get(name)
        sd = np.zeros_like(values)
        if spec is not None:
            add = draws.residual.get(residual_key(name, "add"))
            prop = draws.residual.get(residual_key(name, "prop"))
            add = None if add is None else np.asarray(add)[idx, None, None]
            prop = None if prop is None else np.asarray(prop)[idx, None, None]
            sd = np.asarray(spec.sd(jnp.asarray(values), add, prop), float)
        prediction = np.where(at, values, prediction)
        replicate = np.where(at, values + sd * noise, replicate)
        residual_sd = np.where(at, sd, residual_sd)
    return PredictiveSample(
        subject_ids=ids,
        time=time,
        mask=mask,
        observable=obs_index,
        observables=model.observable_names,
        observed=observed,
        prediction=prediction,
        replicate=replicate,
        draw_index=idx,
        mode=mode,
        seed_key=key_words(key),
        residual_sd=residual_sd,
    )


def _filtered_start(draws: PosteriorDraws, mode: str, draw, subject, key, time: np.ndarray) -> tuple[dict, np.ndarray]:
    """Start states and times of every replicate row for ``start="filtered"``."""
    if mode != "individual":
        raise PredictiveError("start='filtered' is a twin's forecast: it needs mode='individual'")
    if not draws.state or draws.state_time is None:
        raise PredictiveError("start='filtered' needs a posterior that stores the subjects' filtered states (refit)")
    t_start = np.asarray(draws.state_time, float)
    first = time[:, 0]
    late = first < t_start - 1e-6
    if late.any():
        s = int(np.argmax(late))
        raise PredictiveError(
            f"start='filtered': subject {draws.subject_ids[s]!r} has times from {first[s]:g}, before its "
            f"filtered state at {t_start[s]:g}; pass times at or after each subject's last fitted event"
        )
    from medsim.population.sampling import filtered_start
    from medsim.population.virtual import INITIAL_PREFIX

    values = filtered_start(draws, draw, subject, seed=key, patient=np.arange(draw.size))
    x0 = {k[len(INITIAL_PREFIX) :]: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    return x0, t_start[subject]


def key_words(key: jax.Array) -> np.ndarray:
    """Raw uint32 words of a typed or legacy PRNG key (for provenance)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).reshape(-1)
