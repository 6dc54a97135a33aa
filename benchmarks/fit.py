"""Fitting: numpyro NUTS against PyMC NUTS on the theophylline SDE fit, plus calibration checks.

Run: ``.venv/bin/python benchmarks/fit.py [--quick] [--sections speed,...] [--no-calibration]
[--with-vectorized] [--figures DIR]``. Writes ``benchmarks/results/fit.json`` (atomically, after every section).
Sections:

1. **Speed**: the hierarchical SDE model ``pk_oral_1cmt`` fitted to R's ``Theoph`` (12 subjects)
   by numpyro NUTS (chains spread over one JAX CPU device per core, ``chain_method="parallel"``; with
   ``--with-vectorized`` also all 4 chains vectorised in one program) and by PyMC's NUTS on the
   same model (priors from one ``PriorSpec``, the same JAX extended-Kalman-filter likelihood
   through a PyTensor op; 4 chains in 2 worker processes). Wall time includes model building and
   compilation (and PyMC's worker start-up); ESS/s is the smallest bulk ESS over the sampled
   coordinates divided by that wall time. R-hat, ESS and E-BFMI come from ArviZ via
   :func:`medsim.inference.diagnostics.diagnose`.
2. **Process noise**: PSIS-LOO of the SDE fit against the ODE-limit fit (numpyro), and the
   posterior of the process-noise scale.
3. **Held-out measurements**: the SDE model fitted without each subject's last two samples;
   coverage of those samples by 90 % posterior predictive intervals.
4. **Calibration** (skipped with ``--no-calibration``): simulation-based calibration over
   simulated cohorts (:func:`medsim.inference.calibration.run_calibration`).

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

CHAINS = 4
TARGET_ACCEPT = 0.9  # the default of `medsim fit` / inference.fit
import jax  # noqa: E402

# chain_method="parallel" spreads the chains over the JAX CPU devices, one per core as `medsim fit`
# sets them; the device count must be set before JAX starts. Every fit below then runs its chains
# in parallel over the cores (2 x 2 chains on two cores).
jax.config.update("jax_num_cpu_devices", max(1, min(CHAINS, os.cpu_count() or 1)))
import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fit.json"
SECTIONS = ("speed", "process_noise", "heldout", "calibration")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _fit_summary(data, out, wall: float, *, backend: str, seed: int) -> tuple[dict, object]:
    """Diagnostics and timings of one sampler run; returns (figures, InferenceData)."""
    from medsim.inference.assemble import build_inference_data
    from medsim.inference.diagnostics import diagnose
    from medsim.inference.fitting import provenance_attrs

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


def speed(cohort, model, *, chains: int, draws: int, warmup: int, seed: int, vectorized: bool) -> tuple[dict, dict]:
    """numpyro (chains over the devices; optionally also all chains vectorised) vs PyMC on the same SDE fit.

    Returns (figures, {run name: InferenceData}).
    """
    from functools import partial

    from medsim.inference.backends.numpyro_nuts import run_nuts
    from medsim.inference.backends.pymc_backend import run_pymc
    from medsim.inference.fitting import prepare_fit

    runs = {"numpyro_parallel": ("numpyro", partial(run_nuts, chain_method="parallel"))}
    if vectorized:
        runs["numpyro_vectorized"] = ("numpyro", partial(run_nuts, chain_method="vectorized"))
    runs["pymc"] = ("pymc", partial(run_pymc, cores=min(2, chains)))
    results, idatas = {}, {}
    for name, (backend, run) in runs.items():
        _log(f"{name}: {chains} chains x ({warmup} warmup + {draws} draws), theoph SDE")
        load = os.getloadavg()[0]
        start = time.perf_counter()
        data, information = prepare_fit(cohort, model, process_noise=True)  # as `medsim fit` does
        extra = {"information": information} if backend == "numpyro" else {}
        out = run(data, chains=chains, draws=draws, warmup=warmup, seed=seed, target_accept=TARGET_ACCEPT, **extra)
        wall = time.perf_counter() - start
        results[name], idatas[name] = _fit_summary(data, out, wall, backend=backend, seed=seed)
        results[name]["load_average_before"] = load
        results[name]["load_average_after"] = os.getloadavg()[0]
        _log(f"{name}: {json.dumps(results[name])}")
    fastest = max((k for k in runs if k != "pymc"), key=lambda k: results[k]["ess_bulk_per_s"])
    results["ratios"] = {
        "best_numpyro": fastest,
        "pymc_over_numpyro_wall_time": results["pymc"]["wall_time_s"] / results[fastest]["wall_time_s"],
        "numpyro_over_pymc_ess_per_s": results[fastest]["ess_bulk_per_s"] / results["pymc"]["ess_bulk_per_s"],
    }
    return results, idatas


def process_noise(cohort, model, sde_idata, *, chains: int, draws: int, warmup: int, seed: int) -> dict:
    """LOO of the SDE fit against the ODE limit, and the process-noise posterior."""
    from medsim.inference.backends.numpyro_nuts import run_nuts
    from medsim.inference.checks import loo_compare
    from medsim.inference.fitting import prepare_fit

    _log("ODE-limit fit for the LOO comparison")
    start = time.perf_counter()
    data, information = prepare_fit(cohort, model, process_noise=False)
    out = run_nuts(
        data, chains=chains, draws=draws, warmup=warmup, seed=seed, target_accept=TARGET_ACCEPT, information=information
    )
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

    from medsim.inference.checks.heldout import heldout_coverage, split_last
    from medsim.inference.fitting import fit

    _log(f"held-out check: SDE fit without the last {n_last} samples of each subject")
    posterior = fit(split_last(cohort, n_last), model, chains=chains, draws=draws, warmup=warmup, seed=seed)
    coverage = heldout_coverage(posterior, cohort, n_last, key=jax.random.key(seed))
    diag = posterior.diagnostics()
    return {
        "n_last": n_last,
        "level": 0.9,
        "rhat_max": diag.rhat_max,
        "divergences": diag.divergences,
        **coverage.interval,
    }


def calibration(*, quick: bool, seed: int) -> dict:
    from medsim.inference.calibration import Design, narrowed_priors, run_calibration
    from medsim.models import get

    settings = (
        {"n_cohorts": 20, "chains": 1, "warmup": 200, "draws": 200, "n_rank_draws": 49}
        if quick
        else {"n_cohorts": 60, "chains": 1, "warmup": 300, "draws": 300, "n_rank_draws": 59}
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
    from medsim.inference.provenance import package_versions

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
    parser.add_argument(
        "--quick", action="store_true", help="4 x 200 draws and 20 calibration cohorts (full: 4 x 1000, 60 cohorts)"
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--no-calibration", action="store_true", help="skip simulation-based calibration")
    parser.add_argument("--figures", type=Path, default=None, help="write individual-fit and VPC PNGs here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--with-vectorized",
        action="store_true",
        help="also time numpyro with all chains vectorised on one device (about 5x slower on CPU)",
    )
    parser.add_argument(
        "--update", action="store_true", help="keep the other sections already in --out (same settings)"
    )
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s and not (args.no_calibration and s == "calibration")]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")

    import medsim.data
    from medsim.models import get

    cohort = medsim.data.load("theoph")
    model = get("pk_oral_1cmt")
    sizes = {"chains": CHAINS, "draws": 200 if args.quick else 1000, "warmup": 200 if args.quick else 1000}
    started = time.perf_counter()
    argv_used = sys.argv[1:] if argv is None else argv
    payload = {
        "benchmark": "fit",
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/fit.py", *argv_used]),
        "settings": {**sizes, "seed": args.seed, "quick": args.quick, "cohort": "theoph", "model": model.name},
        "machine": _machine(),
        "versions": _versions(),
    }
    results: dict = {}
    if args.update and args.out.exists():
        # Keep the sections recorded earlier (same settings), replace the ones run now.
        previous = json.loads(args.out.read_text())
        if previous.get("settings") != payload["settings"]:
            parser.error(f"--update: {args.out} was written with other settings {previous.get('settings')}")
        results.update(previous.get("results", {}))
        payload["command"] = f"{previous.get('command', '')} ; then {payload['command']}"

    def save(final: bool = False) -> None:
        # Written after every section (atomically), so a long run that stops late keeps its figures.
        payload.update(results=results, figures=_figures(results), complete=final)
        payload["total_wall_time_s"] = time.perf_counter() - started
        _write_atomic(args.out, payload)

    idatas = {}
    if "speed" in sections:
        results["speed"], idatas = speed(cohort, model, seed=args.seed, vectorized=args.with_vectorized, **sizes)
        save()
        if args.figures is not None:
            from medsim.inference.checks import write_check_figures
            from medsim.inference.posterior import Posterior

            posterior = Posterior(idata=idatas["numpyro_parallel"], model=model)
            paths = write_check_figures(posterior, cohort, args.figures)
            results["figures_written"] = {k: str(v) for k, v in paths.items()}
    if "process_noise" in sections:
        if not idatas:
            parser.error("the process_noise section compares against the speed section's SDE fit")
        sde = idatas["numpyro_parallel"]
        results["process_noise"] = process_noise(cohort, model, sde, seed=args.seed, **sizes)
        save()
    if "heldout" in sections:
        results["heldout"] = heldout(cohort, model, seed=args.seed, **sizes)
        save()
    if "calibration" in sections:
        results["calibration"] = calibration(quick=args.quick, seed=args.seed)
    save(final=True)
    if "speed" in results:
        speed_ = results["speed"]
        for name in ("numpyro_parallel", "numpyro_vectorized", "pymc"):
            if name not in speed_:
                continue
            r = speed_[name]
            rate, rhat = r["ess_bulk_per_s"], r["rhat_max"]
            print(f"theoph SDE {name}: {r['wall_time_s']:.1f} s, {rate:.2f} ESS/s, R-hat {rhat:.3f}")
        ratios = speed_["ratios"]
        print(
            f"PyMC / {ratios['best_numpyro']} wall time {ratios['pymc_over_numpyro_wall_time']:.2f}x; "
            f"{ratios['best_numpyro']} / PyMC ESS per second {ratios['numpyro_over_pymc_ess_per_s']:.2f}x"
        )
    print(f"written: {args.out}")
    return payload


def _figures(results: dict) -> list[dict]:
    """The headline numbers of the sections done so far, as a flat list of {name, value, unit}."""
    out = []
    if "speed" in results:
        for backend in ("numpyro_parallel", "numpyro_vectorized", "pymc"):
            if backend not in results["speed"]:
                continue
            r = results["speed"][backend]
            out += [
                {"name": f"theoph_sde_{backend}_wall_time", "value": r["wall_time_s"], "unit": "s"},
                {"name": f"theoph_sde_{backend}_ess_bulk_per_s", "value": r["ess_bulk_per_s"], "unit": "1/s"},
                {"name": f"theoph_sde_{backend}_rhat_max", "value": r["rhat_max"], "unit": "1"},
                {"name": f"theoph_sde_{backend}_divergences", "value": r["divergences"], "unit": "count"},
            ]
        out += [
            {"name": k, "value": v, "unit": "1"} for k, v in results["speed"]["ratios"].items() if k != "best_numpyro"
        ]
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
