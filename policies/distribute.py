"""Closed-loop evaluation on a Dask cluster: patients sharded over workers, results merged exactly.

``evaluate_policies(..., client=client)`` and ``medsim risk --workers N`` / ``--scheduler ADDRESS``
run here. The population is sampled once, by the caller; it is then cut into *shards* of
consecutive patients (the rollout's chunks for large populations, one per worker for small ones;
posterior draws travel with their patients, since a draw's patients are consecutive). Each worker
gets, per shard, only data and specifications:

* the model's registered name and its description (checked on the worker: an equal model),
* the posterior draws and the shard's patients as plain numpy arrays,
* the policy spec strings, the safety spec, the scenario (its name, or the scenario itself: a
  frozen dataclass of numbers), ``dt``, scheme and the seed.

No jitted function, model object or user object is pickled: the worker rebuilds the model from
the registry, the policies from their specs (:func:`medsim.policies.loading.parse_policy`; user code
named by a spec must be importable on the workers) and compiles its own kernels (or loads them
from the shared persistent compilation cache, :mod:`medsim.compile_cache`). It runs whichever
closed loop :func:`medsim.policies.evaluate.run_policies` runs, for its shard, with
``first_patient`` set so every patient keeps the random streams it has in one process.
Shard results come back in patient order and merge by concatenation
(:func:`medsim.policies.rollout_assemble.merge_all`), so the report equals, number for number, the
one a single process computes with the same seed. (Python policies that draw from the ``rng``
argument get one generator per chunk; above :data:`DEFAULT_SHARD` patients shards are the chunks
of one process; for smaller populations such policies see other coin flips. Built-in policies use
per-patient streams and are unaffected.)

Workers are configured per process before JAX starts (:class:`WorkerOptions`: CPU threads, the
fraction of an accelerator's memory, the compilation cache folder). The embedded cluster
(:func:`dask_client`) starts its workers with ``spawn``, never ``fork`` (JAX is multithreaded).
See ``docs/scale.md`` for clusters (SLURM through dask-jobqueue, Kubernetes, any scheduler).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medsim.policies.paths import join_paths
from medsim.policies.result import RolloutResult
from medsim.policies.rollout_assemble import merge_all
from medsim.policies.scenarios import Scenario
from medsim.policies.spec import SafetySpec
from medsim.population import PosteriorDraws, VirtualPopulation

# Patients per shard for large populations: the rollout's default chunk_size, so shards are chunks.
DEFAULT_SHARD = 8192

# Fewest patients per shard (the rollout's smallest compiled chunk width).
MIN_SHARD = 8


class DistributionError(ValueError):
    """The evaluation cannot be distributed as asked (names the model, option or worker)."""


@dataclass(frozen=True)
class WorkerOptions:
    """Per-worker JAX settings, applied in each worker process before JAX starts.

    Attributes
    ----------
    threads : int, optional
        CPU threads of each worker's BLAS / OpenMP pools (default: theirs). With several workers
        per machine, ``cores / workers`` avoids oversubscription.
    memory_fraction : float, optional
        Fraction of an accelerator's memory each worker's JAX may take (``0 < f <= 1``), e.g.
        ``0.45`` for two workers sharing one GPU; also turns JAX's preallocation off.
    compile_cache : str, optional
        Persistent compilation cache folder (or ``"off"``); default: the client's setting
        (:func:`medsim.compile_cache.cache_dir`), so workers on one file system share programs.
    """

    threads: int | None = None
    memory_fraction: float | None = None
    compile_cache: str | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise DistributionError(f"worker threads: expected an int >= 1, got {self.threads!r}")
        if self.memory_fraction is not None and not 0 < float(self.memory_fraction) <= 1:
            raise DistributionError(f"worker memory fraction: expected 0 < f <= 1, got {self.memory_fraction!r}")

    def environ(self) -> dict[str, str]:
        """Environment variables that carry these settings into a worker process."""
        from medsim.compile_cache import ENV, OFF, cache_dir, environ

        env: dict[str, str] = {}
        if self.threads is not None:
            # Thread pools of numpy's BLAS and OpenMP. XLA_FLAGS are left alone: they are part of
            # the compilation cache's key, and workers with other flags than the client would
            # compile every program again instead of loading it.
            t = str(int(self.threads))
            env.update({k: t for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
        if self.memory_fraction is not None:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{float(self.memory_fraction):g}"
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        folder = self.compile_cache if self.compile_cache is not None else cache_dir()
        if folder is not None and str(folder).strip().lower() in OFF:
            folder = None
        env[ENV] = "off" if folder is None else str(folder)
        env.update(environ(None if folder is None else Path(folder)))  # read by JAX when it starts
        return env


def configure_worker(options: WorkerOptions) -> None:
    """Apply ``options`` in this (worker) process: environment first, then the compile cache.

    Settings read when JAX starts (threads, memory) only take effect if JAX is not imported yet,
    which holds for workers started by :func:`dask_client`; the compile cache works either way.
    """
    env = options.environ()
    if "jax" not in sys.modules:
        os.environ.update(env)
    from medsim.compile_cache import ENV, enable

    enable(env=env if ENV in env else None)


def shard_bounds(n: int, workers: int, *, shard: int | None = None) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` patient ranges for ``workers`` workers.

    Above :data:`DEFAULT_SHARD` patients the shards are the rollout's own chunks of that many
    patients (what one process runs, chunk for chunk). Smaller populations are cut into one shard
    per worker (a multiple of 8 patients); each is padded to the width one process compiles for
    the whole population (:func:`compiled_width`), so it runs the same compiled programs.
    """
    if n < 1 or workers < 1:
        raise DistributionError(f"need n >= 1 patients and >= 1 workers, got n={n}, workers={workers}")
    if shard is None:
        per_worker = -(-n // workers)
        shard = DEFAULT_SHARD if n > DEFAULT_SHARD else max(MIN_SHARD, -(-per_worker // 8) * 8)
    return [(a, min(a + shard, n)) for a in range(0, n, shard)]


def compiled_width(n: int) -> int:
    """Patients per compiled rollout chunk of a population of ``n`` (as :func:`medsim.policies.rollout.rollout`
    chooses it with its default ``chunk_size``): a power of two, at least 8, at most
    :data:`DEFAULT_SHARD`."""
    return min(DEFAULT_SHARD, 1 << max(3, (n - 1).bit_length()))


def _draws_data(draws: PosteriorDraws) -> dict[str, Any]:
    return {
        "population": {k: np.asarray(v) for k, v in draws.population.items()},
        "omega": {k: np.asarray(v) for k, v in draws.omega.items()},
        "eta": {k: np.asarray(v) for k, v in draws.eta.items()},
        "residual": {k: np.asarray(v) for k, v in draws.residual.items()},
        "subject_ids": tuple(str(s) for s in draws.subject_ids),
        "covariates": {k: np.asarray(v) for k, v in draws.covariates.items()},
        "state": {k: np.asarray(v) for k, v in draws.state.items()},
        "state_cov": None if draws.state_cov is None else np.asarray(draws.state_cov),
        "state_time": None if draws.state_time is None else np.asarray(draws.state_time),
    }


def _population_data(pop: VirtualPopulation) -> dict[str, Any]:
    return {
        "draw": np.asarray(pop.draw),
        "subject": np.asarray(pop.subject).astype(str),
        "params": {k: np.asarray(v) for k, v in pop.params.items()},
        "covariates": {k: np.asarray(v) for k, v in pop.covariates.items()},
        "eta": {k: np.asarray(v) for k, v in pop.eta.items()},
        "residual": {k: np.asarray(v) for k, v in pop.residual.items()},
        "mode": pop.mode,
        "seed": int(pop.seed),
        "patients_per_draw": int(pop.patients_per_draw),
    }


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs for one shard: names, specs, seeds and numpy arrays only."""

    model: str
    model_description: str
    population: Mapping[str, Any]
    first_patient: int
    chunk_size: int
    pad_to: int
    policies: tuple[str, ...]
    spec: SafetySpec
    dt: float
    seed: int
    scenario: Scenario | str | None
    support: Mapping[str, tuple[float, float]] | None
    scheme: str
    max_interactions: int | None
    max_memory: int | None
    options: WorkerOptions
    loops: tuple[str, ...] = ()
    on_failure: str = "stop"  # patients that cannot be simulated (medsim.policies.failures)


def _registered_model(name: str, description: str):
    import medsim.models as registry
    from medsim.simulate.cache import model_key

    try:
        model = registry.get(name)
    except registry.UnknownModelError as err:
        raise DistributionError(f"worker: {err}") from None
    if model_key(model)[1] != description:
        raise DistributionError(
            f"worker: the registered model {name!r} differs from the client's (another medsim version or "
            "parameters); install the same medsim on every worker"
        )
    return model


def run_shard(task: ShardTask, draws: Mapping[str, Any] | None = None) -> list[RolloutResult]:
    """Run every policy on one shard (in a worker); results in the order of ``task.policies``.

    ``draws`` are the posterior draws' arrays (:func:`_draws_data`; scattered once to every
    worker), or ``None`` for a population without draws.
    """
    configure_worker(task.options)
    from medsim.policies.evaluate import run_policies
    from medsim.policies.loading import build_policies
    from medsim.policies.protocol import PolicyContext

    model = _registered_model(task.model, task.model_description)
    posterior = None if draws is None else PosteriorDraws(model=model, **draws)
    population = VirtualPopulation(model=model, **task.population)
    context = PolicyContext(model=model, bounds=task.spec.bounds, draws=posterior, dt=task.dt, scheme=task.scheme)
    policies = build_policies(task.policies, context=context)
    loops = task.loops or ("auto",) * len(policies)
    # One policy at a time, each in the loop the client chose for it (policies share their
    # random numbers through the seed and the patients' streams, not through one call).
    return [
        run_policies(
            population,
            [policy],
            task.spec,
            dt=task.dt,
            seed=task.seed,
            scenario=task.scenario,
            support=task.support,
            scheme=task.scheme,
            max_interactions=task.max_interactions,
            max_memory=task.max_memory,
            first_patient=task.first_patient,
            chunk_size=task.chunk_size,
            pad_to=task.pad_to,
            loop=loop,
            on_failure=task.on_failure,
        )[0]
        for policy, loop in zip(policies, loops, strict=True)
    ]


def merge_shards(shards: Sequence[Sequence[RolloutResult]], population: VirtualPopulation) -> list[RolloutResult]:
    """Per policy, the shards' results (in patient order) merged into the whole population's."""
    merged = []
    for i in range(len(shards[0])):
        parts = [s[i] for s in shards]
        result = merge_all(list(parts))
        path_time, path = join_paths(list(parts))
        provenance = {**dict(result.provenance), "population": dict(population.provenance)}
        merged.append(replace(result, path_time=path_time, path=path, provenance=provenance))
    return merged


def rollouts_on_cluster(
    client: Any,
    draws: PosteriorDraws | None,
    population: VirtualPopulation,
    policy_specs: Sequence[str],
    spec: SafetySpec,
    *,
    dt: float,
    seed: int,
    scenario: Scenario | str | None,
    support: Mapping[str, tuple[float, float]] | None,
    scheme: str,
    max_interactions: int | None,
    max_memory: int | None,
    progress: Callable[[float, float], None] | None = None,
    options: WorkerOptions | None = None,
    shard: int | None = None,
    loops: Sequence[str] | None = None,
    on_failure: str = "stop",
) -> list[RolloutResult]:
    """:func:`medsim.policies.evaluate.run_policies` of ``population`` sharded over ``client``'s workers.

    ``loops`` names the loop (``"device"`` or ``"host"``, as
    :func:`medsim.policies.rollout_device.choose_loop` decides it for the whole population) each
    policy runs in on every worker; ``None``: each worker's ``"auto"`` for its shard. Every worker
    treats patients that cannot be simulated as ``on_failure`` says (failed patients keep their
    global index when the shards are merged).

    Raises
    ------
    DistributionError
        For a model that is not registered by name (e.g. a neural checkpoint) or policies given as
        objects rather than spec strings.
    """
    from distributed import as_completed

    from medsim.simulate.cache import model_key

    model = population.model
    import medsim.models as registry

    if model.name not in registry.available():
        raise DistributionError(
            f"model {model.name!r} is not registered by name, so workers cannot rebuild it; run it in one process "
            "(no --workers/--scheduler) or register it on the workers (medsim.models.register)"
        )
    if not all(isinstance(p, str) for p in policy_specs):
        raise DistributionError("policies sent to workers must be spec strings such as 'pid:every=60'")
    options = options or WorkerOptions()
    loops = ("auto",) * len(policy_specs) if loops is None else tuple(loops)
    if len(loops) != len(policy_specs):
        raise DistributionError(f"loops: expected one per policy ({len(policy_specs)}), got {len(loops)}")
    workers = max(len(client.scheduler_info().get("workers", {})), 1)
    bounds = shard_bounds(population.n_patients, workers, shard=shard)
    # Every shard pads to the chunk width one process compiles for this population: all workers and
    # a one-process run share their compiled programs (through the persistent compilation cache).
    chunk = bounds[0][1] - bounds[0][0]
    width = compiled_width(population.n_patients)
    draws_data = None if draws is None else client.scatter(_draws_data(draws), broadcast=True)
    description = model_key(model)[1]
    futures, sizes = [], {}
    for start, stop in bounds:
        task = ShardTask(
            model=model.name,
            model_description=description,
            population=_population_data(population.take(slice(start, stop))),
            first_patient=start,
            chunk_size=chunk,
            pad_to=width,
            policies=tuple(policy_specs),
            spec=spec,
            dt=float(dt),
            seed=int(seed),
            scenario=scenario,
            support=None if not support else {k: tuple(map(float, v)) for k, v in support.items()},
            scheme=scheme,
            max_interactions=max_interactions,
            max_memory=max_memory,
            options=options,
            loops=loops,
            on_failure=on_failure,
        )
        futures.append(client.submit(run_shard, task, draws_data, pure=False))
        sizes[futures[-1].key] = stop - start
    done = 0
    n_policies = float(len(policy_specs))
    for future in as_completed(futures):
        future.result()  # raises a worker's error here, naming it
        done += sizes[future.key]
        if progress is not None:
            progress(n_policies * done / population.n_patients, n_policies)
    return merge_shards([f.result() for f in futures], population)


@contextmanager
def dask_client(
    workers: int | None = None, scheduler: str | None = None, options: WorkerOptions | None = None
) -> Iterator[Any]:
    """A Dask client: an embedded local cluster of ``workers`` processes, or ``scheduler``'s.

    The local cluster starts its workers with ``spawn`` (one thread each, ``options`` in their
    environment before JAX starts) and is shut down on exit; an existing scheduler is only
    connected to.
    """
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise DistributionError(
            f"distributed evaluation needs dask[distributed] (pip install medsim[dask]): {err}"
        ) from None
    if (workers is None) == (scheduler is None):
        raise DistributionError("give either a number of workers or a scheduler address")
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    if int(workers) < 1:
        raise DistributionError(f"workers: expected an int >= 1, got {workers!r}")
    import logging

    options = options or WorkerOptions()
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        with (
            LocalCluster(
                n_workers=int(workers),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
                env=options.environ(),
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
