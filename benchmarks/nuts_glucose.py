"""Wall time and diagnostics of a NUTS fit of a glucose model, as ``medsim fit --method nuts`` runs it.

Run: ``.venv/bin/python benchmarks/nuts_glucose.py [--cohort demo|TIDY.csv] [--model glucose_insulin]
[--chains 4] [--draws 1000] [--warmup 1000] [--seed 0] [--json OUT]``.

The cohort is read as in ``benchmarks/ekf_gradient.py`` (the demo's training days, or a
simglucose tidy CSV cut after day 2). One XLA CPU device per core (at most one per chain), as
the CLI requests, so the chains run ``parallel`` (2 devices x 2 chains on 2 cores). Prints the
wall time of the fit (compilation included), leapfrog steps, divergences, the largest R-hat and
the smallest bulk and tail ESS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", default="demo")
    parser.add_argument("--model", default="glucose_insulin")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-substep", type=float, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    devices = max(1, min(args.chains, os.cpu_count() or 1))
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"

    import medsim.models
    from benchmarks.ekf_gradient import load_cohort
    from benchmarks.external_t1d import progress_printer
    from medsim import inference

    model = medsim.models.get(args.model)
    cohort = load_cohort(args.cohort, model)
    start = time.perf_counter()
    progress = progress_printer(f"{args.model} nuts fit", start, every_s=30.0)  # a line every 30 s, for long fits

    posterior = inference.fit(
        cohort,
        model,
        method="nuts",
        chains=args.chains,
        draws=args.draws,
        warmup=args.warmup,
        seed=args.seed,
        max_substep=args.max_substep,
        progress=progress,
    )
    wall = time.perf_counter() - start
    diagnostics = posterior.diagnostics()
    stats = posterior.idata.sample_stats
    row = {
        "cohort": args.cohort,
        "model": args.model,
        "chains": args.chains,
        "draws": args.draws,
        "warmup": args.warmup,
        "seed": args.seed,
        "wall_s": wall,
        "cpu_s": time.process_time(),
        "steps_per_draw": float(np.mean(stats["n_steps"].values)),
        "divergences": int(diagnostics.divergences),
        "rhat_max": float(diagnostics.rhat_max),
        "ess_bulk_min": float(diagnostics.ess_bulk_min),
        "ess_tail_min": float(diagnostics.ess_tail_min),
        "ok": bool(diagnostics.ok),
    }
    print(json.dumps(row), flush=True)
    if args.json:
        from medsim.io import atomic_write

        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(row, indent=1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
