"""The hierarchical SDE model as a numpyro program, built from a PriorSpec (no per-dataset code).

Sample sites are named after the model's parameters (``ka``, ``CL``, ``omega_ka``,
``eta_ka_decentered`` in the ``subject`` plate, ``sigma_central``, ``res_add_conc``...); see
:mod:`medsim.inference.priors` for the distributions. The data enter through one ``numpyro.factor``: the
extended Kalman filter integrates the process noise out, so the factor is the marginal
likelihood of every subject's observations given the subject's parameters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from medsim.inference.priors import PriorSpec
from medsim.inference.problem import FitData
from medsim.models.base import residual_key

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


def pointwise_and_filtered(data: FitData, values: Mapping[str, Array]) -> tuple[Array, tuple[Array, Array, Array]]:
    """:func:`pointwise_loglik` and, from the same filter pass, each subject's filtered state after
    its last event: ``(time (S,), mean (S, n), cov (S, n, n))`` (:mod:`medsim.inference.likelihood.filtered`)."""
    from medsim.inference.likelihood.filtered import cohort_filter

    population, eta, noise, residual = split_sites(data.priors, values)
    covariates = {k: jnp.asarray(v, data.timeline.time.dtype) for k, v in data.covariates.items()}
    theta = data.model.individual_parameters(population, eta, covariates)
    return cohort_filter(data.model, data.timeline, theta, noise, residual)


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
        value = numpyro.sample(site.sampled_site, site.sampled_prior())
        values[site.site] = numpyro.deterministic(site.site, jnp.abs(value)) if site.signed else value
    with numpyro.plate("subject", data.n_subjects):
        for p in data.priors.random_effects:
            # the sampled coordinate u ~ Normal(0, sd) and eta = factor * u (PriorSpec.eta_scales)
            sd, factor = data.priors.eta_scales(p, values[f"omega_{p}"])
            site = data.priors.eta_site(p)
            u = numpyro.sample(site, dist.Normal(0.0, sd))
            values[f"eta_{p}"] = u if site == f"eta_{p}" else numpyro.deterministic(f"eta_{p}", factor * u)
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
    """Names of the sampled sites (population sites, then the random effects' coordinates)."""
    priors = data.priors
    return tuple(s.sampled_site for s in priors.sites) + tuple(priors.eta_site(p) for p in priors.random_effects)


def constrain(data: FitData, unconstrained: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Constrained site values and the scaled random effects ``eta_<p>`` from unconstrained draws.

    Parameters
    ----------
    unconstrained : mapping site -> (..., ) or (..., S) array
        Any leading batch shape (e.g. ``(chains, draws)``).

    Returns
    -------
    dict site -> array
        Population sites on their natural scale, ``eta_<p>`` and ``eta_<p>_decentered``
        (``eta_<p> / omega_<p>``) whatever the sampled coordinate was.
    """
    out = {s.sampled_site: s.from_unconstrained(np.asarray(unconstrained[s.sampled_site])) for s in data.priors.sites}
    for p in data.priors.random_effects:
        site = data.priors.eta_site(p)
        out[site] = np.asarray(unconstrained[site])
    return with_random_effects(data, out)


def with_random_effects(data: FitData, constrained: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Complete ``eta_<p>`` and ``eta_<p>_decentered`` from whichever coordinate was sampled
    (:meth:`PriorSpec.eta_site`; any batch shape), and each signed process-noise scale from its
    ``<s>_signed`` coordinate. Sampler-only coordinates (``eta_<p>_partial``, ``eta_<p>_scaled``,
    ``<s>_signed``) are replaced, so posteriors keep one layout whatever the parametrisation.
    """
    out = {k: np.asarray(v) for k, v in constrained.items()}
    for s in data.priors.sites:
        if s.signed and s.sampled_site in out:
            out[s.site] = np.abs(out.pop(s.sampled_site))
    for p in data.priors.random_effects:
        omega = out[f"omega_{p}"][..., None]
        site = data.priors.eta_site(p)
        if site == f"eta_{p}_decentered":
            out[f"eta_{p}"] = omega * out[site]
            continue
        if site != f"eta_{p}":
            out[f"eta_{p}"] = data.priors.eta_scales(p, omega)[1] * out.pop(site)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"eta_{p}_decentered"] = out[f"eta_{p}"] / omega
    return out


def data_information(data: FitData, *, step: float = 0.01) -> dict[str, np.ndarray]:
    """Observed information of each subject's data about its own random effect, at the prior medians.

    For a random effect ``p`` and subject ``i``: ``I_i = -d^2 log p(y_i | eta) / d eta_{p,i}^2``
    at ``eta = 0``, every population site at its prior median and the process noise at 0: what
    the observations say about each subject when the model is deterministic. (At the prior-median
    noise, 10 times what the theophylline posterior finds, the filter explains most of the signal
    as noise and CL's information drops from 110 to 2.) A subject's log-likelihood
    depends on its own ``eta_i`` only, so one central difference of the gradient along all
    subjects at once gives every ``I_i`` (two gradient evaluations per parameter).

    Returns
    -------
    dict parameter -> (S,) array, in 1 / (log-unit)^2 (negative curvature clipped at 0).
    """
    # at zero noise the filter's likelihood is the ODE limit's (tests/inference/test_ekf_exact.py);
    # the ODE-limit filter carries no covariance, which makes it much cheaper to compile
    data = dataclasses.replace(data, priors=data.priors.ode_limit())
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


def approximate_posterior_variances(data: FitData, information: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rough posterior variance of every sampled coordinate (unconstrained scale), for a sampler's
    initial mass matrix.

    Normal-approximation arguments at the prior medians ``omega_hat`` of the BSV SDs, with
    ``I_i`` the information of subject ``i``'s data about its own random effect
    (:func:`data_information`) and ``r_i = I_i omega_hat^2``; precisions add to the prior's
    (``pi^2 / 8`` is the variance of ``log |Z|`` for a half-normal site):

    - random-effect coordinate of weight ``w``: ``omega_hat^(-2 (1 - w)) / (I_i + omega_hat^-2)``
      (exact in the normal-normal hierarchy); scaled with information ``I``:
      ``(1 + I omega_hat^2) / (1 + r_i)``;
    - typical value with BSV: precision ``sum_i I_i / (1 + r_i)`` (each subject's estimate of
      ``log theta`` has variance ``omega^2 + 1 / I_i``);
    - ``log omega``: precision ``sum_i 2 (r_i / (1 + r_i))^2`` (Fisher information of ``n``
      effects each known to a variance ``1 / I_i``);
    - residual SD of an observable with ``N`` observations and ``k`` residual sites: ``2 N / k``;
    - covariate effects, typical values without BSV: the prior alone;
    - a signed process-noise coordinate: ``(prior_sd / 10)^2``. Its posterior scale depends on
      whether the data detect noise, which nothing cheap tells; a guess too wide forces a small
      step on every coordinate until the first adaptation window, one too narrow only slows this
      coordinate until then.

    These are starting values that the warmup replaces at its first adaptation window; what they
    save in warmup is measured in ``docs/fitting.md``.

    Returns
    -------
    dict sampled site -> float or (S,) array, the sites of :func:`unconstrained_sites`.
    """
    priors = data.priors
    omega = {p: priors.site(f"omega_{p}").median() for p in priors.random_effects}
    info = {p: np.asarray(information[p], np.float64) for p in priors.random_effects}
    ratio = {p: info[p] * omega[p] ** 2 for p in priors.random_effects}
    out: dict[str, np.ndarray] = {}
    for s in priors.sites:
        if s.signed:
            out[s.sampled_site] = np.asarray((s.scale / 10.0) ** 2)
            continue
        precision = 1.0 / ((math.pi**2 / 8) if s.distribution == "halfnormal" else s.scale**2)
        if s.role == "typical" and s.target in priors.random_effects:
            precision += float(np.sum(info[s.target] / (1.0 + ratio[s.target])))
        elif s.role == "omega":
            precision += float(np.sum(2.0 * np.square(ratio[s.target] / (1.0 + ratio[s.target]))))
        elif s.role in ("residual_add", "residual_prop"):
            observables = data.timeline.observables
            which = observables.index(s.target) if s.target in observables else -1
            n_obs = int(np.sum(data.obs_mask & (data.obs_observable == which)))
            sharing = len([t for t in priors.by_role("residual_add", "residual_prop") if t.target == s.target])
            precision += 2.0 * n_obs / sharing
        out[s.sampled_site] = np.asarray(1.0 / precision)
    for p in priors.random_effects:
        if p in priors.scaling:
            out[priors.eta_site(p)] = (1.0 + priors.scaling[p] * omega[p] ** 2) / (1.0 + ratio[p])
            continue
        w = priors.weight(p)
        out[priors.eta_site(p)] = omega[p] ** (-2.0 * (1.0 - w)) / (info[p] + omega[p] ** -2.0)
    return out


def choose_centering(
    data: FitData, *, partial: bool = False, information: Mapping[str, np.ndarray] | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """Centring weight of each random effect, from how well the subjects' own data determine it.

    With ``r = I omega^2`` (the median subject's information about its own effect times the
    prior median of ``omega_<p>^2``), the rule centres an effect fully when ``r > 1`` and leaves
    it non-centred otherwise (weights 1 or 0; ``--centered rule``). ``partial=True`` gives the
    partially non-centred weight ``w = r / (1 + r)`` instead (below; ``--centered partial``).
    Both are options: the default is the scaled coordinate (:func:`information_scaling`), which
    adapts to ``omega`` rather than to its prior median.

    In the normal hierarchy ``y_i | eta_i ~ Normal(eta_i, 1 / I_i)``, ``eta_i ~ Normal(0,
    omega^2)``, the coordinate ``eta_i / omega^(1 - w)`` with ``w = I omega^2 / (1 + I omega^2)``
    makes it a posteriori independent of ``omega`` (the partially non-centred parametrisation of
    Papaspiliopoulos, Roberts & Sköld 2003, *Bayesian Statistics 7*, 307; 2007, *Statist. Sci.*
    22:59): ``w`` near 1 (centred) when the data dominate the prior, near 0 (non-centred) when
    the prior does, and in between where either extreme leaves a funnel. The rule uses the
    median subject's information (:func:`data_information`) and the prior median of
    ``omega_<p>``; the weight is rounded to 3 decimals (it is stored with the posterior).
    ``information``: :func:`data_information` of ``data`` when the caller has it already.

    Returns
    -------
    weights : dict parameter -> w in [0, 1]
    ratios : dict parameter -> median_i(I_i) * median(omega_p)^2 (what the weights come from)
    """
    information = data_information(data) if information is None else information
    ratios = {
        p: float(np.median(information[p]) * data.priors.site(f"omega_{p}").median() ** 2)
        for p in data.priors.random_effects
    }
    if partial:
        return {p: round(r / (1.0 + r), 3) for p, r in ratios.items()}, ratios
    return {p: 1.0 if r > 1.0 else 0.0 for p, r in ratios.items()}, ratios


def information_scaling(data: FitData, information: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """:attr:`PriorSpec.scaling` of every random effect: the median subject's information about
    its own effect (:func:`data_information`; ``information`` if the caller has it), rounded to 4
    significant digits since it is stored with the posterior."""
    information = data_information(data) if information is None else information
    out = {}
    for p in data.priors.random_effects:
        value = float(np.median(information[p]))
        out[p] = float(f"{value:.4g}") if math.isfinite(value) else 0.0
    return out


def with_centering(
    data: FitData,
    centered: Sequence[str] | Mapping[str, float] | str = "auto",
    *,
    information: Mapping[str, np.ndarray] | None = None,
) -> FitData:
    """``data`` with the random effects' sampler coordinates set (:attr:`PriorSpec.scaling`,
    :attr:`PriorSpec.centering`).

    ``centered``: ``"auto"`` or ``"scaled"`` (every effect in the scaled coordinate,
    :func:`information_scaling`),
    ``"rule"`` (:func:`choose_centering`: each effect fully centred or not), ``"partial"`` (its
    partially non-centred weights), ``"none"``, a mapping parameter -> weight, or names sampled
    fully centred (weight 1; the others non-centred), as a sequence or a comma-separated string.
    ``information``: :func:`data_information` of ``data``, if already computed (``"auto"``,
    ``"rule"`` and ``"partial"`` need it).

    Raises
    ------
    PriorError
        A name that is not a random effect of the model, or a weight outside [0, 1].
    """
    scaling: dict[str, float] = {}
    if isinstance(centered, str):  # as `medsim fit --centered` takes it
        centered = centered.strip()
        if centered in ("auto", "scaled", ""):
            weights, scaling = {}, information_scaling(data, information)
        elif centered in ("rule", "partial"):
            weights = choose_centering(data, partial=centered == "partial", information=information)[0]
        else:  # "none" or comma-separated names
            weights = {p.strip(): 1.0 for p in centered.split(",") if p.strip() and centered != "none"}
    elif isinstance(centered, Mapping):
        weights = {p: float(w) for p, w in centered.items()}
    else:
        weights = {p: 1.0 for p in centered}
    return dataclasses.replace(data, priors=dataclasses.replace(data.priors, centering=weights, scaling=scaling))
