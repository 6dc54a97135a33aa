"""NUTS in PyMC on the same hierarchical model: an independent sampler for the same posterior.

:func:`build_pymc_model` mirrors :func:`medsim.inference.hierarchical.hierarchical_model` site by site,
reading every distribution from the :class:`~medsim.inference.priors.PriorSpec` (no number is restated
here), and adds the cohort's EKF log-likelihood, written once in JAX, through
:class:`~medsim.inference.backends.pytensor_op.CohortLogLikOp`. :func:`run_pymc` samples it with PyMC's
own NUTS and returns the same :class:`~medsim.inference.backends.numpyro_nuts.SamplerOutput` as the
numpyro backend (same site names, shapes ``(chains, draws, ...)`` and sample-statistic names), so
the posterior file built from it is indistinguishable in layout.

Both backends transform positive sites by ``log`` (PyMC's default transform for ``LogNormal`` and
``HalfNormal``; numpyro's ``biject_to(positive)``), so the samplers see the same unconstrained
geometry, and both start every chain at the prior medians plus a uniform jitter of the same
radius on that scale.

Chains run in ``cores`` worker processes (PyMC's multiprocessing; each process compiles the JAX
likelihood once), or sequentially in this process when ``cores == 1``. Workers are started with
the ``forkserver`` method, never ``fork``: JAX runs threads, and a process forked from a
multithreaded JAX process can deadlock (the JAX documentation warns against ``os.fork``; PyMC's
default on Linux is ``fork``). The step method reaches the workers through cloudpickle, which
:class:`~medsim.inference.backends.pytensor_op.CohortLogLikOp` supports.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from medsim.inference.backends.numpyro_nuts import SamplerOutput
from medsim.inference.backends.progress import Progress, ProgressCounter
from medsim.inference.backends.pytensor_op import CohortLogLikOp
from medsim.inference.priors import SitePrior
from medsim.inference.problem import FitData

#: PyMC sample-statistic name -> (name in SamplerOutput, dtype); the numpyro backend's set.
_STATS = {
    "diverging": ("diverging", bool),
    "energy": ("energy", np.float64),
    "n_steps": ("n_steps", np.int64),
    "tree_depth": ("tree_depth", np.int64),
    "acceptance_rate": ("acceptance_rate", np.float64),
    "step_size": ("step_size", np.float64),
    "lp": ("lp", np.float64),
}


def _pymc_prior(site: SitePrior):
    """The PyMC random variable of one population site (inside a model context); a signed site
    (:attr:`SitePrior.signed`) is ``Normal(0, scale)`` under its ``sampled_site`` name with the
    site itself its absolute value, as in the numpyro model."""
    import pymc as pm

    if site.signed:
        return pm.Deterministic(site.site, pm.math.abs(pm.Normal(site.sampled_site, mu=0.0, sigma=site.scale)))
    if site.distribution == "lognormal":
        return pm.LogNormal(site.site, mu=site.loc, sigma=site.scale)
    if site.distribution == "normal":
        return pm.Normal(site.site, mu=site.loc, sigma=site.scale)
    if site.distribution == "halfnormal":
        return pm.HalfNormal(site.site, sigma=site.scale)
    raise ValueError(f"site {site.site!r}: unknown prior distribution {site.distribution!r}")


def build_pymc_model(data: FitData):
    """The hierarchical model of ``data`` as a ``pymc.Model``.

    Sites (see :mod:`medsim.inference.priors` for the distributions): every population site of
    ``data.priors``; per random effect the sampled coordinate ``data.priors.eta_site(p)`` ~
    Normal(0, omega_<p>^w) with dims ``("subject",)`` (``w`` its centring weight), and the
    deterministics ``eta_<p> = omega_<p>^(1 - w) * coordinate`` (log-scale random effect, (S,))
    and ``eta_<p>_decentered = eta_<p> / omega_<p>`` (whichever of the two is not the coordinate);
    and the potential ``log_likelihood``, the EKF marginal log-likelihood of the cohort.

    Parameters
    ----------
    data : FitData

    Returns
    -------
    pymc.Model
        With coordinate ``subject`` = the cohort's subject ids.
    """
    import pymc as pm

    op = CohortLogLikOp(data)
    with pm.Model(coords={"subject": list(data.subject_ids)}) as model:
        values = {site.site: _pymc_prior(site) for site in data.priors.sites}
        for p in data.priors.random_effects:
            omega = values[f"omega_{p}"]
            sd, factor = data.priors.eta_scales(p, omega)
            site = data.priors.eta_site(p)
            u = pm.Normal(site, mu=0.0, sigma=sd, dims="subject")
            if site == f"eta_{p}_decentered":
                values[f"eta_{p}"] = pm.Deterministic(f"eta_{p}", factor * u, dims="subject")
                continue
            values[f"eta_{p}"] = u if site == f"eta_{p}" else pm.Deterministic(f"eta_{p}", factor * u, dims="subject")
            pm.Deterministic(f"eta_{p}_decentered", values[f"eta_{p}"] / omega, dims="subject")
        outputs = op(*(values[name] for name in op.sites))
        pm.Potential("log_likelihood", outputs[0])
    return model


def initial_values(data: FitData, chains: int, radius: float, *, seed: int) -> list[dict[str, np.ndarray]]:
    """Per-chain starting points (constrained scale): prior medians jittered on the unconstrained scale.

    Positive sites start at ``median * exp(u)``, real sites at ``median + u``, and each random
    effect's sampled coordinate at ``u`` per subject, with ``u ~ Uniform(-radius, radius)`` —
    the numpyro backend's scheme, drawn from ``numpy.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(chains):
        point: dict[str, np.ndarray] = {}
        for site in data.priors.sites:
            u = rng.uniform(-radius, radius)
            median = site.median()
            point[site.sampled_site] = np.asarray(median + u if site.distribution == "normal" else median * math.exp(u))
        for p in data.priors.random_effects:
            u = rng.uniform(-radius, radius, data.n_subjects)
            point[data.priors.eta_site(p)] = u
        points.append(point)
    return points


@contextmanager
def _quiet_pymc() -> Iterator[None]:
    """Hold back PyMC's INFO log lines (sampler set-up, timings) while sampling: the library never
    prints; warnings (divergences, ...) still go through."""
    logger = logging.getLogger("pymc")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return os.cpu_count() or 1


def run_pymc(
    data: FitData,
    *,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    seed: int = 0,
    cores: int | None = None,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    init_radius: float = 0.5,
    progress: Progress | None = None,
) -> SamplerOutput:
    """Sample the posterior of the hierarchical model with PyMC's NUTS.

    Parameters
    ----------
    data : FitData
    chains, draws, warmup : int
        Number of chains, kept draws per chain and tuning iterations per chain.
    seed : int
        Seeds the starting points and PyMC's sampler; the same seed gives the same draws.
    cores : int, optional
        Worker processes (chains run ``cores`` at a time); default
        ``min(chains, available CPU cores)``. ``1`` samples the chains one after the other in
        this process (no worker start-up, one compilation).
    target_accept : float
        Target acceptance probability of PyMC's step-size adaptation.
    max_tree_depth : int
    init_radius : float
        Half-width of the uniform jitter (unconstrained scale) around the prior medians.
    progress : callable(done, total), optional
        Receives iterations completed, summed over chains (tuning included).

    Returns
    -------
    SamplerOutput
        ``samples`` site -> (chains, draws, ...) for every population site, ``eta_<p>`` and
        ``eta_<p>_decentered``; ``sample_stats`` with the numpyro backend's names.

    Raises
    ------
    ValueError
        On non-positive ``chains``/``draws``/``cores`` or a negative ``warmup``.
    """
    import pymc as pm

    if chains < 1 or draws < 1 or warmup < 0:
        raise ValueError(f"need chains >= 1, draws >= 1, warmup >= 0; got {chains}, {draws}, {warmup}")
    cores = min(chains, available_cores()) if cores is None else int(cores)
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    counter = ProgressCounter(progress, chains * (warmup + draws), every=max(1, chains * 10))
    start = time.perf_counter()
    model = build_pymc_model(data)
    initvals = initial_values(data, chains, init_radius, seed=seed)
    with model, _quiet_pymc():
        idata = pm.sample(
            draws=draws,
            tune=warmup,
            chains=chains,
            cores=cores,
            mp_ctx="forkserver",
            random_seed=seed,
            initvals=initvals,
            init="adapt_diag",
            target_accept=target_accept,
            max_treedepth=max_tree_depth,
            progressbar=False,
            compute_convergence_checks=False,
            return_inferencedata=True,
            idata_kwargs={"log_likelihood": False},
            callback=(lambda trace, draw: counter.add(1)) if counter.enabled else None,
        )
    wall = time.perf_counter() - start
    counter.finish()
    # eta_<p>, eta_<p>_decentered and the sites are kept; other coordinates are only the sampler's
    priors = data.priors
    coordinates = {priors.eta_site(p) for p in priors.random_effects} | {s.sampled_site for s in priors.sites}
    kept = {f"eta_{p}" for p in priors.random_effects} | {f"eta_{p}_decentered" for p in priors.random_effects}
    kept |= {s.site for s in priors.sites}
    dropped = coordinates - kept
    samples = {
        name: np.asarray(idata.posterior[name].values) for name in idata.posterior.data_vars if name not in dropped
    }
    stats = {out: np.asarray(idata.sample_stats[name].values, dtype) for name, (out, dtype) in _STATS.items()}
    info = {
        "sampler": f"pymc {pm.__version__} NUTS",
        "cores": cores,
        "target_accept": target_accept,
        "max_tree_depth": max_tree_depth,
        "init": f"prior medians + uniform jitter (radius {init_radius}, unconstrained); adapt_diag mass matrix",
    }
    return SamplerOutput(samples=samples, sample_stats=stats, wall_time_s=wall, info=info)
