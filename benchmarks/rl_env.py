"""Environment throughput: steps/s of the gymnasium environment and the vector env (1 and 4096 rows).

Run: ``.venv/bin/python benchmarks/rl_env.py [--quick]``. Writes ``benchmarks/results/rl_env.json``.

The vector env is timed with both engines in the same run: ``jit`` (the functional core,
:mod:`medsim.policies.env.functional`: one ``jax.jit(jax.vmap(step))`` call per step, autoresets
inside) and ``host`` (the host-batched core: one compiled advance per step, the rest in numpy);
``ratio_N`` is jit over host steps/s at ``N`` rows.

What is timed: ``step`` calls of ``medsim/Glucose-v0`` (glucose_insulin, prior population, 1-minute
sub-steps, two safety bounds with Brownian-bridge costs, announced meals) with a constant action:
basal insulin 0.02 U/min and the next interaction after 5 minutes (a CGM-like option; an announced
meal ends an interval early). One environment step = one patient advanced by one option. The
vector env autoresets at the one-day horizon (NEXT_STEP mode), so the timed steps include resets.
Figures are best-of-repeats after a warm-up step sequence (compilation excluded); ``cpu`` is per
second of process CPU time (all threads), the figure to compare on a shared machine.

Environment set here, at the entry point only: JAX gets one CPU device per core
(``jax_num_cpu_devices``), as in ``benchmarks/simulate.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

CORES = os.cpu_count() or 1
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", CORES)
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import machine_info  # noqa: E402  (benchmarks/, on the path when run as a script)

from medsim.policies.env.gym_env import MedsimEnv  # noqa: E402
from medsim.policies.env.vector import MedsimVectorEnv  # noqa: E402

ACTION = np.array([0.0, 0.02, 5.0], np.float32)


def _time(fn, steps: int, repeats: int, per_step: int) -> dict[str, float]:
    best_wall, best_cpu = np.inf, np.inf
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(steps)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    work = steps * per_step
    return {"wall": work / best_wall, "cpu": work / best_cpu, "steps": steps, "envs": per_step}


def bench_single(steps: int, repeats: int) -> dict:
    env = MedsimEnv("Glucose-v0", pool_size=64, prior_draws=16)
    env.reset(seed=0)

    def run(k: int) -> None:
        for _ in range(k):
            *_, truncated, _ = env.step(ACTION)
            if truncated:
                env.reset()

    run(steps)  # warm-up: compile the interval layouts (with and without a meal)
    return _time(run, steps, repeats, 1)


def bench_vector(n: int, steps: int, repeats: int, engine: str) -> dict:
    envs = MedsimVectorEnv("Glucose-v0", num_envs=n, pool_size=1000, prior_draws=200, engine=engine)
    envs.reset(seed=0)
    actions = np.tile(ACTION, (n, 1))

    def run(k: int) -> None:
        for _ in range(k):
            envs.step(actions)

    run(steps)
    return _time(run, steps, repeats, n)


def _machine() -> dict:
    return machine_info(CORES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (< 1 min)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rl_env.json")
    args = parser.parse_args()
    steps, reps = (30, 2) if args.quick else (100, 3)
    figures = {"single_env": bench_single(steps, reps)}
    for n in (1, 4096):
        for engine in ("host", "jit"):
            figures[f"vector_{engine}_{n}"] = bench_vector(n, steps, reps, engine)
    for name, f in figures.items():
        print(f"{name:18s} {f['wall']:12.4g} steps/s wall {f['cpu']:12.4g} steps/CPU-s")
    ratios = {}
    for n in (1, 4096):
        jit, host = figures[f"vector_jit_{n}"], figures[f"vector_host_{n}"]
        ratios[f"ratio_{n}"] = {"wall": jit["wall"] / host["wall"], "cpu": jit["cpu"] / host["cpu"]}
        r = ratios[f"ratio_{n}"]
        print(f"jit / host at {n:4d} rows: {r['wall']:.3g}x wall, {r['cpu']:.3g}x CPU")
    import importlib.metadata as md

    result = {
        "benchmark": "rl_env",
        "figures": figures,
        "ratios": ratios,
        "units": "environment steps (one patient advanced by one 5-minute option) per second; best repeat",
        "machine": _machine(),
        "versions": {"python": sys.version.split()[0], **{p: md.version(p) for p in ("jax", "gymnasium", "numpy")}},
        "command": "python benchmarks/rl_env.py" + (" --quick" if args.quick else ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
