"""Rare-event estimators against plain Monte Carlo: relative error against cost.

Run: ``.venv/bin/python benchmarks/rare.py [--quick] [--json benchmarks/results/rare.json]``.

Cases with exact answers (:mod:`medsim.policies.risk.rare.references`): Brownian motion with drift
(mu = -1, sigma = 1, T = 1, 64 steps) leaving a half-line placed so that p = 1e-4, 1e-6, 1e-8
(closed form), and an OU process (theta = 1, sigma = 1, T = 1, 64 exact steps) leaving a
half-line at p ~ 1e-5 (Crank–Nicolson reference). For each case and estimator the script runs
``reps`` independent estimates at a fixed budget and records their mean, the observed relative
error ``sqrt(mean((estimate - p)^2)) / p``, the mean path-equivalents and seconds per estimate
(compilation excluded: every configuration is run once before it is timed; with ``--quick`` the
splitting and subset figures include one compilation, shared by the ``reps`` replicas). Plain Monte Carlo
gets the same budget as splitting.

Interval coverage: ``--coverage-reps`` (default 200) intervals of AMS (10 replicas each) at
p = 1e-5 on the Brownian case, and the share that contains the exact value, with its
Clopper–Pearson interval.

``--glucose``: only P(glucose < 54 mg/dL) of one virtual patient over 12 h (nominal meals from
11:00) under basal-bolus (a look every 15 min) and PID (every 10 min), the patient's insulin
sensitivity scaled so that P runs from ~4e-2 to ~1e-6 (:data:`GLUCOSE_CASES`), by splitting on
the compiled closed loop and by plain Monte Carlo with as many paths, and the ``medsim risk``
pipeline certifying P <= 1e-4 at 95 % confidence (:func:`glucose_certify`); added to the
results file.

``--quick`` (< 3 min on 2 shared cores): fewer repetitions, p = 1e-6 and 1e-8 only plus the
coverage check on a 16-step grid. Results are written atomically to ``benchmarks/results/rare.json``
as a list ``cases`` (``case, estimator, p_exact, estimate, relative_error, path_equivalents,
seconds``) plus the machine and the command.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_json(path: Path, value) -> None:
    import json

    from medsim.io import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2)))


def bm_distance(p: float) -> float:
    from scipy.optimize import brentq

    from medsim.policies.risk.rare.references import drifted_bm_exit

    return float(brentq(lambda b: math.log(drifted_bm_exit(-1.0, 1.0, b, 1.0)) - math.log(p), 0.5, 8.0))


def plain_mc(problem, n: int, seed: int) -> tuple[float, float]:
    """Mean of the bridge-corrected crossing probability over ``n`` plain paths, in batches."""
    import jax

    total, done, batch = 0.0, 0, 50_000
    while done < n:
        m = min(batch, n - done)
        inc = jax.random.normal(jax.random.fold_in(jax.random.key(seed), done), (m, *problem.shape))
        total += float(np.asarray(problem.evaluate(inc)[1], dtype=float).sum())
        done += m
    return total / n, float(n)


def run_case(
    case: str, problem, p_exact: float | None, configs: dict, reps: int, seed: int, warm: bool = True
) -> list[dict]:
    """``reps`` independent estimates per estimator, timed after a warm-up run when ``warm``."""
    from medsim.policies.risk.rare import ams, importance_sampling, subset_simulation

    rows = []
    for name, cfg in configs.items():
        if name in ("ams", "subset"):
            fn = ams if name == "ams" else subset_simulation
            if warm:
                fn(problem, seed=seed + 999, replicas=reps, **cfg)  # warm-up (compilation)
            t0 = time.perf_counter()
            r = fn(problem, seed=seed, replicas=reps, **cfg)
            seconds = (time.perf_counter() - t0) / reps
            values, cost = np.asarray(r.replicas), r.path_equivalents / reps
            extra = {"iterations": r.iterations, "levels_first_replica": len(r.levels)}
        elif name == "is":
            importance_sampling(problem, seed=seed + 999, **cfg)
            values, costs, t0, ess = [], [], time.perf_counter(), []
            for i in range(reps):
                r = importance_sampling(problem, seed=seed + i, **cfg)
                values.append(r.value)
                costs.append(r.path_equivalents)
                ess.append(r.ess)
            seconds = (time.perf_counter() - t0) / reps
            values, cost = np.asarray(values), float(np.mean(costs))
            extra = {"ess_median": float(np.median(ess)), "estimated_relative_error_last": r.relative_error}
        else:  # plain Monte Carlo at the given budget
            n = int(cfg["n_paths"])
            plain_mc(problem, min(n, 1000), seed + 999)
            values, t0 = [], time.perf_counter()
            for i in range(cfg.get("reps", reps)):
                values.append(plain_mc(problem, n, seed + i)[0])
            seconds = (time.perf_counter() - t0) / len(values)
            values, cost = np.asarray(values), float(n)
            extra = {"paths_needed_for_10pct": (1 - p_exact) / (0.01 * p_exact) if p_exact else None}
        mean = float(values.mean())
        if p_exact:
            rel = float(np.sqrt(np.mean((values - p_exact) ** 2)) / p_exact)
        else:
            rel = float(values.std(ddof=1) / mean) if mean > 0 else math.nan
        rows.append(
            {
                "case": case,
                "estimator": name,
                "p_exact": p_exact,
                "estimate": mean,
                "relative_error": rel,
                "path_equivalents": cost,
                "seconds": seconds,
                "repetitions": len(values),
                "seconds_include_compilation": not warm and name in ("ams", "subset"),
                "config": cfg,
                **extra,
            }
        )
        print(
            f"{case:28s} {name:7s} est {mean:.3g} (exact {p_exact}) rel.err {rel:.3f} "
            f"cost {cost:.3g} paths {seconds:.2f}s",
            flush=True,
        )
    return rows


def coverage(reps: int, steps: int, seed: int) -> dict:
    from scipy import stats

    from medsim.policies.risk.rare import ams
    from medsim.policies.risk.rare.references import drifted_bm_exit, drifted_bm_problem
    from medsim.policies.risk.rare.result import replica_interval

    b = bm_distance(1e-5)
    p = drifted_bm_exit(-1.0, 1.0, b, 1.0)
    per = 10
    t0 = time.perf_counter()
    r = ams(drifted_bm_problem(-1.0, 1.0, b, 1.0, steps), seed=seed, n_paths=100, replicas=reps * per)
    v = np.asarray(r.replicas).reshape(reps, per)
    hits = [replica_interval(row, level=0.95, seed=seed, method="ams")[0].contains(p) for row in v]
    k = int(np.sum(hits))
    lo, hi = stats.beta.ppf(0.025, k, reps - k + 1), stats.beta.ppf(0.975, k + 1, reps - k)
    return {
        "case": f"bm p=1e-5, {steps} steps",
        "estimator": "ams (10 replicas of 100 paths, log-scale t interval)",
        "nominal": 0.95,
        "intervals": reps,
        "coverage": k / reps,
        "coverage_interval": [float(lo), float(hi)],
        "seconds": time.perf_counter() - t0,
    }


# A virtual glucose_insulin patient (one draw near the typical values) whose lowest glucose under
# the built-in controllers comes within ~5-15 mg/dL of 54 mg/dL on a nominal day.
GLUCOSE_PATIENT = {
    "tau_1": 40.33,
    "tau_2": 45.71,
    "C_I": 1352.3,
    "p_2": 0.011763,
    "S_I": 0.00097963,
    "GEZI": 0.0021058,
    "EGP": 1.1387,
    "V_G": 193.56,
    "tau_m": 128.16,
    "sigma_glucose": 0.004046,
}


def glucose_population(factor: float, n: int = 1):
    """``n`` copies of :data:`GLUCOSE_PATIENT` with its insulin sensitivity scaled by ``factor``."""
    import dataclasses

    import medsim.models as registry
    from medsim.population import sample_population

    model = registry.get("glucose_insulin")
    draws = glucose_draws(factor)
    patient = sample_population(draws, n, seed=0, covariates={"BASAL": 1.2})
    params = {**GLUCOSE_PATIENT, "S_I": GLUCOSE_PATIENT["S_I"] * factor}
    return model, dataclasses.replace(
        patient, params={**patient.params, **{k: np.full(n, v) for k, v in params.items()}}
    )


def glucose_draws(factor: float):
    """One posterior "draw" of :data:`GLUCOSE_PATIENT` (S_I scaled by ``factor``, no between-subject spread)."""
    import medsim.models as registry
    from medsim.population import PosteriorDraws

    model = registry.get("glucose_insulin")
    params = {**GLUCOSE_PATIENT, "S_I": GLUCOSE_PATIENT["S_I"] * factor}
    pop = {p.name: np.array([params.get(p.name, p.typical)]) for p in model.parameters}
    omega = {p.name: np.array([0.0]) for p in model.structural if p.bsv > 0}
    residual = {}
    for obs, err in model.residual.items():
        if err.kind in ("additive", "combined"):
            residual[f"{obs}_add"] = np.array([err.add])
        if err.kind in ("proportional", "combined"):
            residual[f"{obs}_prop"] = np.array([err.prop])
    return PosteriorDraws(model=model, population=pop, omega=omega, residual=residual)


# (policy, interactions, S_I factor, segments, paths per replica, replicas, plain Monte Carlo too)
GLUCOSE_CASES = (
    ("basal_bolus", 60, 1.0, 1, 100, 4, True),  # the configuration measured on the host loop before
    ("basal_bolus", 60, 1.0, 4, 100, 4, False),
    ("basal_bolus", 60, 0.95, 4, 1000, 4, True),
    ("basal_bolus", 60, 0.93, 4, 800, 8, False),
    ("pid", 80, 1.2, 3, 1000, 4, True),
    ("pid", 80, 1.15, 3, 800, 8, False),
)


def glucose_cases(args) -> list[dict]:
    """P(glucose < 54 mg/dL over 12 h from 11:00, nominal meals) under basal-bolus and PID.

    Splitting drives the closed loop compiled with it
    (:func:`medsim.policies.risk.rare.closed_loop_problem`: one program for the splitting loop and
    the option loop); plain Monte Carlo gets as many paths of the same path function. No exact
    answer: relative errors are estimated from the replicas (splitting) or the binomial-like spread
    (plain). Each splitting configuration runs twice (seeds ``seed`` and ``seed + 1``): the first
    call includes compilation. Last, :func:`glucose_certify`.
    """
    import jax

    from medsim.policies.builtin import PID, BasalBolus
    from medsim.policies.risk.rare import ams, closed_loop_problem
    from medsim.policies.scenarios import MealScenario
    from medsim.simulate.types import Bound

    scenario = MealScenario(time_sd_h=0.0, size_cv=0.0, start_clock_h=11.0)
    rows = []
    for name, interactions, factor, segments, n_paths, replicas, plain in GLUCOSE_CASES:
        policy = BasalBolus(every=15.0) if name == "basal_bolus" else PID(every=10.0)
        model, one = glucose_population(factor)
        problem = closed_loop_problem(
            model,
            one,
            policy,
            bound=Bound("glucose_mg_dL", 54.0, "lower"),
            horizon=12 * 60.0,
            dt=1.0,
            seed=args.seed,
            interactions=interactions,
            segments=segments,
            scenario=scenario,
        )
        case = f"glucose<54 {policy.name} S_I x{factor:g} 12h, {segments} segment{'s' if segments > 1 else ''}"
        runs = []
        for rep in range(2):
            t0 = time.perf_counter()
            r = ams(problem, seed=args.seed + rep, n_paths=n_paths, replicas=replicas)
            runs.append((r, time.perf_counter() - t0))
        (r, first), (r2, seconds) = runs
        rows.append(
            {
                "case": case,
                "estimator": "ams",
                "p_exact": None,
                "estimate": r2.value,
                "interval": [r2.probability.lower, r2.probability.upper],
                "relative_error": r2.relative_error,
                "path_equivalents": r2.path_equivalents,
                "seconds": seconds,
                "seconds_first_call_with_compilation": first,
                "segments": segments,
                "paths_per_replica": n_paths,
                "replicas": replicas,
                "iterations": r2.iterations,
                "extinct_replicas": r2.extinct,
                "replica_values": list(r2.replicas),
                "other_seed": {"estimate": r.value, "relative_error": r.relative_error},
            }
        )
        print(rows[-1], flush=True)
        if not plain:
            continue
        n_plain = int(r2.path_equivalents)
        t0 = time.perf_counter()
        evaluate = jax.jit(lambda inc, problem=problem: problem.paths(inc, problem.params)[1])
        T = problem.n_steps
        rng = np.random.default_rng(args.seed)
        q = []
        for start in range(0, n_plain, 4096):
            inc = rng.standard_normal((min(4096, n_plain - start), T, 2)).astype(np.float32)
            q.append(np.asarray(evaluate(inc), float))
        q = np.concatenate(q)
        m = float(q.mean())
        rows.append(
            {
                "case": case,
                "estimator": "plain",
                "p_exact": None,
                "estimate": m,
                "relative_error": float(q.std(ddof=1) / np.sqrt(q.size) / m) if m > 0 else None,
                "path_equivalents": float(n_plain),
                "seconds": time.perf_counter() - t0,
                "segments": segments,
                "max_crossing_probability": float(q.max()),
            }
        )
        print(rows[-1], flush=True)
    rows.append(glucose_certify(args))
    print(rows[-1], flush=True)
    return rows


def glucose_certify(args, factor: float = 0.93, budget: int = 60_000) -> dict:
    """The risk pipeline of ``medsim risk`` (:func:`medsim.policies.evaluate.evaluate_policies`: 64
    plain rollouts, then the rare-event follow-up) with ``rare=ams`` against glucose >= 54 mg/dL,
    epsilon = 1e-4, delta = 0.05, for basal-bolus on :data:`GLUCOSE_PATIENT` with S_I x``factor``."""
    from medsim.policies.evaluate import evaluate_policies
    from medsim.policies.scenarios import MealScenario
    from medsim.policies.spec import parse_inline_spec

    draws = glucose_draws(factor)
    text = f"glucose_mg_dL>=54;horizon=12h;epsilon=1e-4;delta=0.05;rare=ams;rare_budget={budget}"
    spec = parse_inline_spec(text).validate(draws.model)
    scenario = MealScenario(time_sd_h=0.0, size_cv=0.0, start_clock_h=11.0)
    t0 = time.perf_counter()
    report, _ = evaluate_policies(draws, ["basal_bolus:every=15"], spec, n=64, seed=args.seed, scenario=scenario)
    seconds = time.perf_counter() - t0
    entry = report.policies[0]
    (rare,) = entry.rare
    return {
        "case": f"glucose<54 basal_bolus:every=15 S_I x{factor:g} 12h: medsim risk rare=ams certify 1e-4",
        "estimator": "ams (risk follow-up)",
        "p_exact": None,
        "estimate": rare.probability.value,
        "interval": [rare.probability.lower, rare.probability.upper],
        "relative_error": rare.relative_error,
        "path_equivalents": rare.path_equivalents,
        "seconds": seconds,
        "seconds_include_compilation_and_plain_run": True,
        "spec": text,
        "verdict": entry.verdict.decision,
        "statement": entry.verdict.statement,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "rare.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--coverage-reps", type=int, default=200)
    ap.add_argument("--glucose", action="store_true", help="only the glucose cases (added to an existing file)")
    args = ap.parse_args(argv)
    from medsim.policies.risk.rare.references import (
        drifted_bm_exit,
        drifted_bm_problem,
        exit_probability_pde,
        ou_problem,
    )

    t_start = time.perf_counter()
    if args.glucose:
        import json

        rows = glucose_cases(args)
        old = json.loads(args.json.read_text()) if args.json.exists() else {"cases": []}
        old["cases"] = [c for c in old["cases"] if not c["case"].startswith("glucose")] + rows
        old["glucose_command"] = "python benchmarks/rare.py --glucose"
        old["glucose_machine_load_average_at_start"] = os.getloadavg()
        write_json(args.json, old)
        return 0
    steps = 64
    reps = 8 if args.quick else 20
    targets = (1e-6, 1e-8) if args.quick else (1e-4, 1e-6, 1e-8)
    out = {
        "command": "python benchmarks/rare.py" + (" --quick" if args.quick else ""),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
        },
        "cases": [],
    }
    if args.json.exists():  # the glucose cases come from their own run (--glucose): keep them
        import json

        previous = json.loads(args.json.read_text())
        kept = [c for c in previous.get("cases", []) if c["case"].startswith("glucose")]
        for key in ("glucose_command", "glucose_machine_load_average_at_start"):
            if key in previous:
                out[key] = previous[key]
    else:
        kept = []
    for p in targets:
        b = bm_distance(p)
        exact = drifted_bm_exit(-1.0, 1.0, b, 1.0)
        budget = 1e5 if p > 1e-7 else 2e5
        # Splitting spends ~n (1 + k/n log(1/p) / -log(1 - k/n)) paths; 5 % margin under budget.
        n_ams = int(0.95 * budget / (1 + 0.1 * math.log(1 / p) / 0.105) / 100) * 100
        configs = {
            "ams": {"n_paths": n_ams, "kill_fraction": 0.1},
            "subset": {"n_paths": 10_000 if p > 1e-7 else 20_000, "p0": 0.1},
            "is": {"n_paths": int(budget / 2), "ce_paths": 5000, "control": "linear"},
            "plain": {"n_paths": int(budget), "reps": 3},
        }
        problem = drifted_bm_problem(-1.0, 1.0, b, 1.0, steps)
        out["cases"] += run_case(
            f"bm drift half-line p={p:g}", problem, exact, configs, reps, args.seed, not args.quick
        )
        write_json(args.json, out)
    if not args.quick:
        b = 3.0
        exact = exit_probability_pde(1.0, 1.0, None, b, 1.0)
        configs = {"ams": {"n_paths": 2000}, "subset": {"n_paths": 2000}, "is": {"n_paths": 20_000, "ce_paths": 2000}}
        out["cases"] += run_case(
            "ou half-line b=3", ou_problem(1.0, 1.0, None, b, 1.0, steps), exact, configs, reps, args.seed
        )
        write_json(args.json, out)
    out["coverage"] = coverage(args.coverage_reps, 16 if args.quick else steps, args.seed + 7)
    print(out["coverage"], flush=True)
    out["seconds_total"] = time.perf_counter() - t_start
    out["cases"] += kept
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
