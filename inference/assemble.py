"""Turn sampler output into the ArviZ InferenceData that a :class:`~medsim.inference.posterior.Posterior` wraps.

Layout (dimension names in brackets)::

    posterior        population sites [chain, draw]; eta_<p>, eta_<p>_decentered and the
                     individual parameters <p>_i [chain, draw, subject]
    sample_stats     diverging, energy, n_steps, tree_depth, acceptance_rate, step_size, lp
                     [chain, draw] (NUTS only)
    log_likelihood   one variable per observed observable [chain, draw, <observable>_obs]:
                     log p(y_j | earlier observations of the subject), for PSIS-LOO
    observed_data    the observations [<observable>_obs]
    constant_data    <observable>_time, <observable>_subject [<observable>_obs]; the subjects'
                     covariates [subject]

    posterior        filtered_<state> [chain, draw, subject] and filtered_cov [chain, draw,
                     subject, state, state_to]: the filter's mean and covariance after each
                     subject's last event (:mod:`medsim.inference.likelihood.filtered`), where a
                     personalized forecast starts; constant_data filtered_time [subject] is its time

The ``subject`` coordinate holds the subject ids. Provenance lives in the posterior group's
attributes (see :mod:`medsim.inference.posterior`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from medsim.inference.hierarchical import individual_parameters, pointwise_and_filtered
from medsim.inference.problem import FitData


def import_arviz():
    """Import ArviZ without its import-time notice about the upcoming 1.0 refactor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


#: Names of the filtered state's variables (posterior and constant_data groups).
FILTERED_PREFIX, FILTERED_COV, FILTERED_TIME = "filtered_", "filtered_cov", "filtered_time"


def _per_draw(data: FitData, samples: Mapping[str, np.ndarray], fn, *, chunk: int = 256):
    """Evaluate ``fn(data, values) -> pytree of arrays`` for every (chain, draw), vmapped in chunks
    (one compilation; the last chunk is padded to full size so it reuses it)."""
    chains, draws = next(iter(samples.values())).shape[:2]
    flat = {k: np.reshape(v, (chains * draws, *v.shape[2:])) for k, v in samples.items()}
    dtype = data.timeline.time.dtype
    mapped = jax.jit(jax.vmap(lambda values: fn(data, values)))
    total = chains * draws
    size = min(chunk, total)
    pieces = []
    for start in range(0, total, size):
        part = {k: v[start : start + size] for k, v in flat.items()}
        short = size - len(next(iter(part.values())))
        part = {k: jnp.asarray(np.concatenate([v, np.repeat(v[-1:], short, axis=0)]), dtype) for k, v in part.items()}
        pieces.append(jax.tree.map(lambda x, n=size - short: np.asarray(x)[:n], mapped(part)))
    joined = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *pieces)
    return jax.tree.map(lambda x: np.reshape(x, (chains, draws, *x.shape[1:])), joined)


def observation_index(data: FitData, observable: str) -> tuple[np.ndarray, np.ndarray]:
    """(subject, column) indices of the real observations of ``observable``, subject-major."""
    which = data.timeline.observables.index(observable)
    return np.nonzero(data.obs_mask & (data.obs_observable == which))


def build_inference_data(
    data: FitData,
    samples: Mapping[str, np.ndarray],
    sample_stats: Mapping[str, np.ndarray] | None,
    attrs: Mapping[str, object],
):
    """Assemble the InferenceData of a fit.

    Parameters
    ----------
    data : FitData
    samples : mapping site -> (chains, draws, ...) array
        Constrained population sites, ``eta_<p>`` and ``eta_<p>_decentered``.
    sample_stats : mapping name -> (chains, draws) array, or None (SVI)
    attrs : mapping
        Provenance attributes (JSON strings, numbers, strings) for the posterior group.

    Returns
    -------
    arviz.InferenceData
    """
    az = import_arviz()
    posterior = {k: np.asarray(v) for k, v in samples.items()}
    dims: dict[str, list[str]] = {}
    for p in data.priors.random_effects:
        dims[f"eta_{p}"] = ["subject"]
        dims[f"eta_{p}_decentered"] = ["subject"]
    per_draw = _per_draw(data, samples, lambda d, v: (individual_parameters(d, v), pointwise_and_filtered(d, v)))
    # dict of (chains, draws, S); (chains, draws, S, N); the filtered state after each record
    individual, (pointwise, (last_time, last_mean, last_cov)) = per_draw
    for name, values in individual.items():
        posterior[f"{name}_i"] = values
        dims[f"{name}_i"] = ["subject"]
    names = tuple(data.model.state_names)
    for j, name in enumerate(names):
        posterior[f"{FILTERED_PREFIX}{name}"] = last_mean[..., j]
        dims[f"{FILTERED_PREFIX}{name}"] = ["subject"]
    posterior[FILTERED_COV] = last_cov
    dims[FILTERED_COV] = ["subject", "state", "state_to"]
    log_likelihood, observed, constant = {}, {}, {}
    coords: dict[str, object] = {"subject": list(data.subject_ids), "state": list(names), "state_to": list(names)}
    constant[FILTERED_TIME] = np.asarray(last_time, float).reshape(-1, data.n_subjects)[0]
    dims[FILTERED_TIME] = ["subject"]
    for o in data.observed:
        subj, col = observation_index(data, o)
        log_likelihood[o] = pointwise[:, :, subj, col]
        observed[o] = data.obs_value[subj, col]
        constant[f"{o}_time"] = data.obs_time[subj, col]
        constant[f"{o}_subject"] = subj.astype(np.int64)
        for name in (o, f"{o}_time", f"{o}_subject"):
            dims[name] = [f"{o}_obs"]
        coords[f"{o}_obs"] = np.arange(len(subj))
    for name, values in {**data.covariates, **data.extra_covariates}.items():
        constant[f"covariate_{name}"] = np.asarray(values, float)
        dims[f"covariate_{name}"] = ["subject"]
    idata = az.from_dict(
        posterior=posterior,
        sample_stats=dict(sample_stats) if sample_stats else None,
        log_likelihood=log_likelihood,
        observed_data=observed,
        constant_data=constant,
        coords=coords,
        dims=dims,
    )
    idata.posterior.attrs.clear()
    idata.posterior.attrs.update(attrs)
    return idata
