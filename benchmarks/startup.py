"""``medsim risk`` as a user runs it: first run, second run (persistent compilation cache), workers.

Usage: ``python benchmarks/startup.py [--quick] [--n 5000] [--workers 2] [--scaling-n 100000]``. Runs,
each in a fresh process with a throwaway compilation cache folder::

    medsim --compile-cache DIR risk --prior glucose_insulin --n N --policy pid:every=60 \
        --spec "glucose_mg_dL>=70;horizon=24h;epsilon=0.05" --out OUT [--workers W]

1. ``medsim --help`` (the command line's own start-up);
2. the imports a ``medsim risk`` run needs (jax, the simulator, policies, the risk estimators);
3. the first run, with an empty cache folder;
4. the same command again: nothing compiled (the number of new cache entries is recorded, and the
   number of cached programs it traced, lowered and loaded);
5. the same command with ``--workers W`` (a local Dask cluster of spawned processes, same
   cache folder), whose report must equal the one-process report;
6. worker scaling at ``--scaling-n`` patients (warm cache): one process, then ``--workers 1`` and
   ``--workers 2`` with one thread each (``--worker-threads 1``), so that the speed-up from the
   second worker shows on a two-core machine (0 skips it).

Every run records its wall time and the CPU time of the process and its children (workers
included). Prints the figures and the ratios and writes ``benchmarks/results/startup.json``
atomically.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = "glucose_mg_dL>=70;horizon=24h;epsilon=0.05"
POLICY = "pid:every=60"
IMPORTS = "import jax, medsim.simulate, policies.evaluate, policies.risk, medsim.cli.risk_cmds"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, the process and the children it waited for) of ``cmd``."""
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed, _children_cpu() - cpu


def _wall(cmd: list[str], env: dict[str, str], figures: dict, name: str) -> float:
    figures[f"{name}_s"], figures[f"{name}_cpu_s"] = _timed(cmd, env)
    return figures[f"{name}_s"]


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.endswith("-atime")} if folder.exists() else set()


def _loaded_since(folder: Path, since_ns: int) -> int:
    """Cached programs read since ``since_ns``: JAX stamps an entry's ``-atime`` file on every read
    (the folder has a size limit, so it evicts the least recently used). Each of them was traced,
    lowered and loaded by the run; a program read twice counts once."""
    return sum(1 for p in folder.glob("*-atime") if int.from_bytes(p.read_bytes()[:8], "little") >= since_ns)


def _report(folder: Path) -> dict:
    data = json.loads((folder / "report.json").read_text())
    data["provenance"].pop("created", None)  # wall-clock time
    data["provenance"].get("settings", {}).pop("command", None)  # the command line differs by --workers
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 patients instead of --n")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scaling-n", type=int, default=100_000, help="patients of the worker-scaling runs (0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup.json")
    args = parser.parse_args()
    n = 500 if args.quick else args.n
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "jax-cache"
        base = [py, "-m", "medsim.cli", "--compile-cache", str(cache), "risk", "--prior", "glucose_insulin"]
        base += ["--n", str(n), "--policy", POLICY, "--spec", SPEC]
        figures: dict[str, float | int | bool] = {}
        _wall([py, "-m", "medsim.cli", "--help"], env, figures, "help")
        _wall([py, "-c", IMPORTS], env, figures, "imports")
        print(f"medsim --help {figures['help_s']:.1f} s; imports of a risk run {figures['imports_s']:.1f} s")
        _wall([*base, "--out", f"{tmp}/first"], env, figures, "first_run")
        compiled = _entries(cache)
        figures["cache_entries_first"] = len(compiled)
        print(f"first run {figures['first_run_s']:.1f} s ({len(compiled)} programs compiled and cached)")
        since = time.time_ns()
        _wall([*base, "--out", f"{tmp}/second"], env, figures, "second_run")
        figures["cache_entries_added_by_second"] = len(_entries(cache) - compiled)
        figures["programs_loaded_by_second"] = _loaded_since(cache, since)
        print(
            f"second run {figures['second_run_s']:.1f} s, CPU {figures['second_run_cpu_s']:.1f} s "
            f"({figures['cache_entries_added_by_second']} new programs, "
            f"{figures['programs_loaded_by_second']} loaded from the cache)"
        )
        workers = [*base, "--out", f"{tmp}/workers", "--workers", str(args.workers)]
        before = _entries(cache)
        _wall(workers, env, figures, "workers_run")
        figures["cache_entries_added_by_workers"] = len(_entries(cache) - before)
        figures["workers_report_identical"] = _report(Path(tmp) / "second") == _report(Path(tmp) / "workers")
        same = figures["workers_report_identical"]
        added = figures["cache_entries_added_by_workers"]
        print(f"{args.workers} workers {figures['workers_run_s']:.1f} s (same report: {same}; {added} new programs)")
        if args.scaling_n > 0:
            scaling = [*base[: base.index("--n")], "--n", str(args.scaling_n), *base[base.index("--n") + 2 :]]
            _wall([*scaling, "--out", f"{tmp}/scaling_one"], env, figures, "scaling_one_process")
            for w in (1, 2):
                cmd = [*scaling, "--out", f"{tmp}/scaling_{w}", "--workers", str(w), "--worker-threads", "1"]
                _wall(cmd, env, figures, f"scaling_{w}_workers")
            one = _report(Path(tmp) / "scaling_one")
            figures["scaling_reports_identical"] = all(_report(Path(tmp) / f"scaling_{w}") == one for w in (1, 2))
            figures["scaling_2_over_1_workers"] = figures["scaling_2_workers_s"] / figures["scaling_1_workers_s"]
            print(
                f"{args.scaling_n} patients: one process {figures['scaling_one_process_s']:.1f} s; "
                f"1 worker {figures['scaling_1_workers_s']:.1f} s; 2 workers {figures['scaling_2_workers_s']:.1f} s "
                f"(2 / 1 = {figures['scaling_2_over_1_workers']:.2f}; same reports: "
                f"{figures['scaling_reports_identical']})"
            )
    figures["second_over_first"] = figures["second_run_s"] / figures["first_run_s"]
    figures["workers_over_one_process"] = figures["workers_run_s"] / figures["second_run_s"]
    print(
        f"second / first = {figures['second_over_first']:.2f}; "
        f"{args.workers} workers / 1 process (both with a warm cache) = {figures['workers_over_one_process']:.2f}"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    payload = {
        "command": " ".join(["python", "benchmarks/startup.py", *sys.argv[1:]]),
        "risk_command": f"medsim risk --prior glucose_insulin --n {n} --policy {POLICY} --spec '{SPEC}'",
        "workers": args.workers,
        "scaling_n": args.scaling_n,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_1min_at_end": load},
        "figures": figures,
    }
    sys.path.insert(0, str(ROOT))
    from medsim.io import write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
