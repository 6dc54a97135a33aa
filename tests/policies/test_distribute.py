"""Dask: the same report from one process and from a 2-worker LocalCluster on the same seed; the
tasks carry names, specs, seeds and numpy arrays only."""

from __future__ import annotations

import io
import itertools
import json
import os
import pickle

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from medsim.models import get  # noqa: E402
from medsim.policies.distribute import (  # noqa: E402
    DistributionError,
    ShardTask,
    WorkerOptions,
    draws_data,
    population_data,
    shard_bounds,
)
from medsim.policies.evaluate import evaluate_policies  # noqa: E402
from medsim.policies.risk.codec import to_jsonable  # noqa: E402
from medsim.policies.spec_file import parse_spec  # noqa: E402
from medsim.population import PosteriorDraws, sample_population  # noqa: E402

MODEL = get("glucose_insulin")
SPEC = parse_spec("glucose_mg_dL>=70;horizon=3h;epsilon=0.05;rare=off", model=MODEL)
POLICIES = ["pid:every=60", "pid:every=30"]
N, SEED = 40, 3


@pytest.fixture(scope="module")
def draws():
    return PosteriorDraws.from_prior(MODEL, 20, seed=SEED)


@pytest.fixture(scope="module")
def cluster():
    # Two workers as threads of this process: the sharding, the task payloads, the worker-side
    # rebuild and the merge are the ones of a process cluster; the compiled kernels are shared, so
    # the test stays small (benchmarks/startup.py runs spawned worker processes).
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c,
        distributed.Client(c) as client,
    ):
        yield client


def _report_json(report) -> str:
    data = to_jsonable(report)
    data["provenance"].pop("created")  # the wall-clock time the report was made
    return json.dumps(data, sort_keys=True, default=str)


@pytest.mark.slow  # two rollouts' compilation (~15 s on 2 shared cores); the workers reuse the kernels
def test_two_workers_give_the_one_process_report(draws, cluster):
    one, one_results = evaluate_policies(draws, POLICIES, SPEC, n=N, seed=SEED, scenario="none")
    two, two_results = evaluate_policies(draws, POLICIES, SPEC, n=N, seed=SEED, scenario="none", client=cluster)
    assert shard_bounds(N, 2) == [(0, 24), (24, 40)]  # one shard per worker, each run 64 wide
    assert _report_json(one) == _report_json(two)
    for a, b in zip(one_results, two_results, strict=True):
        np.testing.assert_array_equal(a.log_survival, b.log_survival)
        np.testing.assert_array_equal(a.obs_min["glucose_mg_dL"], b.obs_min["glucose_mg_dL"])
        np.testing.assert_array_equal(a.path_time, b.path_time)
        assert a.provenance == b.provenance


def test_shards_cover_the_patients_in_order():
    for n, workers in ((1, 1), (40, 2), (5000, 2), (100_000, 3), (8193, 8)):
        bounds = shard_bounds(n, workers)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    # Large populations are cut into the rollout's own chunks; small ones into one shard per worker.
    assert {b - a for a, b in shard_bounds(100_000, 3)[:-1]} == {8192}
    assert shard_bounds(5000, 2) == [(0, 2504), (2504, 5000)]
    with pytest.raises(DistributionError, match="n >= 1"):
        shard_bounds(0, 2)


def _task_fields(pop) -> dict:
    return dict(
        model=MODEL.name,
        model_description="{}",
        population=population_data(pop.take(slice(0, 8))),
        first_patient=0,
        chunk_size=8,
        pad_to=16,
        policies=tuple(POLICIES),
        spec=SPEC,
        dt=1.0,
        seed=SEED,
        scenario="auto",
        support=None,
        scheme="milstein",
        max_interactions=None,
        max_memory=None,
        options=WorkerOptions(threads=1),
    )


def test_tasks_carry_no_code_and_no_model_objects(draws):
    pop = sample_population(draws, 16, seed=SEED)
    task = ShardTask(**_task_fields(pop))
    with pytest.raises(DistributionError, match="statistics: expected one of"):
        ShardTask(**_task_fields(pop), statistics="all")
    found: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            found.add(f"{module}.{name}")
            return super().find_class(module, name)

    Recorder(io.BytesIO(pickle.dumps((task, draws_data(draws))))).load()
    # Only numpy arrays, builtins and medsim's plain specification types: no jax, no model class,
    # no policy object, no function.
    assert not any("jax" in c or ".models." in c or ".builtin." in c or "function" in c for c in found), found
    assert {c.split(".")[0] for c in found} <= {"numpy", "builtins", "policies", "medsim", "copyreg", "_codecs"}, found


def test_unregistered_models_and_bad_options_are_refused(draws, cluster):
    with pytest.raises(DistributionError, match="memory fraction"):
        WorkerOptions(memory_fraction=1.5)
    pop = sample_population(draws, 8, seed=SEED)
    renamed = type(MODEL)()
    object.__setattr__(renamed, "name", "my_glucose")  # a model the workers' registry does not know
    pop = type(pop)(**{**pop.__dict__, "model": renamed})
    with pytest.raises(DistributionError, match="'my_glucose' is not registered"):
        evaluate_policies(None, ["pid:every=60"], SPEC, n=8, seed=SEED, population=pop, client=cluster)


def test_cli_takes_a_local_cluster_or_a_scheduler_not_both(tmp_path):
    from typer.testing import CliRunner

    from medsim.cli import app

    args = ["risk", "--prior", "glucose_insulin", "--policy", "pid:every=60", "--n", "8", "--out", str(tmp_path)]
    args += ["--spec", "glucose_mg_dL>=70;horizon=3h", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2
    assert "not both" in done.output


def test_worker_environment_carries_threads_memory_and_the_compile_cache(tmp_path):
    env = WorkerOptions(threads=2, memory_fraction=0.45, compile_cache=str(tmp_path)).environ()
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "2"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.45" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    # Read by JAX when the worker starts; XLA flags untouched (they are part of the cache key).
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path) and env["JAX_ENABLE_COMPILATION_CACHE"] == "true"
    assert "XLA_FLAGS" not in env
    off = WorkerOptions(compile_cache="off").environ()
    assert off["JAX_ENABLE_COMPILATION_CACHE"] == "false" and off["MEDSIM_COMPILE_CACHE"] == "off"


def test_workers_run_the_loop_the_whole_population_asks_for(draws, cluster, monkeypatch):
    # Workers used to get no loop and chose "auto" for their own shard: from 30 patients on, "auto"
    # compiles the loop for these 40 patients in one process, but not for a worker's 24 or 16.
    import medsim.policies.evaluate as evaluate
    import medsim.policies.rollout_device as rollout_device
    from medsim.policies.distribute import rollouts_on_cluster

    asked: list[str] = []

    class Asked(Exception):
        pass

    def recording(*args, loop="auto", **kwargs):
        asked.append(loop)
        raise Asked(loop)  # stop here: the loop asked for is what this test checks, nothing to compile

    import medsim.policies.distribute as distribute

    sent: list[tuple[str, ...]] = []

    def shard_task(**fields):
        sent.append(tuple(fields["loops"]))
        return ShardTask(**fields)

    monkeypatch.setattr(evaluate, "run_policies", recording)
    monkeypatch.setattr(distribute, "ShardTask", shard_task)
    monkeypatch.setattr(rollout_device, "AUTO_MIN_PATIENTS", 30)
    with pytest.raises(Asked, match="device"):
        evaluate_policies(draws, POLICIES[:1], SPEC, n=N, seed=SEED, scenario="none", client=cluster)
    assert sent == [("device",), ("device",)]  # every shard is told the whole population's loop
    # ... and a worker runs the loop it is told. The first error cancels the shards that have not
    # started yet, so only the worker(s) that started before it are recorded.
    assert asked and set(asked) == {"device"}
    pop = sample_population(draws, 8, seed=SEED)
    with pytest.raises(DistributionError, match="one per policy"):
        options = dict(dt=1.0, seed=SEED, scenario=None, support=None, scheme="milstein")
        rollouts_on_cluster(
            cluster, draws, pop, POLICIES, SPEC, **options, max_interactions=None, max_memory=None, loops=["host"]
        )


@pytest.fixture(scope="module")
def streamed(draws):
    """A population of 200 with one patient the simulator refuses (patient 150, in the last shard),
    and its streaming sums in this process: the reference the shards must reproduce."""
    from dataclasses import replace

    from medsim.policies.evaluate import resolve_scenario
    from medsim.policies.loading import build_policies
    from medsim.policies.protocol import PolicyContext
    from medsim.policies.rollout_device import streaming_rollout

    pop = sample_population(draws, STREAM_N, seed=SEED)
    gut = np.zeros(STREAM_N)
    gut[STREAM_BAD] = 1e6  # a meal no controller keeps in the model's physical range
    pop = replace(pop, params={**pop.params, "initial_gut2": gut})
    context = PolicyContext(model=MODEL, bounds=SPEC.bounds, draws=draws, dt=1.0, scheme="milstein")
    (policy,) = build_policies(STREAM_POLICY, context=context)
    run = dict(bounds=SPEC.bounds, horizon=SPEC.horizon, dt=1.0, seed=SEED, target=SPEC.target, on_failure="count")
    run["scenario"] = resolve_scenario(MODEL, "none", SEED)  # what the workers resolve "none" to
    one = streaming_rollout(MODEL, pop, policy, **run)
    return pop, policy, run, one


STREAM_N, STREAM_BAD, STREAM_POLICY = 200, 150, ("pid:every=30",)


def assert_same_sums(got, want):
    for name, a, b in zip(want._fields, got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert np.array_equal(a, b, equal_nan=True), name  # bit for bit: the same compiled programs


@pytest.mark.slow  # the streaming loop's compilation (~12 s on 2 shared cores), shared with the next test
def test_streaming_shards_give_the_one_process_sums(draws, cluster, streamed):
    from medsim.policies.distribute import streams_on_cluster

    pop, _, _, one = streamed
    assert one.failure_reason[STREAM_BAD] > 0 and (np.flatnonzero(one.failure_reason) == STREAM_BAD).all()
    options = dict(dt=1.0, seed=SEED, scenario="none", scheme="milstein", max_interactions=None, on_failure="count")
    done = []
    # one shard per worker (104 + 96 patients), then three uneven shards (72 + 72 + 56) on the two workers
    for shard in (None, 72):
        (sums,) = streams_on_cluster(
            cluster, draws, pop, STREAM_POLICY, SPEC, **options, shard=shard, progress=lambda d, t: done.append(d)
        )
        assert_same_sums(sums, one)
    assert done[-1] == 1.0
    with pytest.raises(DistributionError, match="spec strings"):
        streams_on_cluster(cluster, draws, pop, [object()], SPEC, **options)


@pytest.mark.slow  # the streaming loop's compilation, unless the previous test compiled it
def test_a_shard_is_its_slice_of_the_whole_population(streamed):
    import jax

    from medsim.policies.rollout_device import streaming_rollout, streaming_width

    pop, policy, run, one = streamed
    width = streaming_width(STREAM_N)
    for a, b in ((72, 144), (144, STREAM_N)):  # the second holds the refused patient
        shard = streaming_rollout(MODEL, pop.take(slice(a, b)), policy, **run, first_patient=a, pad_to=width)
        assert_same_sums(shard, jax.tree_util.tree_map(lambda v, a=a, b=b: v[a:b], one))
    # without first_patient the shard's patients draw other patients' streams: other sums
    other = streaming_rollout(MODEL, pop.take(slice(72, 144)), policy, **run, pad_to=width)
    assert not np.array_equal(other.log_survival, one.log_survival[72:144])


def test_shard_arguments_of_the_streaming_loop_are_checked(draws):
    from medsim.policies.builtin import PID
    from medsim.policies.rollout_device import streaming_rollout

    pop = sample_population(draws, 8, seed=SEED)
    run = dict(bounds=SPEC.bounds, horizon=60.0, dt=1.0, seed=SEED)
    with pytest.raises(ValueError, match="first_patient must be >= 0, got -1"):
        streaming_rollout(MODEL, pop, PID(), **run, first_patient=-1)
    with pytest.raises(ValueError, match="pad_to must be >= 1"):
        streaming_rollout(MODEL, pop, PID(), **run, pad_to=0)


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs CPU affinity, 2 cores"
)
def test_local_workers_are_pinned_to_disjoint_cores():
    """``--worker-threads 1`` on two workers: each spawned worker runs on one core of its own, so
    XLA's CPU thread pool (which no environment variable limits) cannot spread over the other's."""
    from medsim.policies.distribute import WorkerOptions, dask_client

    with dask_client(workers=2, options=WorkerOptions(threads=1)) as client:
        cores = client.run(lambda: sorted(os.sched_getaffinity(0)))
        threads = client.run(
            lambda: {tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")}
        )
    assert sorted(len(c) for c in cores.values()) == [1, 1]
    assert len({c[0] for c in cores.values()}) == 2  # disjoint
    for addr, per_thread in threads.items():
        assert per_thread == {tuple(cores[addr])}  # every thread of the worker, not only the caller
