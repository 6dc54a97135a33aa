"""``medsim risk`` on a million glucose patients with CGM every 5 minutes, as a user runs it.

Usage: ``python benchmarks/risk_scale.py [--quick] [--n 1000000] [--workers 2]``. Runs, each in a
fresh process, with a throwaway compilation cache folder::

    medsim --compile-cache DIR risk --prior glucose_insulin --n N --policy pid:every=5 \
        --spec "glucose_mg_dL>=70,glucose_mg_dL<=180;horizon=24h;epsilon=0.05" --on-failure count --out OUT

1. the first run (empty cache: compiles);
2. the same command again (the run a user repeats: nothing compiled; the programs each run adds to
   the cache folder are counted);
3. with ``--workers 1 --worker-threads 1`` and ``--workers W --worker-threads 1`` (a local Dask cluster;
   warm cache), whose reports must equal the one-process report, for the speed-up per worker
   (``--workers 0`` skips them).

At this size the rows of every interaction (~127 GiB) exceed the memory limit, so ``medsim risk``
(``--statistics auto``) streams per-patient sums and records every interaction of the first 2000
patients. Every run records its wall time, the CPU time of the process and its children (workers
included) and the peak resident memory of the command's process tree (the largest process:
``ru_maxrss`` of a wrapper's children, so the command and, for Dask, its largest worker); the
figures and ratios are printed and written to ``benchmarks/results/risk_scale.json`` atomically.
``--quick``: 20 000 patients.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = "glucose_mg_dL>=70,glucose_mg_dL<=180;horizon=24h;epsilon=0.05"
POLICY = "pid:every=5"
# Runs a command and prints the CPU time and peak RSS (KiB) of its process tree.
WRAPPER = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "sys.stderr.write(done.stderr[-3000:])\n"
    "print(u.ru_utime + u.ru_stime, u.ru_maxrss, done.returncode)\n"
)


def _run(cmd: list[str], env: dict[str, str], figures: dict, name: str) -> None:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu, rss_kib, code = done.stdout.split()
    if int(code) != 0 or done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{done.stderr[-3000:]}")
    figures[f"{name}_s"], figures[f"{name}_cpu_s"] = wall, float(cpu)
    figures[f"{name}_peak_rss_GiB"] = int(rss_kib) / 2**20
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    figures[f"{name}_load_1min"] = load
    print(f"{name}: {wall:.1f} s wall, {float(cpu):.1f} s CPU, peak {int(rss_kib) / 2**20:.2f} GiB (load {load:.1f})")


def _report(folder: Path) -> dict:
    data = json.loads((folder / "report.json").read_text())
    data["provenance"].pop("created", None)
    data["provenance"]["settings"].pop("command", None)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 000 patients instead of --n")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2, help="workers of the scaling run (0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "risk_scale.json")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.n
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    figures: dict[str, float | int | bool | str] = {}
    base: list[str] = []
    sys.path.insert(0, str(ROOT))
    from benchmarks.machine import machine_info

    machine = machine_info(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "jax-cache"
        base = [sys.executable, "-m", "medsim.cli", "--compile-cache", str(cache), "risk", "--prior", "glucose_insulin"]
        base += ["--n", str(n), "--policy", POLICY, "--spec", SPEC, "--on-failure", "count"]
        _run([*base, "--out", f"{tmp}/first"], env, figures, "first_run")
        compiled = {p.name for p in cache.iterdir()} if cache.is_dir() else set()
        _run([*base, "--out", f"{tmp}/second"], env, figures, "second_run")
        figures["cache_entries_first"] = len(compiled)
        added = len({p.name for p in cache.iterdir()} - compiled)
        figures["cache_entries_added_by_second"] = added
        print(f"programs compiled: {len(compiled)} by the first run, {added} by the second")
        settings = _report(Path(tmp) / "second")["provenance"]["settings"]
        figures["statistics"] = settings.get("statistics", "rows")
        figures["patient_days_per_s_second_run"] = n / figures["second_run_s"]
        if args.workers > 0:
            for w in sorted({1, args.workers}):
                cmd = [*base, "--out", f"{tmp}/workers_{w}", "--workers", str(w), "--worker-threads", "1"]
                _run(cmd, env, figures, f"workers_{w}")
            one = _report(Path(tmp) / "second")
            figures["worker_reports_identical"] = all(
                _report(Path(tmp) / f"workers_{w}") == one for w in sorted({1, args.workers})
            )
            speedup = figures["workers_1_s"] / figures[f"workers_{args.workers}_s"]
            figures[f"speedup_{args.workers}_over_1_workers"] = speedup
            print(f"{args.workers} / 1 workers speed-up {speedup:.2f}")
    payload = {
        "command": " ".join(["python", "benchmarks/risk_scale.py", *sys.argv[1:]]),
        "risk_command": " ".join(["medsim", *base[base.index("risk") :]]).replace(SPEC, f"'{SPEC}'"),
        "n": n,
        "machine": machine,
        "targets": {"wall_s": 60.0, "peak_rss_GiB": 2.0},
        "figures": figures,
    }
    from medsim.io import write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
