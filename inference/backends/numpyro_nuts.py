"""NUTS (numpyro) on the hierarchical model: several chains, robust start, sampler statistics.

The sampler runs on the jitted potential of :func:`medsim.inference.hierarchical.potential_fn`
(unconstrained sites), so its start-up compiles the density once; draws are mapped back to the
constrained scale with :func:`medsim.inference.hierarchical.constrain`.

Chains run ``"parallel"`` (spread over the JAX devices), ``"sequential"`` (one after the other
in one compiled loop) or ``"vectorized"`` (chains batched in one loop). Parallel chains use as
many devices as divide the number of chains evenly and run the rest one after the other on each
device: 4 chains on 2 devices are 2 x 2, which avoids two chains time-sharing one core
(measured in ``docs/fitting.md``). ``"auto"`` (the default) picks parallel when there are at
least 2 devices, else sequential: vectorized chains advance in lock step, so every iteration
costs the longest of the chains' trajectories (its CPU cost against parallel chains is in
``docs/fitting.md``). Parallel chains need host devices requested before JAX starts
(``jax_num_cpu_devices``, one per core; XLA CPU devices are threads): the CLI does that; the
library never changes global JAX configuration.

Initialisation: every chain starts at the prior medians of the population sites (the model's
literature values) and standardised random effects near 0, each jittered uniformly by
``init_radius`` on the unconstrained scale with a seeded generator, so chains start apart (R-hat
can detect non-convergence) but where the filter is well behaved.

Mass matrix ("metric"): dense by default (the typical values, BSV SDs and random effects are
correlated a posteriori, so a dense matrix needs fewer leapfrog steps than a diagonal one; see
``docs/fitting.md``). Two changes to numpyro's (Stan's) windowed
adaptation make its warmup cheaper without touching the kept draws:

- the first metric is not the identity but a diagonal of rough posterior variances from each
  subject's information about its random effects
  (:func:`medsim.inference.hierarchical.approximate_posterior_variances`), so the first 100 warmup
  iterations are not spent at the tree-depth cap;
- each re-estimated dense metric has its sample correlations shrunk toward 0 by the
  Schäfer–Strimmer intensity (:func:`shrink_correlations`): the first windows hold 25 and 50
  draws of a 44-dimensional posterior (theophylline), whose sample covariance is singular, and
  Stan's regularisation toward ``1e-3 I`` leaves the sampler crawling along the missing
  directions.

What each change saves on the theophylline fit is measured in ``docs/fitting.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import solve_triangular

from medsim.inference.backends.progress import Progress, ProgressCounter
from medsim.inference.hierarchical import approximate_posterior_variances, constrain, data_information, potential_fn
from medsim.inference.problem import FitData

ChainMethod = Literal["auto", "vectorized", "parallel", "sequential"]
InitialMetric = Literal["information", "identity"]


@dataclass(frozen=True)
class SamplerOutput:
    """Draws and sampler statistics grouped by chain.

    Attributes
    ----------
    samples : dict site -> (chains, draws, ...) array
        Every population site on its natural scale, ``eta_<p>_decentered`` and ``eta_<p>``.
    sample_stats : dict name -> (chains, draws) array
        ArviZ names: ``diverging``, ``energy``, ``n_steps``, ``tree_depth``, ``acceptance_rate``,
        ``step_size``, ``lp`` (log posterior density up to a constant).
    wall_time_s : float
        Sampling wall time (compilation included).
    info : dict
        Backend details for provenance (chain method, settings).
    """

    samples: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray]
    wall_time_s: float
    info: dict


def _sampler(
    data: FitData,
    counter: ProgressCounter,
    *,
    warmup: int,
    draws: int,
    settings: dict,
    batched: bool,
    shrink: bool = True,
):
    """``run(init_params, keys) -> (unconstrained draws, statistics)``, pure and jittable.

    Built from numpyro's functional NUTS (``numpyro.infer.hmc.hmc``): ``init_kernel`` starts a
    chain and ``sample_kernel`` performs one iteration, adapting step size and mass matrix while
    the iteration count is below ``warmup`` (numpyro's windowed adaptation). Warmup and sampling
    run in one ``lax.scan`` loop, so a run traces and compiles the kernel once. With ``batched`` the
    kernels are vmapped over chains *inside* the loops (vmapping the loops instead makes JAX
    re-trace the whole filter several times in the scan batching rule: 3x slower to compile).
    With ``shrink`` (and a dense metric) every metric the adaptation re-estimates goes through
    :func:`shrink_correlations` before the next iteration uses it.
    """
    from numpyro.infer.hmc import hmc

    init_kernel, sample_kernel = hmc(potential_fn=potential_fn(data), algo="NUTS")

    def start(params, key):
        return init_kernel(params, num_warmup=warmup, rng_key=key, **settings)

    step = sample_kernel
    if batched:
        start, step = jax.vmap(start), jax.vmap(sample_kernel)
    ends, sizes = metric_windows(warmup)
    if shrink and settings.get("dense_mass") is True and len(ends):
        step = _shrinking(step, ends, sizes, batched=batched)

    def iterate(state, _):
        state = step(state)
        if counter.enabled:
            jax.debug.callback(lambda i: counter.add(np.size(i)), state.i)
        stats = {
            "diverging": state.diverging,
            "energy": state.energy,
            "num_steps": state.num_steps,
            "accept_prob": state.accept_prob,
            "step_size": state.adapt_state.step_size,
            "potential_energy": state.potential_energy,
        }
        return state, (state.z, stats)

    def run(init_params, keys):
        # One loop over warmup and sampling (tracing the kernel once); warmup draws are dropped.
        _, (z, stats) = jax.lax.scan(iterate, start(init_params, keys), None, length=warmup + draws)
        z, stats = jax.tree.map(lambda a: a[warmup:], (z, stats))
        if batched:  # scan stacks iterations first: (draws, chains, ...) -> (chains, draws, ...)
            z, stats = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), (z, stats))
        return z, stats

    return run


def metric_windows(warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """Warmup iterations (0-based) after which numpyro re-estimates the mass matrix, and how many
    draws each estimate uses: the ends and lengths of the middle windows of its (Stan's) schedule
    (``warmup=1000``: after iterations 99, 149, 249, 449 and 949, from 25, 50, 100, 200, 500)."""
    from numpyro.infer.hmc_util import build_adaptation_schedule

    middle = build_adaptation_schedule(warmup)[1:-1] if warmup > 0 else []
    return np.array([w.end for w in middle], np.int32), np.array([w.end - w.start + 1 for w in middle], np.int32)


def shrink_correlations(inverse_mass: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Shrink a dense metric estimated from ``n`` draws toward its own diagonal.

    The correlations ``r_ij`` of ``inverse_mass`` are multiplied by ``1 - lambda`` with the
    Schäfer–Strimmer intensity for a diagonal target (2005, *Stat. Appl. Genet. Mol. Biol.*
    4:32), ``lambda = sum_{i != j} Var(r_ij) / sum_{i != j} r_ij^2`` clipped to [0, 1], using the
    normal-theory ``Var(r_ij) = (1 - r_ij^2)^2 / (n - 1)`` (the adaptation keeps running sums, not
    the draws). Variances are kept. Few draws, weak correlations -> strong shrinkage; on the
    theophylline fit ``lambda`` ran 0.2–0.45 after 25 draws and about 0.04 after 500.

    Returns
    -------
    inverse_mass, mass_matrix_sqrt, mass_matrix_sqrt_inv, lambda
        The first three as numpyro's adaptation state holds them (``mass_matrix_sqrt`` is the
        lower Cholesky factor of the mass matrix, ``mass_matrix_sqrt_inv`` its inverse).
    """
    d = inverse_mass.shape[-1]
    sd = jnp.sqrt(jnp.diagonal(inverse_mass))
    scale = jnp.outer(sd, sd)
    corr = inverse_mass / scale
    off = 1.0 - jnp.eye(d, dtype=inverse_mass.dtype)
    r2 = jnp.square(corr) * off
    noise = jnp.sum(jnp.square(1.0 - r2) * off) / (n - 1)
    lam = jnp.clip(noise / jnp.maximum(jnp.sum(r2), jnp.finfo(inverse_mass.dtype).tiny), 0.0, 1.0)
    shrunk = (corr * (1.0 - lam * off)) * scale
    # numpyro's convention (hmc_util.welford_covariance): the Cholesky factor of the inverse,
    # taken by flipping, and its inverse.
    sqrt_inv = jnp.swapaxes(jnp.linalg.cholesky(shrunk[::-1, ::-1])[::-1, ::-1], -2, -1)
    sqrt = solve_triangular(sqrt_inv, jnp.eye(d, dtype=inverse_mass.dtype), lower=True)
    return shrunk, sqrt, sqrt_inv, lam


def _shrinking(step, ends: np.ndarray, sizes: np.ndarray, *, batched: bool):
    """``step`` followed by :func:`shrink_correlations` of the metric after the iterations
    ``ends`` (estimated from ``sizes`` draws). All chains share the iteration count, so one
    ``lax.cond`` decides for the batch and the shrinking (a Cholesky factorisation) runs only at
    window ends."""
    ends_j, sizes_j = jnp.asarray(ends), jnp.asarray(sizes)

    def shrink(adapt, n):
        n = n.astype(adapt.step_size.dtype)
        inverse_mass, sqrt, sqrt_inv, _ = shrink_correlations(adapt.inverse_mass_matrix, n)
        return adapt._replace(inverse_mass_matrix=inverse_mass, mass_matrix_sqrt=sqrt, mass_matrix_sqrt_inv=sqrt_inv)

    if batched:
        shrink = jax.vmap(shrink, in_axes=(0, None))

    def wrapped(state):
        new = step(state)
        done = jnp.ravel(state.i)[0]  # the iteration just run
        hit = done == ends_j
        adapt = jax.lax.cond(jnp.any(hit), shrink, lambda a, n: a, new.adapt_state, jnp.sum(jnp.where(hit, sizes_j, 0)))
        return new._replace(adapt_state=adapt)

    return wrapped


def initial_inverse_mass(data: FitData, init_params: dict, information: dict | None, *, dense: bool) -> jax.Array:
    """numpyro's starting inverse mass matrix: the diagonal of
    :func:`~medsim.inference.hierarchical.approximate_posterior_variances` in the order numpyro ravels
    one chain's ``init_params`` (a matrix when ``dense``)."""
    variances = approximate_posterior_variances(data, data_information(data) if information is None else information)
    one_chain = {k: np.asarray(v)[0] for k, v in init_params.items()}
    shaped = {k: np.broadcast_to(np.asarray(variances[k], v.dtype), v.shape) for k, v in one_chain.items()}
    diagonal = ravel_pytree(shaped)[0]
    return jnp.diag(diagonal) if dense else diagonal


def run_nuts(
    data: FitData,
    *,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    seed: int = 0,
    chain_method: ChainMethod = "auto",
    target_accept: float = 0.9,
    max_tree_depth: int = 10,
    warmup_tree_depth: int = 7,
    dense_mass: bool = True,
    init_radius: float = 0.5,
    initial_metric: InitialMetric = "information",
    shrink_metric: bool = True,
    information: dict[str, np.ndarray] | None = None,
    progress: Progress | None = None,
) -> SamplerOutput:
    """Sample the posterior of the hierarchical model with NUTS.

    Parameters
    ----------
    data : FitData
    chains, draws, warmup : int
        Number of chains, kept draws per chain and warmup (adaptation) iterations per chain.
    seed : int
        Seeds the initial jitter (numpy) and the chains' JAX keys; same seed, same draws.
    chain_method : {"auto", "vectorized", "parallel", "sequential"}
        ``"auto"``: ``"parallel"`` when JAX has a device per chain, else ``"sequential"``.
    target_accept : float
        Target acceptance probability of the step-size adaptation.
    max_tree_depth : int
        Tree-depth cap after warmup (at most ``2^depth - 1`` leapfrog steps per iteration).
    warmup_tree_depth : int
        Tree-depth cap during warmup (at most ``max_tree_depth``). Before the mass matrix is
        adapted, trajectories with a tiny step size run to hundreds of steps without telling the
        adaptation much more; capping them at 127 steps (depth 7) cut the leapfrog steps of the
        theophylline warmup by a third without changing the adapted step sizes much
        (``docs/fitting.md``). Warmup draws are discarded, so the cap does not bias the
        posterior; the kept draws use ``max_tree_depth``.
    dense_mass : bool
        Adapt a dense (True) or diagonal inverse mass matrix.
    init_radius : float
        Half-width of the uniform jitter (unconstrained scale) around the starting point.
    initial_metric : {"information", "identity"}
        The warmup's first mass matrix: rough posterior variances from the data's information
        (module docstring), or numpyro's identity.
    shrink_metric : bool
        Shrink each re-estimated dense metric's correlations (:func:`shrink_correlations`).
    information : dict, optional
        :func:`~medsim.inference.hierarchical.data_information` of ``data`` if the caller computed it
        already (for the centring rule); else computed here when ``initial_metric`` needs it.
    progress : callable(done, total), optional
        Receives iterations completed, summed over chains.

    Returns
    -------
    SamplerOutput
    """
    if chains < 1 or draws < 1 or warmup < 0:
        raise ValueError(f"need chains >= 1, draws >= 1, warmup >= 0; got {chains}, {draws}, {warmup}")
    if chain_method not in ("auto", "vectorized", "parallel", "sequential"):
        raise ValueError(f"chain_method must be 'auto', 'vectorized', 'parallel' or 'sequential', got {chain_method!r}")
    devices = parallel_devices(chains)
    if chain_method == "auto":
        chain_method = "parallel" if devices > 1 else "sequential"
    if chain_method == "parallel" and devices < 2 <= chains:
        raise ValueError(
            f"chain_method='parallel' needs at least 2 JAX devices, found {jax.local_device_count()}; set "
            "jax.config.update('jax_num_cpu_devices', <cores>) before JAX starts (the CLI does this), "
            "or use 'sequential'"
        )
    counter = ProgressCounter(progress, chains * (warmup + draws), every=max(1, chains * 10))
    if warmup_tree_depth < 1 or max_tree_depth < 1:
        raise ValueError(f"tree depths must be >= 1; got {warmup_tree_depth}, {max_tree_depth}")
    if initial_metric not in ("information", "identity"):
        raise ValueError(f"initial_metric must be 'information' or 'identity', got {initial_metric!r}")
    depths = (min(warmup_tree_depth, max_tree_depth), max_tree_depth)
    settings = {"target_accept_prob": target_accept, "max_tree_depth": depths, "dense_mass": dense_mass}
    init = initial_unconstrained(data, chains, init_radius, seed=seed)  # leading axis: chain
    if initial_metric == "information":
        settings["inverse_mass_matrix"] = initial_inverse_mass(data, init, information, dense=dense_mass)
    batched = chain_method == "vectorized"
    run = _sampler(data, counter, warmup=warmup, draws=draws, settings=settings, batched=batched, shrink=shrink_metric)
    if chain_method == "vectorized":
        run_all = jax.jit(run)
    elif chain_method == "parallel":  # `devices` devices, chains // devices one after the other on each
        mapped = jax.pmap(lambda params, keys: jax.lax.map(lambda a: run(*a), (params, keys)))

        def run_all(params, keys):
            def split(a):
                return a.reshape(devices, chains // devices, *a.shape[1:])

            out = mapped(jax.tree.map(split, params), split(keys))
            return jax.tree.map(lambda a: a.reshape(chains, *a.shape[2:]), out)
    else:
        run_all = jax.jit(lambda params, keys: jax.lax.map(lambda a: run(*a), (params, keys)))
    keys = jax.random.split(jax.random.key(seed), chains)
    start = time.perf_counter()
    z, extra = jax.tree.map(np.asarray, run_all(init, keys))
    wall = time.perf_counter() - start
    counter.finish()
    n_steps = extra["num_steps"].astype(np.int64)
    stats = {
        "diverging": extra["diverging"].astype(bool),
        "energy": extra["energy"],
        "n_steps": n_steps,
        # numpyro's documented relation: tree_depth = floor(log2(num_steps)) + 1
        "tree_depth": np.floor(np.log2(np.maximum(n_steps, 1))).astype(np.int64) + 1,
        "acceptance_rate": extra["accept_prob"],
        "step_size": extra["step_size"],
        "lp": -extra["potential_energy"],
    }
    info = {
        "chain_method": chain_method,
        "devices": devices if chain_method == "parallel" else 1,
        "target_accept": target_accept,
        "max_tree_depth": max_tree_depth,
        "warmup_tree_depth": depths[0],
        "dense_mass": dense_mass,
        "initial_metric": initial_metric,
        "shrink_metric": bool(shrink_metric and dense_mass),
        "init": f"prior medians + uniform jitter (radius {init_radius}, unconstrained scale)",
    }
    return SamplerOutput(samples=constrain(data, z), sample_stats=stats, wall_time_s=wall, info=info)


def parallel_devices(chains: int) -> int:
    """Devices that parallel chains use: the largest divisor of ``chains`` that JAX has devices for."""
    available = min(chains, jax.local_device_count())
    return max(d for d in range(1, available + 1) if chains % d == 0)


def initial_unconstrained(data: FitData, chains: int, radius: float, *, seed: int) -> dict[str, np.ndarray]:
    """Per-chain starting points on the unconstrained scale (what ``MCMC.run`` takes as
    ``init_params``): prior medians plus uniform jitter; the random effects' sampled coordinates
    uniform in ``[-radius, radius]``. Leading axis = chain."""
    rng = np.random.default_rng([seed, 0x1A17])  # a stream of its own, separate from the sampler's key
    values: dict[str, np.ndarray] = {}
    for site in data.priors.sites:
        u = rng.uniform(-radius, radius, chains)
        if site.signed:  # the starting values of a log-scale jitter, median * exp(u), as before signing
            values[site.sampled_site] = (site.median() * np.exp(u)).astype(np.float32)
        else:
            values[site.site] = (site.to_unconstrained(site.median()) + u).astype(np.float32)
    for p in data.priors.random_effects:
        # the sampled coordinate (whatever its centring weight) starts uniform in [-radius, radius],
        # like every other site on its unconstrained scale (numpyro's init_to_uniform). Scaling it
        # down to the coordinate's prior SD at the median omega started the chains so close
        # together that 2 of 3 theophylline fits then diverged in V's funnel (docs/fitting.md).
        values[data.priors.eta_site(p)] = rng.uniform(-radius, radius, (chains, data.n_subjects)).astype(np.float32)
    return values
