"""Closed-loop throughput: the compiled option loop against the open-loop simulator, in one run.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/closed_loop.py [--quick | --sizes N ... | --dask-sizes N ...]``
(``--quick`` < 3 min; ``--sizes 1000000`` measures only that closed-loop point and updates it in the
results file; ``--dask-sizes 1000000`` likewise only the Dask scaling point, below).
Writes ``benchmarks/results/closed_loop.json``.

The workload is what ``medsim risk --prior glucose_insulin --policy pid:every=5`` simulates: virtual
patients drawn from the glucose-insulin model's priors (200 prior draws), announced meals, a PID
pump controller on CGM-like measurements every 5 minutes, 24 h at 1-minute sub-steps, two bounds
(70 and 180 mg/dL) with Brownian-bridge statistics, and the per-patient risk statistics reduced
as the loop goes (:func:`medsim.policies.rollout_device.streaming_rollout`). The open-loop reference is
:meth:`medsim.simulate.Simulator.advance` over the same 24 h for the same patients with the same
bounds at their basal rate (no meals: uncontrolled meals drive some prior patients' glucose past the
model's physical range, which the simulator refuses). A prior patient the open-loop simulator
refuses (a state outside the model's physical range: at 10^5 patients a few uncontrolled ones exist)
is dropped during the warm-up, named in the log and listed under ``dropped_patients`` (the others
keep their index and noise); the throughput counts the patients simulated. The closed loop runs
with ``on_failure="count"`` (``medsim risk --on-failure count``): a prior patient it cannot keep in
the model's physical range (at 10^6 patients, patient 315450 passes 10,000 mg/dL under PID) is
frozen where it failed and counted, not the end of the run; each point records how many
(``failed_patients``, with the first indices, times and reasons) and the load average at its end.
Figures are patient-days per second of wall time
(best of the repeats after a warm-up; the warm-up's extra time is the compilation) and per
second of process CPU time (all threads: less distorted by other jobs on a shared machine).
Peak memory per ``n`` comes from a fresh process per point (``ru_maxrss``; ``tracemalloc`` for
the Python-side share) in the full run.

Dask scaling (``dask_stream``): the same streaming closed loop (the policy from its spec string
``pid:every=5``, as ``medsim risk`` builds it) through
:func:`medsim.policies.distribute.streams_on_cluster` on an embedded local cluster of spawned worker
processes with one thread each (``WorkerOptions(threads=1)``): one worker, then two, and this
process alone for reference. Each is timed after a warm-up on the first chunks (workers started,
programs compiled or loaded from the shared persistent cache); the sums of every run must equal
the one-process sums exactly. Workers' CPU time is read on the workers; the load average (other
jobs on a shared machine) is recorded before and after each run.

Environment set here, at the entry point only: one JAX CPU device per core
(``jax_num_cpu_devices``); the closed loop runs one chunk per device at a time, the open loop
splits each chunk over the devices. (Dask's spawned workers import this file too, as
``__mp_main__``: they keep JAX's default of one device, as ``medsim risk --workers`` runs them.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

CORES = os.cpu_count() or 1
import jax  # noqa: E402

if __name__ != "__mp_main__":  # not in Dask's spawned workers (see the docstring)
    jax.config.update("jax_num_cpu_devices", CORES)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import medsim.models as registry  # noqa: E402
from medsim.policies.builtin import PID  # noqa: E402
from medsim.policies.result import FAILURE_REASONS  # noqa: E402
from medsim.policies.rollout import rollout  # noqa: E402
from medsim.policies.rollout_device import streaming_rollout  # noqa: E402
from medsim.policies.scenarios import MealScenario  # noqa: E402
from medsim.population import PosteriorDraws, sample_population  # noqa: E402
from medsim.population.streams import Stream, patient_keys  # noqa: E402
from medsim.simulate import Bound, Simulator  # noqa: E402
from medsim.simulate.checks import SimulationError  # noqa: E402

MODEL = registry.get("glucose_insulin")
BOUNDS = (Bound("glucose_mg_dL", 70.0, "lower"), Bound("glucose_mg_dL", 180.0, "upper"))
DAY = 1440.0
SEED = 1
POLICY = PID(every=5.0)
POLICY_SPEC = "pid:every=5"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _population(n: int):
    return sample_population(PosteriorDraws.from_prior(MODEL, 200, seed=0), n, seed=SEED)


def _timed(fn, repeats: int, work: float, warm_up=None) -> dict:
    """Wall and CPU throughput (best repeat) and the first call's extra time (compilation);
    ``warm_up`` (default ``fn``) is the first call."""
    w, c = time.perf_counter(), time.process_time()
    (warm_up or fn)()
    first = time.perf_counter() - w
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    best = min(walls)
    return {
        "patient_days_per_s": work / best,
        "patient_days_per_cpu_s": work / max(min(cpus), 1e-9),
        "wall_s": best,
        "first_call_s": first,
        "compile_s_estimate": max(first - best, 0.0),
    }


def _without_refused(run, state: dict) -> None:
    """``run()`` until it succeeds, dropping each patient the simulator refuses (a state outside the
    model's physical range: an uncontrolled prior patient; the error names it) from ``state["index"]``
    (the others keep their index, so their noise streams are unchanged)."""
    while True:
        try:
            run()
            return
        except SimulationError as err:
            index = state["index"]
            _log(f"  dropped patient {err.patient} of {index.size}: {type(err).__name__} ({err.name})")
            state["index"] = np.delete(index, np.searchsorted(index, err.patient))
            state["dropped"].append(int(err.patient))


def _kept(out: dict, state: dict, n: int) -> dict:
    """Throughput of the patients simulated (``n`` less the dropped ones), the dropped listed."""
    for key in ("patient_days_per_s", "patient_days_per_cpu_s"):
        out[key] *= state["index"].size / n
    out["dropped_patients"] = state["dropped"]
    return out


def closed_loop(pop, repeats: int) -> dict:
    scenario = MealScenario(seed=SEED)

    def run():
        sums = streaming_rollout(
            MODEL, pop, POLICY, bounds=BOUNDS, horizon=DAY, dt=1.0, seed=SEED, scenario=scenario, on_failure="count"
        )
        run.interactions = float(np.mean(sums.interactions))
        run.sums = sums

    out = _timed(run, repeats, pop.n_patients * DAY / 1440.0)
    out["interactions_per_patient"] = run.interactions
    failed = np.flatnonzero(np.asarray(run.sums.failure_reason) > 0)
    out["failed_patients"] = int(failed.size)
    out["failed_first"] = [
        {
            "patient": int(i),
            "time_min": float(run.sums.failed_time[i]),
            "reason": FAILURE_REASONS[int(run.sums.failure_reason[i])],
        }
        for i in failed[:10]
    ]
    return out


def open_loop(pop, repeats: int) -> dict:
    sim = Simulator(MODEL, dt=1.0, bounds=BOUNDS)
    n = pop.n_patients
    state = {"index": np.arange(n), "dropped": []}

    def arrays():
        p, index = pop.take(state["index"]), state["index"]
        theta = {k: jnp.asarray(v, jnp.float32) for k, v in p.simulation_parameters().items()}
        x = {k: jnp.asarray(v, jnp.float32) for k, v in p.initial_state().items()}
        keys = patient_keys(SEED, Stream.PROCESS, index, 0)
        return x, theta, keys, {1: theta["BASAL"] / 60.0}, index

    def run():
        if getattr(run, "index", None) is not state["index"]:
            run.index, run.args = state["index"], arrays()
        x, theta, keys, rates, index = run.args
        res = sim.advance(x, theta, 0.0, DAY, key=keys, rates=rates, patients=index)
        jax.block_until_ready(res.stats.log_survival)

    out = _timed(run, repeats, n * DAY / 1440.0, warm_up=lambda: _without_refused(run, state))
    return _kept(out, state, n)


def host_loop(pop) -> dict:
    """The Python option loop (one compiled ``advance`` per interaction) on the same workload,
    every interaction recorded (what ``medsim risk`` ran before the compiled loop)."""
    scenario = MealScenario(seed=SEED)

    def run():
        rollout(
            MODEL, pop, POLICY, bounds=BOUNDS, horizon=DAY, dt=1.0, seed=SEED, scenario=scenario,
            n_paths_saved=0, loop="host",
        )  # fmt: skip

    w, c = time.perf_counter(), time.process_time()
    run()
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    work = pop.n_patients * DAY / 1440.0
    return {"patient_days_per_s": work / wall, "patient_days_per_cpu_s": work / cpu, "wall_s": wall, "note": "one call"}


def one_point(n: int, repeats: int) -> dict:
    """Closed loop at ``n`` patients in this process, with its peak memory."""
    tracemalloc.start()
    pop = _population(n)
    try:
        out = closed_loop(pop, repeats)
    except SimulationError as err:  # recorded; the other points still count
        return {"failed": str(err)}
    out["tracemalloc_peak_MiB"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out["peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["load_average_at_end"] = os.getloadavg()
    return out


def dask_stream(n: int) -> dict:
    """Streaming closed loop of ``n`` patients: this process, then ``streams_on_cluster`` on one and
    on two spawned workers of one thread each (one timed run each, after a warm-up)."""
    from medsim.policies.distribute import WorkerOptions, dask_client, streams_on_cluster
    from medsim.policies.evaluate import policy_context
    from medsim.policies.loading import build_policies
    from medsim.policies.rollout_device import streaming_width
    from medsim.policies.spec import SafetySpec

    draws = PosteriorDraws.from_prior(MODEL, 200, seed=0)
    pop = sample_population(draws, n, seed=SEED)
    spec = SafetySpec(bounds=BOUNDS, horizon=DAY, time_unit=MODEL.time_unit)
    scenario = MealScenario(seed=SEED)
    (policy,) = build_policies([POLICY_SPEC], context=policy_context(MODEL, spec, draws=draws, dt=1.0))
    width = streaming_width(n)
    # The warm-up: two of this process's chunks (one shard per worker, each compiled at `width`).
    warm = pop.take(slice(0, min(n, 2 * width)))
    work = n * DAY / 1440.0
    out: dict = {"n": n, "chunk_width": width, "shards": -(-n // width) if n > width else "one per worker"}

    def one_process(population):
        return streaming_rollout(
            MODEL, population, policy, bounds=spec.bounds, horizon=DAY, dt=1.0, seed=SEED, scenario=scenario,
            target=spec.target, on_failure="count",
        )  # fmt: skip

    _log(f"dask_stream, n = {n}: one process ({len(jax.local_devices())} devices), warm-up")
    one_process(warm)
    load, w, c = os.getloadavg(), time.perf_counter(), time.process_time()
    reference = one_process(pop)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    out["one_process"] = {
        "devices": len(jax.local_devices()), "wall_s": wall, "cpu_s": cpu, "patient_days_per_s": work / wall,
        "load_average_before": load, "load_average_after": os.getloadavg(),
    }  # fmt: skip
    _log(f"  {wall:.1f} s, {work / wall:.3g} patient-days/s, load {os.getloadavg()}")
    failed = np.asarray(reference.failure_reason) > 0
    out["failed_patients"] = int(failed.sum())
    for workers in (1, 2):
        _log(f"dask_stream, n = {n}: {workers} worker(s) x 1 thread, start-up and warm-up")
        w = time.perf_counter()
        with dask_client(workers=workers, options=WorkerOptions(threads=1)) as client:
            run = dict(dt=1.0, seed=SEED, scenario=scenario, scheme="milstein", max_interactions=None)
            run.update(options=WorkerOptions(threads=1), on_failure="count")
            streams_on_cluster(client, draws, warm, [POLICY_SPEC], spec, **run)
            warm_s = time.perf_counter() - w
            cpu0 = client.run(time.process_time)
            load, w = os.getloadavg(), time.perf_counter()
            (sums,) = streams_on_cluster(client, draws, pop, [POLICY_SPEC], spec, **run)
            wall = time.perf_counter() - w
            cpu1 = client.run(time.process_time)
        same = all(
            np.array_equal(a, b, equal_nan=np.asarray(a).dtype.kind == "f")
            for a, b in zip(sums, reference, strict=True)
        )
        out[f"workers_{workers}"] = {
            "wall_s": wall,
            "workers_cpu_s": sum(cpu1[k] - cpu0[k] for k in cpu1),
            "patient_days_per_s": work / wall,
            "start_up_and_warm_up_s": warm_s,
            "equal_to_one_process": same,
            "load_average_before": load,
            "load_average_after": os.getloadavg(),
        }
        _log(f"  {wall:.1f} s, {work / wall:.3g} patient-days/s, equal: {same}, load {os.getloadavg()}")
    out["speed_up_2_over_1_workers"] = out["workers_1"]["wall_s"] / out["workers_2"]["wall_s"]
    out["what"] = (
        "streams_on_cluster wall time (warm: workers started, programs compiled), 1 vs 2 spawned workers "
        "x 1 thread, and this process alone with one JAX CPU device per core"
    )
    return out


def _fresh_process(n: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "point.json"
        cmd = [sys.executable, __file__, "--point", str(n), "--repeats", str(repeats), "--out", str(path)]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", ".")})
        return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 3 min)")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="measure only these closed-loop sizes (fresh process each, no open or host loop) and update "
        "them in --out, keeping its other figures",
    )
    parser.add_argument(
        "--dask-sizes",
        type=int,
        nargs="+",
        help="Dask scaling of the streaming closed loop at these sizes; alone: measure only these and update "
        "the dask_stream figures in --out, keeping the others (default in a full run: 1000000; --quick: 20000)",
    )
    parser.add_argument("--point", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "closed_loop.json")
    args = parser.parse_args()
    if args.point:
        args.out.write_text(json.dumps(one_point(args.point, args.repeats)))
        return
    if args.sizes or (args.dask_sizes and not args.quick):
        _update_points(args.sizes or [], args.dask_sizes or [], args.out)
        return
    sizes = [4096, 16384] if args.quick else [10_000, 100_000, 1_000_000]
    closed, opened = {}, {}
    for n in sizes:
        _log(f"closed loop, n = {n}")
        closed[n] = one_point(n, 1) if args.quick else _fresh_process(n, 1 if n >= 1_000_000 else 2)
        if "failed" in closed[n]:
            _log(f"  closed loop failed: {closed[n]['failed']}")
            continue
        _log(f"  {closed[n]['patient_days_per_s']:.3g} patient-days/s, peak {closed[n]['peak_rss_MiB']:.0f} MiB")
        if args.quick or n <= 100_000:
            _log(f"open loop, n = {n}")
            try:
                opened[n] = open_loop(_population(n), 1 if args.quick else 2)
            except Exception as err:  # recorded; the closed-loop figures still count
                _log(f"  open loop failed: {err}")
                continue
            _log(f"  {opened[n]['patient_days_per_s']:.3g} patient-days/s")
    n_host = 256
    _log(f"host loop, n = {n_host}")
    host = host_loop(_population(n_host))
    dask_sizes = args.dask_sizes or ([20_000] if args.quick else [1_000_000])
    streamed = {str(n): dask_stream(n) for n in dask_sizes}
    common = max(n for n in opened if "failed" not in closed.get(n, {"failed": ""}))
    result = {
        "what": "closed-loop patient-days/s (PID every 5 min on CGM, announced meals, 24 h, dt = 1 min, "
        "two bounds with bridge statistics, streaming per-patient risk sums) vs the open-loop simulator",
        "quick": args.quick,
        "machine": {"cores": CORES, "platform": platform.platform(), "jax": jax.__version__},
        "closed_loop": {str(n): v for n, v in closed.items()},
        "open_loop": {str(n): v for n, v in opened.items()},
        "host_loop": {str(n_host): host},
        "closed_over_open": closed[common]["patient_days_per_s"] / opened[common]["patient_days_per_s"],
        "closed_over_open_cpu": closed[common]["patient_days_per_cpu_s"] / opened[common]["patient_days_per_cpu_s"],
        "closed_over_open_at_n": common,
        "dask_stream": streamed,
        "load_average_at_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    _log(f"closed/open = {result['closed_over_open']:.3f} (CPU {result['closed_over_open_cpu']:.3f}) -> {args.out}")


def _update_points(sizes: list[int], dask_sizes: list[int], out: Path) -> None:
    """Closed-loop points of ``sizes`` (a fresh process each) and Dask points of ``dask_sizes`` written
    into ``out``'s existing figures."""
    result = json.loads(out.read_text()) if out.exists() else {"closed_loop": {}}
    result.setdefault("closed_loop", {})
    for n in dask_sizes:
        result.setdefault("dask_stream", {})[str(n)] = dask_stream(n)
    for n in sizes:
        _log(f"closed loop, n = {n}")
        point = _fresh_process(n, 1 if n >= 1_000_000 else 2)
        result["closed_loop"][str(n)] = point
        if "failed" in point:
            _log(f"  closed loop failed: {point['failed']}")
            continue
        _log(
            f"  {point['patient_days_per_s']:.3g} patient-days/s, wall {point['wall_s']:.1f} s, peak "
            f"{point['peak_rss_MiB']:.0f} MiB, {point['failed_patients']} patients failed, "
            f"load {point['load_average_at_end']}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)


if __name__ == "__main__":
    main()
