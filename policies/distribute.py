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
one a single process computes with the same seed. With ``statistics="stream"``
(:func:`streams_on_cluster`) a shard runs :func:`medsim.policies.rollout_device.streaming_rollout`
and sends back only its per-patient :class:`~medsim.policies.streaming.StreamingSums` (numpy
arrays, ``O(n J)``), never the per-interaction records. (Python policies that draw from the ``rng``
argument get one generator per chunk; above :data:`~medsim.policies.shards.DEFAULT_SHARD` patients shards are the chunks
of one process; for smaller populations such policies see other coin flips. Built-in policies use
per-patient streams and are unaffected.)

Workers are configured per process before JAX starts (:class:`WorkerOptions`: CPU threads, the
fraction of an accelerator's memory, the compilation cache folder). The embedded cluster
(:func:`dask_client`) starts its workers with ``spawn``, never ``fork`` (JAX is multithreaded);
both live in :mod:`medsim.policies.dask_workers` and are importable from here. See
``docs/scale.md`` for clusters (SLURM through dask-jobqueue, Kubernetes, any scheduler).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from medsim.policies.dask_workers import DistributionError, WorkerOptions, configure_worker, dask_client
from medsim.policies.paths import join_paths
from medsim.policies.result import RolloutResult
from medsim.policies.rollout_assemble import merge_all
from medsim.policies.scenarios import Scenario
from medsim.policies.shards import (
    MIN_SHARD,
    ShardTask,
    compiled_width,
    draws_data,
    population_data,
    run_shard,
    shard_bounds,
)
from medsim.policies.spec import SafetySpec
from medsim.policies.streaming import StreamingSums
from medsim.population import PosteriorDraws, VirtualPopulation

__all__ = [
    "DistributionError",
    "ShardTask",
    "WorkerOptions",
    "compiled_width",
    "configure_worker",
    "dask_client",
    "merge_shards",
    "rollouts_on_cluster",
    "run_shard",
    "shard_bounds",
    "streams_on_cluster",
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
    _check_shippable(population, policy_specs)
    loops = ("auto",) * len(policy_specs) if loops is None else tuple(loops)
    if len(loops) != len(policy_specs):
        raise DistributionError(f"loops: expected one per policy ({len(policy_specs)}), got {len(loops)}")
    bounds = shard_bounds(population.n_patients, _n_workers(client), shard=shard)
    # Every shard pads to the chunk width one process compiles for this population: all workers and
    # a one-process run share their compiled programs (through the persistent compilation cache).
    shards = _run_shards(
        client, draws, population, bounds, progress,
        policies=tuple(policy_specs), spec=spec, dt=float(dt), seed=int(seed), scenario=scenario,
        scheme=scheme, max_interactions=max_interactions, on_failure=on_failure, options=options or WorkerOptions(),
        chunk_size=bounds[0][1] - bounds[0][0], pad_to=compiled_width(population.n_patients),
        support=None if not support else {k: tuple(map(float, v)) for k, v in support.items()},
        max_memory=max_memory, loops=loops,
    )  # fmt: skip
    return merge_shards(shards, population)


def streams_on_cluster(
    client: Any,
    draws: PosteriorDraws | None,
    population: VirtualPopulation,
    policy_specs: Sequence[str],
    spec: SafetySpec,
    *,
    dt: float,
    seed: int,
    scenario: Scenario | str | None,
    scheme: str,
    max_interactions: int | None,
    progress: Callable[[float, float], None] | None = None,
    options: WorkerOptions | None = None,
    shard: int | None = None,
    on_failure: str = "stop",
) -> list[StreamingSums]:
    """Per policy, the whole population's streaming sums, computed in shards on ``client``'s workers.

    Each worker runs :func:`medsim.policies.rollout_device.streaming_rollout` on its shards
    (``statistics="stream"``) and sends back only the per-patient sums; the shards' sums are
    concatenated in patient order. The result equals, array for array, what this process computes
    for each policy ``p`` built from ``policy_specs``
    (:func:`medsim.policies.evaluate.policy_context` with ``draws``, ``dt`` and ``scheme``)::

        streaming_rollout(population.model, population, p, bounds=spec.bounds, horizon=spec.horizon,
                          dt=dt, seed=seed, scenario=resolve_scenario(model, scenario, seed),
                          target=spec.target, scheme=scheme, max_interactions=max_interactions,
                          on_failure=on_failure)

    i.e. the closed loop :func:`medsim.policies.evaluate.run_policies` runs, with its default
    measurement noise. The sums' ``J`` columns are ``tuple(spec.bounds)`` in order (the
    ``bounds`` of that run's :class:`~medsim.policies.result.RolloutResult`; no target or support
    bounds), so ``sums_events(sums, tuple(spec.bounds), spec, population.draw, p.name)``
    (:func:`medsim.policies.streaming.sums_events`) gives the policy's patient events.

    Shards are the one-process run's compiled chunks (:func:`~medsim.policies.rollout_device.streaming_width`
    on this process's devices: 65536 patients for large populations) or, for a population of at
    most one chunk, one shard per worker; ``shard`` sets another size. Every shard is compiled at
    the one-process width (a shard smaller than a chunk is padded to it) and draws from its
    patients' own streams (``first_patient``), so workers and a one-process run share their
    compiled programs and their numbers. ``progress(done, total)``
    gets the policies done (shards finished). ``on_failure`` as in
    :func:`~medsim.policies.rollout_device.streaming_rollout` (failed patients keep their global
    index).

    Raises
    ------
    DistributionError
        For a model that is not registered by name or policies given as objects rather than spec
        strings.
    ValueError
        On a worker, for a policy without an array step or a scenario with infusions (as
        :func:`~medsim.policies.rollout_device.streaming_rollout`).
    """
    from medsim.policies.rollout_device import STREAMING_CHUNK, streaming_width

    _check_shippable(population, policy_specs)
    n, workers = population.n_patients, _n_workers(client)
    width = streaming_width(n, STREAMING_CHUNK)
    if shard is None:  # the one-process chunks, or one shard per worker (a multiple of 8 patients)
        shard = width if n > width else max(MIN_SHARD, -(-n // (8 * workers)) * 8)
    bounds = shard_bounds(n, workers, shard=shard)
    shards = _run_shards(
        client, draws, population, bounds, progress,
        policies=tuple(policy_specs), spec=spec, dt=float(dt), seed=int(seed), scenario=scenario,
        scheme=scheme, max_interactions=max_interactions, on_failure=on_failure, options=options or WorkerOptions(),
        chunk_size=STREAMING_CHUNK, pad_to=width, support=None, max_memory=None, statistics="stream",
    )  # fmt: skip
    return [
        StreamingSums(*(np.concatenate([s[i][name] for s in shards]) for name in StreamingSums._fields))
        for i in range(len(policy_specs))
    ]


def _check_shippable(population: VirtualPopulation, policy_specs: Sequence[str]) -> None:
    """Refuse what workers cannot rebuild: an unregistered model, policies that are not spec strings."""
    import medsim.models as registry

    model = population.model
    if model.name not in registry.available():
        raise DistributionError(
            f"model {model.name!r} is not registered by name, so workers cannot rebuild it; run it in one process "
            "(no --workers/--scheduler) or register it on the workers (medsim.models.register)"
        )
    if not all(isinstance(p, str) for p in policy_specs):
        raise DistributionError("policies sent to workers must be spec strings such as 'pid:every=60'")


def _n_workers(client: Any) -> int:
    return max(len(client.scheduler_info().get("workers", {})), 1)


def _run_shards(
    client: Any,
    draws: PosteriorDraws | None,
    population: VirtualPopulation,
    bounds: Sequence[tuple[int, int]],
    progress: Callable[[float, float], None] | None,
    **fields: Any,
) -> list[list[Any]]:
    """:func:`run_shard` of each ``[start, stop)`` of ``bounds`` (a :class:`ShardTask` of ``fields``);
    the shards' results in patient order, ``progress(done, total)`` (policies) as shards finish."""
    from distributed import as_completed

    from medsim.simulate.cache import model_key

    model = population.model
    # hash=False: a key of its own per call. With content-hashed keys a second call with the same
    # draws reuses the first call's key, and the release of the first call's future can delete the
    # data under the second call's tasks ("lost dependencies").
    scattered = None if draws is None else client.scatter(draws_data(draws), broadcast=True, hash=False)
    description = model_key(model)[1]
    tasks = [
        ShardTask(
            model=model.name,
            model_description=description,
            population=population_data(population.take(slice(start, stop))),
            first_patient=start,
            **fields,
        )
        for start, stop in bounds
    ]
    # Sent to the workers as data (round-robin), not inside the task graph: a shard of 65536
    # patients is about 13 MB, past what Dask accepts in a graph without a warning.
    futures, sizes = [], {}
    for (start, stop), task in zip(bounds, client.scatter(tasks, hash=False), strict=True):
        futures.append(client.submit(run_shard, task, scattered, pure=False))
        sizes[futures[-1].key] = stop - start
    done = 0
    n_policies = float(len(fields["policies"]))
    for future in as_completed(futures):
        future.result()  # raises a worker's error here, naming it
        done += sizes[future.key]
        if progress is not None:
            progress(n_policies * done / population.n_patients, n_policies)
    return [f.result() for f in futures]
