"""Fitting: numpyro NUTS against PyMC NUTS on the theophylline SDE fit, plus calibration checks.

Run: ``.venv/bin/python benchmarks/fit.py [--quick] [--no-calibration] [--figures DIR]``.
Writes ``benchmarks/results/fit.json`` (atomically). Sections:

1. **Speed**: the hierarchical SDE model ``pk_oral_1cmt`` fitted to R's ``Theoph`` (12 subjects)
   by numpyro NUTS (4 chains vectorised in one process) and by PyMC's NUTS on the same model
   (priors from one ``PriorSpec``, the same JAX extended-Kalman-filter likelihood through a
   PyTensor op; 4 chains in 2 worker processes). Wall time includes model building and
   compilation (and PyMC's worker start-up); ESS/s is the smallest bulk ESS over the sampled
   coordinates divided by that wall time. R-hat, ESS and E-BFMI come from ArviZ via
   :func:`inference.diagnostics.diagnose`.
2. **Process noise**: PSIS-LOO of the SDE fit against the ODE-limit fit (numpyro), and the
   posterior of the process-noise scale.
3. **Held-out measurements**: the SDE model fitted without each subject's last two samples;
   coverage of those samples by 90 % posterior predictive intervals.
4. **Calibration** (skipped with ``--no-calibration``): simulation-based calibration over
   simulated cohorts (:func:`inference.calibration.run_calibration`).

The machine is shared with other jobs in some environments: the load average before and after is
recorded next to the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "fit.json"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _fit_summary(data, out, wall: float, *, backend: str, seed: int) -> tuple[dict, object]:
    """Diagnostics and timings of one sampler run; returns (figures, InferenceData)."""
    from inference.assemble import build_inference_data
    from inference.diagnostics import diagnose
    from inference.fitting import provenance_attrs

    attrs = provenance_attrs(data, backend=backend, method="nuts", seed=seed, info=out.info)
    idata = build_inference_data(data, out.samples, out.sample_stats, attrs)
    diag = diagnose(idata, method="nuts")
    return {
        "wall_time_s": wall,
        "rhat_max": diag.rhat_max,
        "ess_bulk_min": diag.ess_bulk_min,
        "ess_tail_min": diag.ess_tail_min,
        "ess_bulk_per_s": diag.ess_bulk_min / wall,
        "divergences": int(diag.divergences),
        "ebfmi_min": diag.ebfmi_min,
        "mean_leapfrog_steps": float(np.mean(out.sample_stats["n_steps"])),
        "diagnostics_ok": bool(diag.ok),
    }, idata


def speed(cohort, model, *, chains: int, draws: int, warmup: int, seed: int) -> tuple[dict, dict]:
    """numpyro vs PyMC on the same SDE fit; returns (figures, {backend: InferenceData})."""
    from inference.backends.numpyro_nuts import run_nuts
    from inference.backends.pymc_backend import run_pymc
    from inference.problem import prepare

    results, idatas = {}, {}
    for backend, run in (("numpyro", run_nuts), ("pymc", run_pymc)):
        _log(f"{backend}: {chains} chains x ({warmup} warmup + {draws} draws), theoph SDE")
        load = os.getloadavg()[0]
        start = time.perf_counter()
        data = prepare(cohort, model, process_noise=True)
        out = run(data, chains=chains, draws=draws, warmup=warmup, seed=seed)
        wall = time.perf_counter() - start
        results[backend], idatas[backend] = _fit_summary(data, out, wall, backend=backend, seed=seed)
        results[backend]["load_average_before"] = load
        results[backend]["load_average_after"] = os.getloadavg()[0]
        _log(f"{backend}: {json.dumps(results[backend])}")
    results["ratios"] = {
        "pymc_over_numpyro_wall_time": results["pymc"]["wall_time_s"] / results["numpyro"]["wall_time_s"],
        "numpyro_over_pymc_ess_per_s": results["numpyro"]["ess_bulk_per_s"] / results["pymc"]["ess_bulk_per_s"],
    }
    return results, idatas


def process_noise(cohort, model, sde_idata, *, chains: int, draws: int, warmup: int, seed: int) -> dict:
    """LOO of the SDE fit against the ODE limit, and the process-noise posterior."""
    from inference.backends.numpyro_nuts import run_nuts
    from inference.checks import loo_compare
    from inference.problem import prepare

    _log("ODE-limit fit for the LOO comparison")
    data = prepare(cohort, model, process_noise=False)
    start = time.perf_counter()
    out = run_nuts(data, chains=chains, draws=draws, warmup=warmup, seed=seed)
    ode, ode_idata = _fit_summary(data, out, time.perf_counter() - start, backend="numpyro", seed=seed)
    result = {"ode_fit": ode}
    for unit in ("observation", "subject"):
        comparison = loo_compare({"SDE": sde_idata, "ODE": ode_idata}, unit=unit)
        table = comparison.table
        result[f"loo_{unit}"] = {
            "best": comparison.best(),
            "elpd_loo": {name: float(table.loc[name, "elpd_loo"]) for name in table.index},
            "se": {name: float(table.loc[name, "se"]) for name in table.index},
            "p_loo": {name: float(table.loc[name, "p_loo"]) for name in table.index},
            "elpd_diff": float(table["elpd_diff"].max()),
            "dse": float(table.loc[table["elpd_diff"].idxmax(), "dse"]),
            "pareto_k_above_threshold": comparison.pareto_k_above,
            "n_points": comparison.n_points,
        }
    sigma = np.asarray(sde_idata.posterior["sigma_central"]).ravel()
    result["sigma_central"] = {
        "median": float(np.median(sigma)),
        "q05": float(np.quantile(sigma, 0.05)),
        "q95": float(np.quantile(sigma, 0.95)),
        "unit": "1/sqrt(h)",
    }
    return result


def heldout(cohort, model, *, chains: int, draws: int, warmup: int, seed: int, n_last: int = 2) -> dict:
    """Fit without each subject's last ``n_last`` samples; 90 % predictive coverage of them."""
    import jax

    from inference.checks.heldout import heldout_coverage, split_last
    from inference.fitting import fit

    _log(f"held-out check: SDE fit without the last {n_last} samples of each subject")
    posterior = fit(split_last(cohort, n_last), model, chains=chains, draws=draws, warmup=warmup, seed=seed)
    coverage = heldout_coverage(posterior, cohort, n_last, key=jax.random.key(seed))
    diag = posterior.diagnostics
    return {
        "n_last": n_last,
        "level": 0.9,
        "rhat_max": diag.rhat_max,
        "divergences": diag.divergences,
        **coverage.interval,
    }


def calibration(*, quick: bool, seed: int) -> dict:
    from inference.calibration import Design, narrowed_priors, run_calibration
    from medsim.models import get

    settings = (
        {"n_cohorts": 20, "chains": 1, "warmup": 200, "draws": 200, "n_rank_draws": 49}
        if quick
        else {"n_cohorts": 100, "chains": 1, "warmup": 300, "draws": 300, "n_rank_draws": 99}
    )
    _log(f"simulation-based calibration: {settings}")
    result = run_calibration(
        narrowed_priors(get("pk_oral_1cmt")), Design(n_subjects=8), seed=seed, max_tree_depth=7, **settings
    )
    summary = result.summary(n_bins=5 if quick else 10)
    return {
        "settings": {k: v for k, v in summary["settings"].items() if k != "priors"},
        "n_cohorts": summary["n_cohorts"],
        "coverage_50": {s: e["coverage_50"]["rate"] for s, e in summary["sites"].items()},
        "coverage_90": {s: e["coverage_90"]["rate"] for s, e in summary["sites"].items()},
        "rank_chi2_p": {s: e["rank_test"]["p_value"] for s, e in summary["sites"].items()},
        "heldout_coverage_90": summary["heldout_coverage_90"],
        "divergences": summary["divergences"],
        "details": summary["sites"],
    }


def _versions() -> dict[str, str]:
    from inference.provenance import package_versions

    return package_versions()


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def _write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short chains and 20 calibration cohorts (minutes)")
    parser.add_argument("--no-calibration", action="store_true", help="skip simulation-based calibration")
    parser.add_argument("--figures", type=Path, default=None, help="write individual-fit and VPC PNGs here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import medsim.data
    from medsim.models import get

    cohort = medsim.data.load("theoph")
    model = get("pk_oral_1cmt")
    sizes = {"chains": 4, "draws": 200, "warmup": 200} if args.quick else {"chains": 4, "draws": 1000, "warmup": 1000}
    started = time.perf_counter()
    results = {"speed": None}
    results["speed"], idatas = speed(cohort, model, seed=args.seed, **sizes)
    results["process_noise"] = process_noise(cohort, model, idatas["numpyro"], seed=args.seed, **sizes)
    results["heldout"] = heldout(cohort, model, seed=args.seed, **sizes)
    if not args.no_calibration:
        results["calibration"] = calibration(quick=args.quick, seed=args.seed)
    if args.figures is not None:
        from inference.checks import write_check_figures
        from inference.posterior import Posterior

        paths = write_check_figures(Posterior(idata=idatas["numpyro"], model=model), cohort, args.figures)
        results["figures_written"] = {k: str(v) for k, v in paths.items()}
    payload = {
        "benchmark": "fit",
        "command": " ".join(
            shlex.quote(a) for a in ["benchmarks/fit.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "settings": {**sizes, "seed": args.seed, "quick": args.quick, "cohort": "theoph", "model": model.name},
        "machine": _machine(),
        "versions": _versions(),
        "total_wall_time_s": time.perf_counter() - started,
        "figures": _figures(results),
        "results": results,
    }
    _write_atomic(args.out, payload)
    np_, pm_, ratios = results["speed"]["numpyro"], results["speed"]["pymc"], results["speed"]["ratios"]
    print(
        f"theoph SDE, {sizes['chains']} chains x {sizes['draws']} draws: "
        f"numpyro {np_['wall_time_s']:.1f} s ({np_['ess_bulk_per_s']:.1f} ESS/s), "
        f"PyMC {pm_['wall_time_s']:.1f} s ({pm_['ess_bulk_per_s']:.1f} ESS/s); "
        f"PyMC/numpyro wall time {ratios['pymc_over_numpyro_wall_time']:.1f}x, "
        f"numpyro/PyMC ESS/s {ratios['numpyro_over_pymc_ess_per_s']:.1f}x. Written: {args.out}"
    )
    return payload


def _figures(results: dict) -> list[dict]:
    """The headline numbers of the sections done so far, as a flat list of {name, value, unit}."""
    out = []
    if "speed" in results:
        for backend in ("numpyro", "pymc"):
            r = results["speed"][backend]
            out += [
                {"name": f"theoph_sde_{backend}_wall_time", "value": r["wall_time_s"], "unit": "s"},
                {"name": f"theoph_sde_{backend}_ess_bulk_per_s", "value": r["ess_bulk_per_s"], "unit": "1/s"},
                {"name": f"theoph_sde_{backend}_rhat_max", "value": r["rhat_max"], "unit": "1"},
                {"name": f"theoph_sde_{backend}_divergences", "value": r["divergences"], "unit": "count"},
            ]
        out += [{"name": k, "value": v, "unit": "1"} for k, v in results["speed"]["ratios"].items()]
    if "process_noise" in results:
        noise = results["process_noise"]
        out += [
            {"name": "theoph_loo_elpd_sde", "value": noise["loo_observation"]["elpd_loo"]["SDE"], "unit": "nats"},
            {"name": "theoph_loo_elpd_ode", "value": noise["loo_observation"]["elpd_loo"]["ODE"], "unit": "nats"},
            {"name": "theoph_sigma_central_median", "value": noise["sigma_central"]["median"], "unit": "1/sqrt(h)"},
        ]
    if "heldout" in results:
        out.append({"name": "theoph_heldout_coverage_90", "value": results["heldout"]["rate"], "unit": "1"})
    if "calibration" in results:
        cal = results["calibration"]
        out += [
            {"name": "sbc_heldout_coverage_90", "value": cal["heldout_coverage_90"]["rate"], "unit": "1"},
            {"name": "sbc_min_rank_chi2_p", "value": min(cal["rank_chi2_p"].values()), "unit": "1"},
        ]
    return out


if __name__ == "__main__":  # PyMC's worker processes (forkserver) import this module: guard the run
    main()
