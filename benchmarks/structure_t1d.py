"""Structural extrapolation check: can a glucose model's equations reach a test day's glucose?

``external_t1d.py`` judges a whole fit (SVI, process noise, sensor model, twin forecast) in
20-30 minutes per cohort. Before that, a candidate structure can be screened in a few minutes:
for each patient, the model's noise-free equations (every process-noise scale 0, so the
disturbances stay at 0) are fitted to the simulator's true plasma glucose (``bg_true``) on the
training days by maximum a posteriori, and then run through the test day of each cohort from
the recorded meals and insulin. What is left on the test day is error of the structure (and of
its parameters as the training days identify them), not of the noise model or of the inference.
A dose scenario (``--cohort`` with boluses 1.5x too large on day 3, ``t1d_cohort.py
--bolus-factor 1.5``) asks whether the structure extrapolates to doses it was not fitted on.

    python benchmarks/structure_t1d.py --cohort meals.csv --cohort over.csv [--models t1d_ou,uva_padova]
        [--fix Vg,k1] [--train-days 2] [--test-day 3] [--fit-to bg_true|cgm] [--posterior FIT.nc] [--json OUT]

Every cohort must hold the same patients with the same training days (a scenario differs from
the first cohort only from the test day on; checked). Tidy columns as ``external_t1d.py``:
``patient, time_min, bg_true, cgm, cho_g_per_min, insulin_U_per_min`` in 3-minute rows, optional
``weight_kg``.

The fit, per patient and model: the structural parameters (those ``--fix`` does not hold) as
``typical * exp(z)``, ``z`` with a normal prior of SD ``bsv`` (between-subject SD), or the
parameter's ``prior_log_sd`` where it has no between-subject variability; glucose every 15 min
with a log-normal error of SD 0.1 (10 %, the order of the fits' residuals); L-BFGS-B within
+-3 prior SDs. Integration: classical Runge-Kutta, 1-min steps, inputs constant over each 3-min
row (simglucose's sample time). Insulin enters the model's insulin compartment (CMT 1);
carbohydrate as eaten enters CMT 6 where the model has it (``uva_padova``: carbohydrate eaten)
and CMT 2 otherwise. ``BASAL`` is the median insulin rate of the first day (the pump's basal
rate; boluses are a few rows a day) in U/h; ``WT`` the ``weight_kg`` column where there is one.

``--fit-to cgm`` fits the model's noise-free interstitial glucose to the CGM readings instead
(every 15 min, the same error model), as a whole fit sees the patient: the gap between the two
runs is what the sensor's delay and error cost the structure's parameters, before any process
noise or hierarchical inference. The forecast is scored against the true plasma glucose either way.

``--posterior FIT.nc`` (repeatable) scores a whole fit of the same patients kept by
``external_t1d.py --save-posteriors`` the same way: 40 of its draws per subject run the noise-free
equations from time 0 (disturbances at 0: what the fit's parameters explain) and from each draw's
filtered state at the end of training (what a twin's forecast starts from), and the median path
is scored. Set beside the MAP fit it says how much of a whole fit's forecast error is its
parameters and how much the filtered disturbances carry. ``--models ''`` skips the MAP fits.

Scores per cohort's test day: RMSE and mean error (bias) of the noise-free forecast against the
true glucose, the mean error where the true glucose is below 90 mg/dL (``low_bias``: positive
means the forecast does not go as low as the patient did), and the forecast's minimum against
the true minimum.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.optimize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.external_t1d import INTERSTITIAL, screen_cohort
from medsim.models import get

ROW_MIN = 3.0
SUBSTEPS = 3
FIT_EVERY_MIN = 15.0
LOG_ERROR_SD = 0.1
LOW_MG_DL = 90.0
ROWS_PER_DAY = round(1440 / ROW_MIN)


def read_cohort(path: str) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """(patient -> rows sorted by time, patients left out and why).

    Missing columns (``external_t1d.screen_cohort`` names them) and a step other than 3 min are
    errors. A patient whose true glucose leaves the physiological domain (missing, or at or below
    0 mg/dL) is left out and listed, as ``external_t1d.py`` leaves it out.
    """
    try:
        tidy, excluded = screen_cohort(pd.read_csv(path), path)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    out = {}
    for patient, rows in tidy.groupby("patient", sort=False):
        rows = rows.sort_values("time_min").reset_index(drop=True)
        step = np.diff(rows["time_min"].to_numpy(float))
        if step.size == 0 or not np.allclose(step, ROW_MIN):
            raise SystemExit(
                f"{path}: patient {patient}: rows must be {ROW_MIN:g} min apart (simglucose's sample time)"
            )
        out[str(patient)] = rows
    return out, excluded


def check_same_training(cohorts: list[dict[str, pd.DataFrame]], names: list[str], n_train: int) -> None:
    """Every cohort has the first one's patients and, on the training rows, its data exactly."""
    first = cohorts[0]
    for cohort, name in zip(cohorts[1:], names[1:], strict=True):
        if set(cohort) != set(first):
            raise SystemExit(
                f"{name}: patients {sorted(set(cohort) ^ set(first))} are not in both {names[0]} and {name}"
            )
        for patient, rows in cohort.items():
            a, b = first[patient].iloc[:n_train], rows.iloc[:n_train]
            for column in ("bg_true", "cho_g_per_min", "insulin_U_per_min"):
                if len(b) < n_train or not np.allclose(a[column].to_numpy(float), b[column].to_numpy(float)):
                    raise SystemExit(
                        f"{name}: patient {patient}: column {column} differs from {names[0]} on the training days; "
                        "a scenario must share them"
                    )


def input_states(model) -> tuple[str, str]:
    """(insulin state, carbohydrate-as-eaten state) of ``model``'s compartments."""
    carbohydrate = 6 if 6 in model.dose_targets else 2
    return model.dose_targets[1], model.dose_targets[carbohydrate]


#: The column each ``--fit-to`` choice fits, and the model observable it is compared with there
#: (``None``: the model's noise-free interstitial glucose, see ``interstitial_observable``).
FIT_TO = {"bg_true": "glucose_mg_dL", "cgm": None}


def interstitial_observable(model) -> str:
    """The name of ``model``'s interstitial glucose without sensor error (what a CGM reads, noise aside)."""
    names = {o.name for o in model.observables}
    for name in INTERSTITIAL:
        if name in names:
            return name
    raise SystemExit(f"--fit-to cgm: model {model.name} has no interstitial glucose observable ({INTERSTITIAL})")


def simulate(model, theta, insulin, carbohydrate, observable: str = "glucose_mg_dL", start=None, final=False):
    """Noise-free ``observable`` (mg/dL) at the start of each 3-min row; RK4 with 1-min steps.

    From the model's initial state (disturbances at 0), or from ``start`` (state name -> value)
    at the start of the first row given. With ``final``: also the state at the end of the last row."""
    x0 = model.initial_state(theta)
    names = tuple(x0)
    if start is not None:
        x0 = {n: start[n] for n in names}
    insulin_state, carb_state = input_states(model)
    h = ROW_MIN / SUBSTEPS

    def f(x, u_insulin, u_carb):
        rate = {insulin_state: u_insulin, carb_state: u_carb}
        dx = model.drift(0.0, dict(zip(names, x, strict=True)), theta, rate)
        return tuple(dx[n] for n in names)

    def row(x, u):
        glucose = model.observe(dict(zip(names, x, strict=True)), theta)[observable]
        for _ in range(SUBSTEPS):
            k1 = f(x, *u)
            k2 = f(tuple(a + 0.5 * h * b for a, b in zip(x, k1, strict=True)), *u)
            k3 = f(tuple(a + 0.5 * h * b for a, b in zip(x, k2, strict=True)), *u)
            k4 = f(tuple(a + h * b for a, b in zip(x, k3, strict=True)), *u)
            x = tuple(
                a + h / 6.0 * (b1 + 2.0 * b2 + 2.0 * b3 + b4)
                for a, b1, b2, b3, b4 in zip(x, k1, k2, k3, k4, strict=True)
            )
        return x, glucose

    end, glucose = jax.lax.scan(row, tuple(x0[n] for n in names), (insulin, carbohydrate))
    return (glucose, dict(zip(names, end, strict=True))) if final else glucose


def free_parameters(model, fix: set[str]) -> tuple[list[str], np.ndarray]:
    """Structural parameters fitted, and their prior SDs on the log scale."""
    names, scales = [], []
    for p in model.structural:
        scale = p.bsv if p.bsv > 0 else p.prior_log_sd
        if p.name in fix or not scale:
            continue
        names.append(p.name)
        scales.append(scale)
    return names, np.asarray(scales, float)


def covariates(model, rows: pd.DataFrame) -> dict[str, float]:
    out = {"BASAL": float(np.median(rows["insulin_U_per_min"].to_numpy(float)[:ROWS_PER_DAY])) * 60.0}
    if "weight_kg" in rows and any(c.name == "WT" for c in model.covariates):
        out["WT"] = float(rows["weight_kg"].iloc[0])
    return out


class Fitter:
    """MAP fits of ``model``'s noise-free equations; the objective and the forecast are compiled
    once per model (every patient has the same number of rows) and take a patient's data as arguments."""

    def __init__(self, model, fix: set[str], fit_to: str = "bg_true"):
        self.model, self.column = model, fit_to
        self.observable = FIT_TO[fit_to] or interstitial_observable(model)
        self.typical = {k: jnp.asarray(float(v), jnp.float64) for k, v in model.typical_parameters().items()}
        for p in model.parameters:
            if p.kind == "process_noise":
                self.typical[p.name] = jnp.asarray(0.0, jnp.float64)
        self.free, self.scale = free_parameters(model, fix)
        self.every = round(FIT_EVERY_MIN / ROW_MIN)
        self.value_and_grad = jax.jit(jax.value_and_grad(self.loss))
        self.forecast = jax.jit(
            lambda z, cov, insulin, carbohydrate: simulate(model, self.theta(z, cov), insulin, carbohydrate)
        )

    def theta(self, z, cov):
        return self.model.individual_parameters(self.typical, {n: z[i] for i, n in enumerate(self.free)}, cov)

    def loss(self, z, cov, insulin, carbohydrate, truth):
        glucose = simulate(self.model, self.theta(z, cov), insulin, carbohydrate, self.observable)[:: self.every]
        seen = jnp.isfinite(truth)  # a missing CGM reading carries nothing
        truth = jnp.where(seen, truth, 1.0)
        residual = (jnp.log(jnp.maximum(glucose, 1.0)) - jnp.log(jnp.maximum(truth, 1.0))) / LOG_ERROR_SD
        residual = jnp.where(seen, residual, 0.0)
        return 0.5 * jnp.sum(residual**2) + 0.5 * jnp.sum((z / self.scale) ** 2)

    def fit(self, rows: pd.DataFrame, n_train: int):
        """(MAP ``z`` of the patient, covariates, optimiser result) on the training rows."""
        cov = {k: jnp.asarray(v, jnp.float64) for k, v in covariates(self.model, rows).items()}
        data = (
            cov,
            jnp.asarray(rows["insulin_U_per_min"].to_numpy(float)[:n_train]),
            jnp.asarray(rows["cho_g_per_min"].to_numpy(float)[:n_train]),
            jnp.asarray(rows[self.column].to_numpy(float)[: n_train : self.every]),
        )

        def objective(z):
            value, grad = self.value_and_grad(jnp.asarray(z), *data)
            if not np.isfinite(float(value)):
                return 1e12, np.zeros_like(z)
            return float(value), np.asarray(grad, float)

        bounds = [(-3.0 * s, 3.0 * s) for s in self.scale]
        result = scipy.optimize.minimize(
            objective, np.zeros(len(self.free)), jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 300}
        )
        return jnp.asarray(result.x), cov, result


def day_scores(forecast: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    error = forecast - truth
    low = truth < LOW_MG_DL
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "bias": float(np.mean(error)),
        "low_bias": float(np.mean(error[low])) if low.any() else None,
        "n_low": int(low.sum()),
        "min_forecast": float(forecast.min()),
        "min_true": float(truth.min()),
    }


def mean_scores(scores: list[dict]) -> dict[str, float | None]:
    """The patients' mean RMSE and bias, and mean ``low_bias`` over the patients who went below 90."""
    lows = [s["low_bias"] for s in scores if s["low_bias"] is not None]
    return {
        "rmse": float(np.mean([s["rmse"] for s in scores])),
        "bias": float(np.mean([s["bias"] for s in scores])),
        "low_bias": float(np.mean(lows)) if lows else None,
    }


def run_model(model_name: str, cohorts, names, args) -> dict:
    model = get(model_name)
    day = ROWS_PER_DAY
    n_train, test = args.train_days * day, slice((args.test_day - 1) * day, args.test_day * day)
    fitter = Fitter(model, set(args.fix), args.fit_to)
    patients, started = [], time.perf_counter()
    for patient, rows in cohorts[0].items():
        z, cov, result = fitter.fit(rows, n_train)
        theta = fitter.theta(z, cov)
        entry = {"patient": patient, "converged": bool(result.success), "iterations": int(result.nit)}
        for cohort, name in zip(cohorts, names, strict=True):
            r = cohort[patient].iloc[: args.test_day * day]
            forecast = np.asarray(
                fitter.forecast(
                    z,
                    cov,
                    jnp.asarray(r["insulin_U_per_min"].to_numpy(float)),
                    jnp.asarray(r["cho_g_per_min"].to_numpy(float)),
                )
            )
            truth = r["bg_true"].to_numpy(float)
            if "train_rmse" not in entry:
                entry["train_rmse"] = float(np.sqrt(np.mean((forecast[:n_train] - truth[:n_train]) ** 2)))
            entry[name] = day_scores(forecast[test], truth[test])
        entry["parameters"] = {n: float(theta[n]) for n in fitter.free}
        patients.append(entry)
        print(f"  {model_name} {patient}: train RMSE {entry['train_rmse']:.1f}", flush=True)
    summary = {"train_rmse": float(np.mean([p["train_rmse"] for p in patients]))}
    summary |= {name: mean_scores([p[name] for p in patients]) for name in names}
    return {
        "model": model_name,
        "version": model.version,
        "fixed": sorted(args.fix),
        "fit_to": args.fit_to,
        "summary": summary,
        "patients": patients,
        "seconds": time.perf_counter() - started,
    }


def kept_fit_forecasts(path: str, cohorts, names, args, n_draws: int = 40) -> dict:
    """The noise-free forecasts of a whole fit kept by ``external_t1d.py --save-posteriors``.

    For each fitted subject, ``n_draws`` draws spread evenly over the posterior give individual
    parameters (population values, the subject's fitted random effects, its covariates as the fit
    saw them); each runs the noise-free equations (a) from time 0 with every disturbance at 0, and
    (b) from that draw's filtered state at the end of the subject's training record, which holds
    the disturbances and the sensor's state as the filter left them. Each path's median over the
    draws is scored as a MAP fit's forecast is. Set beside a MAP fit of the same structure, (a) says
    what the whole fit's parameters explain without disturbances and (b) what a twin's forecast
    owes to the filtered state.
    """
    from medsim.inference.posterior import Posterior

    posterior = Posterior.load(path)
    out = draws_forecasts(posterior.model, posterior.draws(), cohorts, names, args, n_draws, f"--posterior {path}")
    return {"posterior": str(path), "method": posterior.method, "fixed": sorted(posterior.priors.fixed), **out}


def draws_forecasts(model, draws, cohorts, names, args, n_draws: int = 40, label: str = "posterior") -> dict:
    """``kept_fit_forecasts`` on :class:`medsim.population.PosteriorDraws` (``label`` names them in errors)."""
    from medsim.population.individuals import individual_values

    ids = [str(s) for s in draws.subject_ids]
    if set(ids) != set(cohorts[0]):
        raise SystemExit(
            f"{label}: its subjects and the cohort's patients differ: {sorted(set(ids) ^ set(cohorts[0]))}"
        )
    if not draws.state or draws.state_time is None:
        raise SystemExit(f"{label}: it holds no filtered state (saved by an older medsim)")
    day = ROWS_PER_DAY
    n_train, test = args.train_days * day, slice((args.test_day - 1) * day, args.test_day * day)
    pick = np.unique(np.linspace(0, draws.n_draws - 1, min(n_draws, draws.n_draws)).round().astype(int))
    # one compiled path per start, mapped over the draws (the inputs are the patient's, shared)
    run = jax.jit(
        jax.vmap(
            lambda theta, start, insulin, carbohydrate: simulate(model, theta, insulin, carbohydrate, start=start),
            in_axes=(0, 0, None, None),
        )
    )
    from_zero = jax.jit(
        jax.vmap(
            lambda theta, insulin, carbohydrate: simulate(model, theta, insulin, carbohydrate), in_axes=(0, None, None)
        )
    )
    population = {k: np.asarray(v, float)[pick] for k, v in draws.population.items()}
    patients = []
    for s, patient in enumerate(ids):
        eta = {k: np.asarray(v, float)[pick, s] for k, v in draws.eta.items()}
        cov = {k: np.full(pick.size, float(np.asarray(v)[s])) for k, v in draws.covariates.items()}
        theta = {k: jnp.asarray(v) for k, v in individual_values(model, population, eta, cov, pick.size).items()}
        # the filtered state is at the subject's last training event; the forecast resumes at the nearest
        # 3-min row (exact for external_t1d.py's fits, whose training records end at a day boundary)
        first = round(float(draws.state_time[s]) / ROW_MIN)
        if not 0 < first <= n_train:
            raise SystemExit(
                f"{label}: subject {patient}'s filtered state is at {draws.state_time[s]:g} min, "
                f"not within the {args.train_days} training days"
            )
        start = {k: jnp.asarray(np.asarray(v, float)[pick, s]) for k, v in draws.state.items()}
        entry = {"patient": patient}
        for cohort, name in zip(cohorts, names, strict=True):
            r = cohort[patient].iloc[: args.test_day * day]
            insulin = jnp.asarray(r["insulin_U_per_min"].to_numpy(float))
            carbohydrate = jnp.asarray(r["cho_g_per_min"].to_numpy(float))
            truth = r["bg_true"].to_numpy(float)
            from_t0 = np.median(np.asarray(from_zero(theta, insulin, carbohydrate)), axis=0)
            resumed = np.median(np.asarray(run(theta, start, insulin[first:], carbohydrate[first:])), axis=0)
            from_filtered = np.concatenate([np.full(first, np.nan), resumed])
            if "train_rmse" not in entry:
                entry["train_rmse"] = float(np.sqrt(np.mean((from_t0[:n_train] - truth[:n_train]) ** 2)))
            entry[name] = {
                "from_t0": day_scores(from_t0[test], truth[test]),
                "from_filtered": day_scores(from_filtered[test], truth[test]),
            }
        patients.append(entry)
    summary = {"train_rmse": float(np.mean([p["train_rmse"] for p in patients]))}
    for name in names:
        summary[name] = {k: mean_scores([p[name][k] for p in patients]) for k in ("from_t0", "from_filtered")}
    return {
        "model": model.name,
        "version": model.version,
        "n_draws": int(pick.size),
        "summary": summary,
        "patients": patients,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", action="append", required=True, help="tidy CSV (repeat: scenarios of one cohort)")
    parser.add_argument("--models", default="t1d_ou", help="comma-separated model names")
    parser.add_argument("--fix", default="", help="comma-separated parameters held at their typical values")
    parser.add_argument("--train-days", type=int, default=2)
    parser.add_argument("--test-day", type=int, default=3)
    parser.add_argument(
        "--fit-to", choices=sorted(FIT_TO), default="bg_true", help="fit true plasma glucose or the CGM readings"
    )
    parser.add_argument(
        "--posterior",
        action="append",
        default=[],
        help="a whole fit of these patients kept by external_t1d.py --save-posteriors: score its noise-free "
        "forecasts from time 0 and from the filtered state (repeatable; with --models '' no MAP fit is run)",
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    args.fix = [f for f in args.fix.split(",") if f]
    if args.test_day <= args.train_days:
        parser.error("--test-day must come after the training days")
    models = [m for m in args.models.split(",") if m]
    for name in models:
        model = get(name)  # an unknown model fails here, before any work
        if args.fit_to == "cgm":
            interstitial_observable(model)
        unknown = sorted(set(args.fix) - {p.name for p in model.parameters})
        if unknown:
            parser.error(f"--fix: model {name} has no parameter(s) {unknown}")
    names = [Path(c).stem for c in args.cohort]
    if len(set(names)) != len(names):
        parser.error(f"--cohort: file names must differ (they name the scenarios): {names}")
    read = [read_cohort(c) for c in args.cohort]
    excluded = {p: why for _, left_out in read for p, why in left_out.items()}
    for patient, why in excluded.items():
        print(f"{patient} left out: {why}")
    cohorts = [{p: r for p, r in cohort.items() if p not in excluded} for cohort, _ in read]
    day = ROWS_PER_DAY
    for cohort, name in zip(cohorts, names, strict=True):
        short = [p for p, r in cohort.items() if len(r) < args.test_day * day]
        if short:
            raise SystemExit(f"{name}: patient(s) {short} have fewer than {args.test_day} days of rows")
    check_same_training(cohorts, names, args.train_days * day)
    for path in args.posterior:
        if not Path(path).is_file():
            raise SystemExit(f"--posterior {path}: no such file")
    results, kept = [], []
    for name in models:
        with jax.enable_x64(True):  # float64 for the fit, without changing the caller's default
            out = run_model(name, cohorts, names, args)
        results.append(out)
        train = out["summary"]["train_rmse"]
        print(f"{name} (version {out['version']}), {out['seconds']:.0f} s: training RMSE {train:.1f}")
        for cohort in names:
            s = out["summary"][cohort]
            low = "-" if s["low_bias"] is None else f"{s['low_bias']:+.1f}"
            print(f"  {cohort}: test-day RMSE {s['rmse']:.1f}, bias {s['bias']:+.1f}, below {LOW_MG_DL:g}: {low} mg/dL")
    for path in args.posterior:
        with jax.enable_x64(True):
            out = kept_fit_forecasts(path, cohorts, names, args)
        kept.append(out)
        print(f"{path} ({out['model']} version {out['version']}, {out['method']}, {out['n_draws']} draws):")
        print(f"  from time 0: training RMSE {out['summary']['train_rmse']:.1f}")
        for cohort in names:
            for start_from in ("from_t0", "from_filtered"):
                s = out["summary"][cohort][start_from]
                low = "-" if s["low_bias"] is None else f"{s['low_bias']:+.1f}"
                print(
                    f"  {cohort} {start_from}: test-day RMSE {s['rmse']:.1f}, bias {s['bias']:+.1f}, "
                    f"below {LOW_MG_DL:g}: {low} mg/dL"
                )
    if args.json:
        from benchmarks.machine import machine_info
        from medsim.data.tablefile import atomic_write
        from medsim.inference.provenance import package_versions

        record = {
            "command": "python benchmarks/structure_t1d.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "cohorts": args.cohort,
            "excluded_patients": excluded,
            "machine": machine_info(cores=1),
            "versions": package_versions(),
            "runs": results,
            "kept_fits": kept,
        }
        text = json.dumps(record, indent=1) + "\n"
        atomic_write(Path(args.json), lambda tmp: tmp.write_text(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
