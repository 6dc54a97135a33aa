"""One shard of a distributed closed-loop evaluation: what a worker receives and what it runs.

A shard is a range of consecutive patients (:func:`shard_bounds`). Its :class:`ShardTask` carries
only names, specifications, seeds and numpy arrays (the model's registered name and description,
the patients' arrays, the policy spec strings, the safety spec, the scenario); :func:`run_shard`
rebuilds the model from the registry and the policies from their specs on the worker and runs
the closed loop one process would run for those patients. The client side (sharding, sending,
merging) is :mod:`medsim.policies.distribute`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsim.policies.dask_workers import DistributionError, WorkerOptions, configure_worker
from medsim.policies.result import RolloutResult
from medsim.policies.scenarios import Scenario
from medsim.policies.spec import SafetySpec
from medsim.population import PosteriorDraws, VirtualPopulation

# Patients per shard for large populations: the rollout's default chunk_size, so shards are chunks.
DEFAULT_SHARD = 8192

# Fewest patients per shard (the rollout's smallest compiled chunk width).
MIN_SHARD = 8

# What a shard sends back: per-interaction RolloutResults, or per-patient streaming sums.
STATISTICS = ("rows", "stream")


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


def draws_data(draws: PosteriorDraws) -> dict[str, Any]:
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


def population_data(pop: VirtualPopulation) -> dict[str, Any]:
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
    statistics: str = "rows"  # or "stream": per-patient StreamingSums only (streams_on_cluster)

    def __post_init__(self) -> None:
        if self.statistics not in STATISTICS:
            raise DistributionError(f"shard statistics: expected one of {STATISTICS}, got {self.statistics!r}")


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


def run_shard(
    task: ShardTask, draws: Mapping[str, Any] | None = None
) -> list[RolloutResult] | list[dict[str, np.ndarray]]:
    """Run every policy on one shard (in a worker); results in the order of ``task.policies``.

    ``draws`` are the posterior draws' arrays (:func:`draws_data`; scattered once to every
    worker), or ``None`` for a population without draws. With ``task.statistics == "stream"``
    each policy's result is its shard's :class:`~medsim.policies.streaming.StreamingSums` as a
    dict of numpy arrays (field name -> array).
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
    if task.statistics == "stream":
        return [_shard_sums(task, population, policy) for policy in policies]
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


def _shard_sums(task: ShardTask, population: VirtualPopulation, policy) -> dict[str, np.ndarray]:
    """One policy's streaming sums on a shard: the closed loop ``run_policies`` runs (bounds, target,
    horizon and scenario of ``task.spec``), reduced as it goes."""
    from medsim.policies.evaluate import resolve_scenario
    from medsim.policies.rollout_device import streaming_rollout

    model = population.model
    sums = streaming_rollout(
        model,
        population,
        policy,
        bounds=task.spec.bounds,
        horizon=task.spec.horizon,
        dt=task.dt,
        seed=task.seed,
        scenario=resolve_scenario(model, task.scenario, task.seed),
        target=task.spec.target,
        scheme=task.scheme,
        max_interactions=task.max_interactions,
        chunk_size=task.chunk_size,
        on_failure=task.on_failure,
        first_patient=task.first_patient,
        pad_to=task.pad_to,
    )
    return {name: np.asarray(value) for name, value in sums._asdict().items()}
