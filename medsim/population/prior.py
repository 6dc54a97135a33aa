"""Virtual patients from a model's prior: typical values with log-normal between-subject variability.

Patient ``i`` gets, for every structural parameter ``p`` with ``bsv > 0``,
``eta_p,i ~ Normal(0, bsv_p)`` and the individual value of the model's
:meth:`~medsim.models.base.PhysiologyModel.individual_parameters` (``typical * exp(eta) *
covariate effect``); population-level parameters (covariate effects, process noise) stay at their
typical values, covariates at their reference values unless given. This is the population a model
file describes before any data are seen — the simulator tour's default and a sanity check for
fitted posteriors.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.population.individuals import draw_individuals
from medsim.population.streams import Stream


def prior_population(
    model: PhysiologyModel,
    n: int,
    *,
    key: jax.Array,
    covariates: Mapping[str, object] | None = None,
) -> dict[str, jax.Array]:
    """Individual parameters of ``n`` virtual patients of the model's *typical-value population*.

    Population values are fixed at the model's typical values and patients differ by the
    literature between-subject variability only (the three prior populations are compared in
    :mod:`medsim.models.prior`).

    Parameters
    ----------
    model : PhysiologyModel
    n : int
        Number of patients.
    key : jax PRNG key
        Patient ``i``'s random effects depend only on ``key`` and ``i`` (not on ``n``): the first
        ``n`` patients are the same for any larger ``n``. Drawn by
        :func:`~medsim.population.individuals.draw_individuals` on the ``SAMPLING`` stream with
        ``key`` as the seed, one named draw per parameter.
    covariates : dict name -> scalar or (n,), optional
        Covariate values (in the covariate's unit); missing covariates take their reference value.

    Returns
    -------
    dict name -> (n,) float32
        Every model parameter (individual values) and every covariate.

    Raises
    ------
    ValueError
        If ``n`` is not a positive int, or a covariate is unknown, mis-shaped or not finite.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n: expected a positive number of patients, got {n!r}")
    n = int(n)
    known = {c.name: c for c in model.covariates}
    cov: dict[str, jax.Array] = {c.name: jnp.full((n,), c.reference, jnp.float32) for c in model.covariates}
    for name, value in (covariates or {}).items():
        if name not in known:
            raise ValueError(f"covariates: model {model.name!r} has no covariate {name!r}; it has {sorted(known)}")
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(n, arr)
        if arr.shape != (n,):
            raise ValueError(f"covariates[{name!r}]: expected a scalar or shape ({n},), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"covariates[{name!r}]: values must be finite ({known[name].unit})")
        cov[name] = jnp.asarray(arr, jnp.float32)
    population = {p.name: jnp.full((n,), p.typical, jnp.float32) for p in model.parameters}
    omega = {p.name: np.full(n, p.bsv) for p in model.structural if p.bsv > 0}
    drawn = draw_individuals(model, population, omega, cov, seed=key, stream=Stream.SAMPLING, patient=np.arange(n))
    out = {k: jnp.asarray(v, jnp.float32) for k, v in drawn.params.items()}
    return {**cov, **out}
