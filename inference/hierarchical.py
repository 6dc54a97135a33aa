"""The hierarchical SDE model as a numpyro program, built from a PriorSpec (no per-dataset code).

Sample sites are named after the model's parameters (``ka``, ``CL``, ``omega_ka``,
``eta_ka_decentered`` in the ``subject`` plate, ``sigma_central``, ``res_add_conc``...); see
:mod:`inference.priors` for the distributions. The data enter through one ``numpyro.factor``: the
extended Kalman filter integrates the process noise out, so the factor is the marginal
likelihood of every subject's observations given the subject's parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from inference.priors import PriorSpec, residual_key
from inference.problem import FitData

Array = jax.Array


def split_sites(
    priors: PriorSpec, values: Mapping[str, Array]
) -> tuple[dict[str, Array], dict[str, Array], dict[str, Array] | None, dict[str, Array]]:
    """Group site values into the likelihood's arguments.

    Parameters
    ----------
    priors : PriorSpec
    values : mapping site -> array
        Values of the population sites and of ``eta_<p>`` (the scaled random effects, (S,)).
        Leading batch axes are allowed as long as they broadcast.

    Returns
    -------
    population : dict parameter -> array
        Every model parameter (fixed process-noise scales included).
    eta : dict structural parameter -> (..., S)
    noise : dict process-noise parameter -> array, or None in the ODE limit
    residual : dict "<observable>_add" / "<observable>_prop" -> array
    """
    population = {s.target: values[s.site] for s in priors.by_role("typical", "covariate_effect", "process_noise")}
    population.update({k: jnp.asarray(v) for k, v in priors.fixed.items()})
    noise = {s.target: values[s.site] for s in priors.by_role("process_noise")} if priors.process_noise else None
    eta = {p: values[f"eta_{p}"] for p in priors.random_effects}
    residual = {residual_key(s.target, "add"): values[s.site] for s in priors.by_role("residual_add")}
    residual.update({residual_key(s.target, "prop"): values[s.site] for s in priors.by_role("residual_prop")})
    return population, eta, noise, residual


def pointwise_loglik(data: FitData, values: Mapping[str, Array]) -> Array:
    """(S, N) log predictive density of each observation given one draw of the sites."""
    population, eta, noise, residual = split_sites(data.priors, values)
    covariates = {k: jnp.asarray(v, data.timeline.time.dtype) for k, v in data.covariates.items()}
    theta = data.model.individual_parameters(population, eta, covariates)
    return data.loglik(theta, noise, residual)


def individual_parameters(data: FitData, values: Mapping[str, Array]) -> dict[str, Array]:
    """Subject parameters (S,) of every structural parameter, covariate effects applied."""
    population, eta, _, _ = split_sites(data.priors, values)
    covariates = {k: jnp.asarray(v, data.timeline.time.dtype) for k, v in data.covariates.items()}
    theta = data.model.individual_parameters(population, eta, covariates)
    shape = (data.n_subjects,)
    return {p.name: jnp.broadcast_to(theta[p.name], shape) for p in data.model.structural}


def hierarchical_model(data: FitData) -> None:
    """numpyro model: priors of :attr:`FitData.priors`, EKF marginal likelihood of the cohort."""
    values: dict[str, Array] = {}
    for site in data.priors.sites:
        values[site.site] = numpyro.sample(site.site, site.numpyro())
    with numpyro.plate("subject", data.n_subjects):
        for p in data.priors.random_effects:
            if p in data.priors.centered:
                values[f"eta_{p}"] = numpyro.sample(f"eta_{p}", dist.Normal(0.0, values[f"omega_{p}"]))
            else:
                z = numpyro.sample(f"eta_{p}_decentered", dist.Normal(0.0, 1.0))
                values[f"eta_{p}"] = numpyro.deterministic(f"eta_{p}", values[f"omega_{p}"] * z)
    numpyro.factor("log_likelihood", jnp.sum(pointwise_loglik(data, values)))


def potential_fn(data: FitData) -> Callable[[Mapping[str, Array]], Array]:
    """Jitted potential energy (negative log posterior density, up to a constant) of the model.

    Takes the *unconstrained* values of the sample sites (log scale for positive sites), as
    numpyro's samplers do; the log-Jacobians of the transforms are included. Jitting it here
    means a sampler's eager start-up calls compile the whole density once instead of tracing the
    filter op by op.
    """
    from numpyro.infer.util import potential_energy

    model = partial(hierarchical_model, data)
    return jax.jit(lambda u: potential_energy(model, (), {}, u))


def unconstrained_sites(data: FitData) -> tuple[str, ...]:
    """Names of the sampled sites (population sites, then the standardised random effects)."""
    return tuple(s.site for s in data.priors.sites) + tuple(data.priors.eta_site(p) for p in data.priors.random_effects)


def constrain(data: FitData, unconstrained: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Constrained site values and the scaled random effects ``eta_<p>`` from unconstrained draws.

    Parameters
    ----------
    unconstrained : mapping site -> (..., ) or (..., S) array
        Any leading batch shape (e.g. ``(chains, draws)``).

    Returns
    -------
    dict site -> array
        Population sites on their natural scale, ``eta_<p>_decentered`` unchanged and
        ``eta_<p> = omega_<p> * eta_<p>_decentered``.
    """
    out = {s.site: s.from_unconstrained(np.asarray(unconstrained[s.site])) for s in data.priors.sites}
    for p in data.priors.random_effects:
        site = data.priors.eta_site(p)
        out[site] = np.asarray(unconstrained[site])
    return with_random_effects(data, out)


def with_random_effects(data: FitData, constrained: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Complete ``eta_<p>`` and ``eta_<p>_decentered`` from whichever was sampled (any batch shape).

    Non-centred parameters: ``eta_<p> = omega_<p> * eta_<p>_decentered``; centred ones (see
    :attr:`PriorSpec.centered`): ``eta_<p>_decentered = eta_<p> / omega_<p>``.
    """
    out = {k: np.asarray(v) for k, v in constrained.items()}
    for p in data.priors.random_effects:
        omega = out[f"omega_{p}"][..., None]
        if p in data.priors.centered:
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"eta_{p}_decentered"] = out[f"eta_{p}"] / omega
        else:
            out[f"eta_{p}"] = omega * out[f"eta_{p}_decentered"]
    return out


def data_information(data: FitData, *, step: float = 0.01) -> dict[str, np.ndarray]:
    """Observed information of each subject's data about its own random effect, at the prior medians.

    For a random effect ``p`` and subject ``i``: ``I_i = -d^2 log p(y_i | eta) / d eta_{p,i}^2``
    at ``eta = 0`` and every population site at its prior median. A subject's log-likelihood
    depends on its own ``eta_i`` only, so one central difference of the gradient along all
    subjects at once gives every ``I_i`` (two gradient evaluations per parameter).

    Returns
    -------
    dict parameter -> (S,) array, in 1 / (log-unit)^2 (negative curvature clipped at 0).
    """
    values = {s.site: jnp.asarray(s.median(), data.timeline.time.dtype) for s in data.priors.sites}
    effects = data.priors.random_effects

    def gradient(etas):  # (E, S) random effects -> (E, S) gradient of the cohort log-likelihood
        named = {f"eta_{q}": etas[k] for k, q in enumerate(effects)}
        return jax.grad(lambda e: jnp.sum(pointwise_loglik(data, {**values, **e})))(named)

    # Effect p moved by +-step, the others at 0: 2E points, one vmapped (and compiled) gradient.
    shifts = np.concatenate([np.eye(len(effects)), -np.eye(len(effects))]) * step
    points = jnp.asarray(shifts[:, :, None] * np.ones(data.n_subjects), data.timeline.time.dtype)
    grads = jax.jit(jax.vmap(gradient))(points)
    curvatures = {
        p: -(grads[f"eta_{p}"][k] - grads[f"eta_{p}"][len(effects) + k]) / (2 * step) for k, p in enumerate(effects)
    }
    return {p: np.maximum(np.asarray(c, np.float64), 0.0) for p, c in curvatures.items()}


def choose_centering(data: FitData, *, threshold: float = 1.0) -> tuple[tuple[str, ...], dict[str, float]]:
    """Random effects to sample centred: those the subjects' own data determine better than the prior.

    In the normal hierarchical model the centred parametrisation mixes better when a subject's
    data information about its effect exceeds the prior's, ``I_i * omega^2 > 1``, and the
    non-centred one when it falls short (Papaspiliopoulos, Roberts & Sköld 2007, *Statist. Sci.*
    22:59; Betancourt & Girolami 2015). The rule uses the median subject's information
    (:func:`data_information`) and the prior median of ``omega_<p>``.

    Returns
    -------
    centred : tuple of str
    ratios : dict parameter -> median_i(I_i) * median(omega_p)^2 (what the decision used)
    """
    information = data_information(data)
    ratios = {
        p: float(np.median(information[p]) * data.priors.site(f"omega_{p}").median() ** 2)
        for p in data.priors.random_effects
    }
    return tuple(p for p in data.priors.random_effects if ratios[p] > threshold), ratios


def with_centering(data: FitData, centered: Sequence[str] | str = "auto") -> FitData:
    """``data`` with :attr:`PriorSpec.centered` set: ``"auto"`` (:func:`choose_centering`) or names.

    Raises
    ------
    PriorError
        A name that is not a random effect of the model.
    """
    chosen = choose_centering(data)[0] if centered == "auto" else tuple(centered)
    return dataclasses.replace(data, priors=dataclasses.replace(data.priors, centered=chosen))
