"""Pool ``medsim sbc --out`` summaries of runs with different ``--seed``s into one SBC result.

Run: ``.venv/bin/python benchmarks/sbc_pool.py sbc_1.json sbc_2.json ... [--json pooled.json]``.

A long SBC run (``medsim sbc MODEL --method svi`` fits one cohort after the other) is safer run
as several short runs with different seeds, each written when it ends. Runs of the same command
with other seeds draw independent cohorts, so their ranks pool: per site this script sums the
rank-histogram counts and repeats the chi-square uniformity test of
:func:`medsim.inference.checks.coverage.rank_uniformity` on the sums, adds a binomial test of the
share of ranks in the two outer bins (expected ``2 / bins``; a posterior too narrow puts too many
there, too wide too few), and pools the 50 % / 90 % coverage counts with exact 99 % intervals.
For the summaries that hold per-cohort ranks and SVI check results (``ranks``,
``fit_diagnostics_ok``), it also repeats the rank test on the cohorts whose fits passed their
checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from medsim.inference.checks.coverage import binomial_interval
from medsim.io import atomic_write


class PoolError(ValueError):
    """Summaries that cannot be pooled (names the file and what differs)."""


#: Settings that must agree for runs to pool, with the value a summary written before the setting
#: was recorded ran with.
POOLED_SETTINGS = {
    "model": None,
    "design": None,
    "method": None,
    "svi_steps": None,
    "svi_learning_rate": 0.01,
    "svi_start": "prior",
    "max_substep": None,
    "draws": None,
    "process_noise": None,
}


def _settings(run: dict) -> dict:
    recorded = run["settings"]
    svi = recorded.get("method") == "svi"
    return {k: recorded.get(k, default if svi else None) for k, default in POOLED_SETTINGS.items()}


def _load(paths: list[Path]) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in paths]
    first = _settings(runs[0])
    for path, run in zip(paths, runs, strict=True):
        other = _settings(run)
        if other != first or run["n_rank_draws"] != runs[0]["n_rank_draws"]:
            raise PoolError(f"{path}: settings {other} differ from {paths[0]}'s {first}")
        if set(run["sites"]) != set(runs[0]["sites"]):
            raise PoolError(f"{path}: sites differ from {paths[0]}'s")
    return runs


def pool(runs: list[dict]) -> dict:
    """The pooled result (see the module docstring)."""
    n_rank = runs[0]["n_rank_draws"]
    # runs that recorded each cohort's rank and each SVI fit's check result
    recorded = [run for run in runs if "fit_diagnostics_ok" in run["settings"]]
    passed = np.asarray([ok for run in recorded for ok in run["settings"]["fit_diagnostics_ok"]], bool)
    sites = {}
    for site in runs[0]["sites"]:
        entries = [run["sites"][site] for run in runs]
        counts = np.sum([e["rank_test"]["counts"] for e in entries], axis=0)
        n, ends = int(counts.sum()), int(counts[0] + counts[-1])
        entry = {
            "counts": counts.tolist(),
            "p_value": float(stats.chisquare(counts).pvalue),
            "outer_bins": ends,
            "outer_bins_p_value": float(stats.binomtest(ends, n, 2 / len(counts)).pvalue),
        }
        for level in (50, 90):
            hits = sum(e[f"coverage_{level}"]["hits"] for e in entries)
            entry[f"coverage_{level}"] = binomial_interval(hits, n, confidence=0.99)
        if recorded:
            ranks = np.concatenate([run["sites"][site]["ranks"] for run in recorded])[passed]
            width = (n_rank + 1) // len(counts)
            kept = np.bincount(ranks // width, minlength=len(counts))
            entry["passed_fits"] = {"counts": kept.tolist(), "p_value": float(stats.chisquare(kept).pvalue)}
        sites[site] = entry
    held = [run["heldout_coverage_90"] for run in runs]
    settings = runs[0]["settings"]
    return {
        "n_cohorts": sum(run["n_cohorts"] for run in runs),
        "n_rank_draws": n_rank,
        "seeds": [run["settings"]["seed"] for run in runs],
        "fits_passed_checks": int(passed.sum()),
        "fits_with_check_record": int(passed.size),
        "heldout_coverage_90": binomial_interval(sum(h["hits"] for h in held), sum(h["n"] for h in held)),
        "wall_time_s": float(sum(run["settings"]["wall_time_s"] for run in runs)),
        "settings": {
            k: v
            for k, v in settings.items()
            if k not in ("priors", "elbo", "fit_time_s", "seed", "wall_time_s") and "diagnostics_ok" not in k
        },
        "sites": sites,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summaries", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="write the pooled result here")
    args = parser.parse_args(argv)
    try:
        result = pool(_load(args.summaries))
    except PoolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{result['n_cohorts']} cohorts; fits that passed their checks: {result['fits_passed_checks']} of "
        f"{result['fits_with_check_record']} recorded"
    )
    for site, e in result["sites"].items():
        c50, c90 = e["coverage_50"]["rate"], e["coverage_90"]["rate"]
        kept = e.get("passed_fits")
        shown = "" if kept is None else f"  passed fits {kept['counts']} p {kept['p_value']:.2g}"
        print(
            f"{site:24s} {e['counts']}  p {e['p_value']:.2g}  outer p {e['outer_bins_p_value']:.2g}  "
            f"cov50 {c50:.2f}  cov90 {c90:.2f}{shown}"
        )
    if args.json:
        text = json.dumps(result, indent=1) + "\n"
        atomic_write(args.json, lambda tmp: tmp.write_text(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
