"""Do SVI's posteriors of the BSV SDs and the process-noise scale cover the truth on glucose cohorts?

Run: ``.venv/bin/python benchmarks/svi_glucose.py [--cohorts 12] [--subjects 6] [--days 1.5]
[--obs-every 60] [--steps 1500] [--learning-rate 0.01] [--centered auto] [--json benchmarks/results/svi_glucose.json]``.

Each of ``--cohorts`` synthetic type-1 cohorts (:func:`medsim.synthetic.glucose_cohort`, seeds
``--seed``, ``--seed + 1``, ...) is simulated from ``glucose_insulin`` with its typical values,
its between-subject SDs (``omega_<p>`` = the model's ``bsv``) and its process-noise scale
(0.004 /sqrt(min)), and fitted by SVI as ``medsim fit --method svi`` does. For every BSV SD,
typical value and the process-noise scale the script records whether the central 90 %
posterior interval covers the truth, the truth's rank among the draws (fraction of draws below
it) and the ratio of the posterior median to the truth (a collapsed SD reads near 0). Coverage
is reported with its exact binomial interval (:func:`medsim.inference.checks.coverage.binomial_interval`).

The truth is fixed (the model's values), not drawn from the prior, so this is a coverage check
at one point of the prior rather than full simulation-based calibration (Talts et al. 2018); it
answers the question that matters here: does SVI keep the spread between subjects and find the
process noise. Results are written atomically after every cohort.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def truths(model) -> dict[str, float]:
    """The values every cohort is simulated with: typical values, BSV SDs, process noise."""
    out = {}
    for p in model.structural:
        out[p.name] = float(p.typical)
        if p.bsv > 0:
            out[f"omega_{p.name}"] = float(p.bsv)
    for p in model.params_of_kind("process_noise"):
        out[p.name] = float(p.typical)
    return out


def one_cohort(args, model, seed: int) -> dict:
    from medsim import inference
    from medsim.synthetic import glucose_cohort

    synthetic = glucose_cohort(args.subjects, args.days, seed=seed, obs_every=args.obs_every)
    start = time.perf_counter()
    posterior = inference.fit(
        synthetic.cohort,
        model,
        method="svi",
        svi_steps=args.steps,
        svi_particles=args.particles,
        svi_learning_rate=args.learning_rate,
        guide=args.guide,
        centered=args.centered,
        max_substep=args.max_substep,
        draws=args.draws,
        seed=seed,
    )
    wall = time.perf_counter() - start
    post = posterior.idata.posterior
    diagnostics = posterior.diagnostics()
    row = {"seed": seed, "wall_s": wall, "elbo": float(posterior.attrs["elbo"]), "ok": diagnostics.ok}
    row["problems"] = list(diagnostics.problems)
    row["noise_profile_peak"] = {k: v["peak"] for k, v in json.loads(posterior.attrs["noise_profile"]).items()}
    row["parameters"] = {}
    for name, truth in truths(model).items():
        draws = np.asarray(post[name].values, float).ravel()
        q05, q50, q95 = np.quantile(draws, [0.05, 0.5, 0.95])
        row["parameters"][name] = {
            "truth": truth,
            "q05": float(q05),
            "median": float(q50),
            "q95": float(q95),
            "covered90": bool(q05 <= truth <= q95),
            "rank": float(np.mean(draws < truth)),
            "median_over_truth": float(q50 / truth),
        }
    return row


def summarise(rows: list[dict]) -> dict:
    from medsim.inference.checks.coverage import binomial_interval

    out = {}
    for name in rows[0]["parameters"]:
        values = [r["parameters"][name] for r in rows]
        hits = sum(v["covered90"] for v in values)
        ci = binomial_interval(hits, len(values), confidence=0.95)
        ratios = np.array([v["median_over_truth"] for v in values])
        out[name] = {
            "coverage90": ci["rate"],
            "coverage90_ci95": [ci["lower"], ci["upper"]],
            "median_over_truth_median": float(np.median(ratios)),
            "median_over_truth_min": float(ratios.min()),
            "mean_rank": float(np.mean([v["rank"] for v in values])),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohorts", type=int, default=12)
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--days", type=float, default=1.5)
    parser.add_argument("--obs-every", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--particles", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--guide", default="mvn")
    parser.add_argument("--centered", default="auto")
    parser.add_argument("--max-substep", type=float, default=10.0)
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "svi_glucose.json")
    args = parser.parse_args(argv)
    from medsim.models import get

    model = get("glucose_insulin")
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    rows = []
    for k in range(args.cohorts):
        rows.append(one_cohort(args, model, args.seed + k))
        r = rows[-1]
        print(
            f"cohort {k + 1}/{args.cohorts} (seed {r['seed']}): {r['wall_s']:.0f} s, ELBO {r['elbo']:.1f}, "
            f"checks {'ok' if r['ok'] else 'FAILED'}",
            flush=True,
        )
        write_json(
            args.json, {"settings": settings, "load_avg": os.getloadavg(), "summary": summarise(rows), "cohorts": rows}
        )
    for name, s in summarise(rows).items():
        lo, hi = s["coverage90_ci95"]
        print(
            f"{name:16s} 90% coverage {s['coverage90']:.2f} [{lo:.2f}, {hi:.2f}]  median/truth "
            f"{s['median_over_truth_median']:.2f} (min {s['median_over_truth_min']:.2f})  "
            f"mean rank {s['mean_rank']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
