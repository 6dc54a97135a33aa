"""NUTS (numpyro) on the hierarchical model: several chains, robust start, sampler statistics.

The sampler runs on the jitted potential of :func:`inference.hierarchical.potential_fn`
(unconstrained sites), so its start-up compiles the density once; draws are mapped back to the
constrained scale with :func:`inference.hierarchical.constrain`.

Chains run ``"parallel"`` (spread over the JAX devices), ``"sequential"`` (one after the other
in one compiled loop) or ``"vectorized"`` (chains batched in one loop). Parallel chains use as
many devices as divide the number of chains evenly and run the rest one after the other on each
device: 4 chains on 2 devices are 2 x 2, which on two cores was 15 % faster than 4 devices
sharing them (``docs/fitting.md``). ``"auto"`` (the default) picks parallel when there are at
least 2 devices, else sequential: vectorized chains advance in lock step, so every iteration
costs the longest of the chains' trajectories, and on the theophylline fit it used 3x the CPU
time of parallel chains. Parallel chains need host devices requested before JAX starts
(``jax_num_cpu_devices``, one per core; XLA CPU devices are threads): the CLI does that; the
library never changes global JAX configuration.

Initialisation: every chain starts at the prior medians of the population sites (the model's
literature values) and standardised random effects near 0, each jittered uniformly by
``init_radius`` on the unconstrained scale with a seeded generator, so chains start apart (R-hat
can detect non-convergence) but where the filter is well behaved. Mass matrix: dense by default
(the typical values, BSV SDs and random effects are correlated a posteriori; on the theophylline
fit a dense matrix needed 40 % fewer leapfrog steps than a diagonal one, see ``docs/fitting.md``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from inference.backends.progress import Progress, ProgressCounter
from inference.hierarchical import constrain, potential_fn
from inference.problem import FitData

ChainMethod = Literal["auto", "vectorized", "parallel", "sequential"]


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


def _sampler(data: FitData, counter: ProgressCounter, *, warmup: int, draws: int, settings: dict, batched: bool):
    """``run(init_params, keys) -> (unconstrained draws, statistics)``, pure and jittable.

    Built from numpyro's functional NUTS (``numpyro.infer.hmc.hmc``): ``init_kernel`` starts a
    chain and ``sample_kernel`` performs one iteration, adapting step size and mass matrix while
    the iteration count is below ``warmup`` (numpyro's windowed adaptation). Warmup and sampling
    run in one ``lax.scan`` loop, so a run traces and compiles the kernel once. With ``batched`` the
    kernels are vmapped over chains *inside* the loops (vmapping the loops instead makes JAX
    re-trace the whole filter several times in the scan batching rule: 3x slower to compile).
    """
    from numpyro.infer.hmc import hmc

    init_kernel, sample_kernel = hmc(potential_fn=potential_fn(data), algo="NUTS")

    def start(params, key):
        return init_kernel(params, num_warmup=warmup, rng_key=key, **settings)

    step = sample_kernel
    if batched:
        start, step = jax.vmap(start), jax.vmap(sample_kernel)

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
    depths = (min(warmup_tree_depth, max_tree_depth), max_tree_depth)
    settings = {"target_accept_prob": target_accept, "max_tree_depth": depths, "dense_mass": dense_mass}
    run = _sampler(data, counter, warmup=warmup, draws=draws, settings=settings, batched=chain_method == "vectorized")
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
    init = initial_unconstrained(data, chains, init_radius, seed=seed)  # leading axis: chain
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
        centre = site.to_unconstrained(site.median())
        values[site.site] = (centre + rng.uniform(-radius, radius, chains)).astype(np.float32)
    for p in data.priors.random_effects:
        # the sampled coordinate (whatever its centring weight) starts uniform in [-radius, radius],
        # like every other site on its unconstrained scale (numpyro's init_to_uniform). Scaling it
        # down to the coordinate's prior SD at the median omega started the chains so close
        # together that 2 of 3 theophylline fits then diverged in V's funnel (docs/fitting.md).
        values[data.priors.eta_site(p)] = rng.uniform(-radius, radius, (chains, data.n_subjects)).astype(np.float32)
    return values
