"""Neural patient model: training time, simulation throughput, and neural vs mechanistic accuracy.

Run: ``.venv/bin/python benchmarks/neural.py [--quick] [--device cuda]``. Writes
``benchmarks/results/neural.json`` (atomically) and prints the figures and ratios.

1. **Comparison** on a cohort simulated from ``pk_oral_1cmt`` (the JAX simulator, process noise
   on, additive residual error): the neural model is trained on 75% of the subjects and both it
   and the *true* mechanistic model (true structure and population parameters; individual
   parameters inferred from each window's history by importance sampling over simulated SDE
   paths) forecast the held-out subjects' next 1..5 measurements: RMSE, coverage and width of
   50% / 90% intervals. If ``medsim.inference.fit`` is available, a mechanistic model fitted to the
   training subjects is compared too. Then both estimate the risk of one policy (320 mg at 0 and
   12 h, concentration above 12 mg/L before 36 h) for new population patients, against the truth.
2. **Training time** per epoch of the neural model (PK cohort above; a synthetic one-day CGM
   glucose cohort).
3. **Simulation throughput** in virtual patient-days per second (1-minute sub-steps, interval
   statistics for 70 and 180 mg/dL, meals and pump): the neural model stepped in torch (the reference
   stepper in ``tests/neural/torch_simulator.py``), the same
   trained model exported to JAX and stepped by the mechanistic simulator, and the mechanistic
   glucose-insulin model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

from medsim.data.cohort import Cohort
from medsim.inference.neural import TrainSettings, fit_neural, interval_metrics, predictive_samples, train
from medsim.models.glucose_insulin import GlucoseInsulin
from medsim.models.neural import (
    config_from_cohort,
    export_model,
    make_windows,
    sample_neural_population,
)
from medsim.models.pk_oral_1cmt import PKOral1Cmt
from medsim.population.prior import prior_population
from medsim.simulate import Bound, DoseEvents, Simulator, simulate_schedule

# The torch reference stepper of the neural prior SDE lives with the tests (medsim itself simulates
# neural patients through their JAX export); the throughput section still times it for comparison.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.neural.torch_simulator import NeuralSimulator

RESULTS = Path(__file__).parent / "results" / "neural.json"
NOMINAL = np.array([0.25, 0.5, 1, 2, 3.5, 5, 7, 9, 12, 14, 16, 24, 28, 36])


def _machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".neural.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=float)
    os.replace(tmp, path)


def _events(times: list[np.ndarray], amounts: list[np.ndarray], cmts: list[np.ndarray], rates=None) -> DoseEvents:
    width = max(len(t) for t in times)

    def pad(rows, fill):
        return np.array([np.concatenate([r, np.full(width - len(r), fill)]) for r in rows])

    rates = rates or [np.zeros(len(t)) for t in times]
    return DoseEvents.from_arrays(pad(times, np.inf), pad(cmts, 1), pad(amounts, 0.0), pad(rates, 0.0))


# ---------------------------------------------------------------------------------------- cohorts
def pk_cohort(n: int, seed: int) -> Cohort:
    """Subjects of ``pk_oral_1cmt`` (SDE, typical population): 320 mg at 0 h, every other also at 12 h."""
    model, rng = PKOral1Cmt(), np.random.default_rng(seed)
    params = prior_population(model, n, key=jax.random.key(seed))
    doses = [np.array([0.0, 12.0]) if i % 2 else np.array([0.0]) for i in range(n)]
    obs = []
    for i in range(n):
        keep = NOMINAL[NOMINAL <= (36 if i % 2 else 24)] * np.exp(0.1 * rng.standard_normal())
        obs.append(np.sort(rng.choice(keep, size=len(keep) - rng.integers(0, 3), replace=False)))
    width = max(len(t) for t in obs)
    grid = np.array([np.concatenate([t, np.full(width - len(t), t[-1])]) for t in obs])
    events = _events(doses, [np.full(len(d), 320.0) for d in doses], [np.ones(len(d)) for d in doses])
    conc = np.asarray(simulate_schedule(model, params, events, grid, key=jax.random.key(seed + 1), dt=0.02)["conc"])
    values = [conc[i, : len(t)] + 0.694 * rng.standard_normal(len(t)) for i, t in enumerate(obs)]
    return Cohort.from_arrays(
        [str(i + 1) for i in range(n)],
        obs,
        values,
        2,
        dose_time=doses,
        dose_amount=[np.full(len(d), 320.0) for d in doses],
        dose_cmt=1,
        units={"TIME": "h", "DV": "mg/L", "AMT": "mg"},
        name=f"synthetic pk_oral_1cmt (seed {seed})",
    )


def glucose_day(n: int, seed: int) -> tuple[list, list, list, list, np.ndarray]:
    """Meals (CMT 2, g), meal boluses (CMT 1, U) and a basal infusion (CMT 1) for one day (min)."""
    rng = np.random.default_rng(seed)
    basal = np.round(rng.uniform(0.8, 1.6, n), 2)  # U/h
    times, amounts, cmts, rates = [], [], [], []
    for i in range(n):
        meal_t = np.array([450.0, 750.0, 1110.0]) + rng.uniform(-30, 30, 3).round()
        carbs = rng.uniform(40, 80, 3).round()
        times.append(np.concatenate([[0.0], meal_t, meal_t]))
        amounts.append(np.concatenate([[basal[i] / 60 * 1440], carbs, (carbs / 12).round(1)]))
        cmts.append(np.array([1, 2, 2, 2, 1, 1, 1]))
        rates.append(np.array([basal[i] / 60, 0, 0, 0, 0, 0, 0]))
    return times, amounts, cmts, rates, basal


def glucose_cohort(n: int, seed: int) -> Cohort:
    """One day of 15-minute CGM from ``glucose_insulin`` (SDE) under meals, boluses and basal."""
    model, rng = GlucoseInsulin(), np.random.default_rng(seed)
    times, amounts, cmts, rates, basal = glucose_day(n, seed)
    params = prior_population(model, n, key=jax.random.key(seed), covariates={"BASAL": basal})
    grid = np.tile(np.arange(0.0, 1440.0 + 1, 15.0), (n, 1))
    events = _events(times, amounts, cmts, rates)
    g = np.asarray(
        simulate_schedule(model, params, events, grid, key=jax.random.key(seed + 1), dt=1.0)["glucose_mg_dL"]
    )
    g = g + np.sqrt(5.0**2 + (0.05 * g) ** 2) * rng.standard_normal(g.shape)
    return Cohort.from_arrays(
        [str(i + 1) for i in range(n)],
        grid,
        g,
        3,
        dose_time=times,
        dose_amount=amounts,
        dose_cmt=cmts,
        dose_rate=rates,
        covariates={"BASAL": basal},
        units={"TIME": "min", "DV": "mg/dL", "AMT": "U", "BASAL": "U/h"},
        name=f"synthetic glucose_insulin (seed {seed})",
    )


# ------------------------------------------------------------------------- mechanistic predictions
def mechanistic_predictive(subjects, windows, population, *, particles: int, samples: int, steps: int, seed: int):
    """Forecasts of the true-structure model by importance sampling over simulated SDE paths.

    ``population`` maps every parameter of ``pk_oral_1cmt`` to ``(D,)`` draws plus ``omega_<p>``
    and ``res_add``. Each subject gets ``particles`` paths (parameter draw, random effects,
    process noise) simulated through all its observation times; a window with ``h`` observations
    of history weights them by the likelihood of those ``h`` measurements, and its forecasts are
    weighted resamples plus residual error.
    """
    model, rng = PKOral1Cmt(), np.random.default_rng(seed)
    d_all = len(next(iter(population.values())))
    sims, ess = [], []
    for s, subject in enumerate(subjects):
        draw = rng.integers(0, d_all, particles)
        params = {p.name: np.asarray(population[p.name])[draw] for p in model.parameters}
        for p in model.structural:
            params[p.name] = params[p.name] * np.exp(
                np.asarray(population[f"omega_{p.name}"])[draw] * rng.standard_normal(particles)
            )
        grid = np.tile(subject.obs_time, (particles, 1))
        events = _events(
            [subject.dose_time] * particles, [subject.dose_amount] * particles, [subject.dose_cmt] * particles
        )
        f = np.asarray(
            simulate_schedule(model, params, events, grid, key=jax.random.key(seed + 100 + s), dt=0.02)["conc"]
        )
        sd = np.asarray(population["res_add"])[draw][:, None]
        loglik = -0.5 * ((subject.obs_value[None] - f) / sd) ** 2 - np.log(sd)
        sims.append((f, sd[:, 0], np.concatenate([np.zeros((particles, 1)), np.cumsum(loglik, axis=1)], axis=1)))
    out = np.zeros((len(windows), steps, samples))
    for w in range(len(windows)):
        f, sd, cum = sims[windows.subject[w]]
        h = windows.n_history[w]
        logw = cum[:, h] - cum[:, h].max()
        weight = np.exp(logw) / np.exp(logw).sum()
        ess.append(1.0 / np.sum(weight**2))
        pick = rng.choice(len(weight), size=samples, p=weight)
        for k in range(min(steps, f.shape[1] - h)):
            out[w, k] = f[pick, h + k] + sd[pick] * rng.standard_normal(samples)
    mask = windows.target_mask[:, :steps]
    measured = windows.target_value[:, :steps]
    pad = steps - mask.shape[1]
    if pad > 0:
        mask = np.pad(mask, ((0, 0), (0, pad)))
        measured = np.pad(measured, ((0, 0), (0, pad)))
    ess = np.asarray(ess)
    return (
        out,
        measured,
        mask,
        {"min": float(ess.min()), "q05": float(np.quantile(ess, 0.05)), "median": float(np.median(ess))},
    )


def true_population(d: int = 1) -> dict:
    model = PKOral1Cmt()
    out = {p.name: np.full(d, p.typical) for p in model.parameters}
    out.update({f"omega_{p.name}": np.full(d, p.bsv) for p in model.structural})
    out["res_add"] = np.full(d, model.residual["conc"].add)
    return out


def fitted_population(train_part, seed: int):
    """Draws of a mechanistic SVI fit to the training subjects: (population dict, note, PosteriorDraws)."""
    try:
        from medsim.inference import fit
    except ImportError as err:
        return None, f"medsim.inference.fit not available when this benchmark ran ({err})", None
    start = time.perf_counter()
    try:
        draws = fit(train_part, PKOral1Cmt(), method="svi", seed=seed).draws()
    except (TypeError, ValueError, AttributeError) as err:  # an API that differs from the one planned
        return None, f"medsim.inference.fit failed: {err}", None
    out = {k: np.asarray(v) for k, v in draws.population.items()}
    for p in PKOral1Cmt().structural:
        out[f"omega_{p.name}"] = np.asarray(draws.omega.get(p.name, np.zeros(draws.n_draws)))
    out["res_add"] = np.asarray(draws.residual["conc_add"])
    note = f"medsim.inference.fit(method='svi'), {time.perf_counter() - start:.0f} s"
    return out, note, draws


def risk(n: int, model, seed: int, *, neural: bool, dt: float = 0.05, draws=None) -> dict:
    """P(conc > 12 mg/L before 36 h) under 320 mg at 0 and 12 h, new population patients.

    Patients come from the neural model (``neural``), from fitted mechanistic posterior
    ``draws``, or from the true population.
    """
    bound = (Bound("conc", 12.0, "upper"),)
    events = DoseEvents.from_arrays(np.tile([0.0, 12.0], (n, 1)), np.ones((n, 2)), np.full((n, 2), 320.0))
    if neural:
        pop = sample_neural_population(model, n, seed=seed, force=True)
        theta = {k: np.asarray(v, np.float32) for k, v in pop.simulation_parameters().items()}
        res = Simulator(export_model(model), dt=dt, bounds=bound, scheme="euler").advance(
            pop.initial_state(), theta, 0.0, 36.0, key=jax.random.key(seed), events=events
        )
    elif draws is not None:
        from medsim.population import sample_population

        pop = sample_population(draws, n, mode="population", seed=seed)
        params = {k: np.asarray(v, np.float32) for k, v in pop.simulation_parameters().items()}
        res = Simulator(PKOral1Cmt(), dt=dt, bounds=bound).advance(
            pop.initial_state(), params, 0.0, 36.0, key=jax.random.key(seed + 1), events=events
        )
    else:
        params = prior_population(PKOral1Cmt(), n, key=jax.random.key(seed))
        x0 = PKOral1Cmt().initial_state(params)
        res = Simulator(PKOral1Cmt(), dt=0.05, bounds=bound).advance(
            x0, params, 0.0, 36.0, key=jax.random.key(seed + 1), events=events
        )
    p = -np.expm1(np.asarray(res.stats.log_survival)[:, 0])
    grid = np.asarray(res.stats.grid_violation)[:, 0]
    return {
        "p_bridge": float(p.mean()),
        "se": float(p.std(ddof=1) / np.sqrt(n)),
        "p_grid_only": float(grid.mean()),
        "n": n,
        "dt": dt,
    }


# ------------------------------------------------------------------------------------ throughput
def throughput(glu_model, batch: int, seed: int) -> dict:
    times, amounts, cmts, _, basal = glucose_day(batch, seed)
    meals = _events([t[1:] for t in times], [a[1:] for a in amounts], [c[1:] for c in cmts])
    bounds = (Bound("glucose_mg_dL", 70.0, "lower"), Bound("glucose_mg_dL", 180.0, "upper"))
    key = jax.random.key(seed)
    pop = sample_neural_population(glu_model, batch, seed=seed, covariates={"BASAL": basal}, force=True)
    theta = {k: np.asarray(v, np.float32) for k, v in pop.simulation_parameters().items()}
    out = {"batch": batch}
    runs = {
        "neural_torch": (NeuralSimulator(glu_model, dt=1.0, bounds=bounds), pop.initial_state(), theta),
        "neural_exported_jax": (
            Simulator(export_model(glu_model), dt=1.0, bounds=bounds, scheme="euler"),
            pop.initial_state(),
            theta,
        ),
    }
    mech = GlucoseInsulin()
    params = prior_population(mech, batch, key=key, covariates={"BASAL": basal})
    runs["mechanistic_jax"] = (Simulator(mech, dt=1.0, bounds=bounds), mech.initial_state(params), params)
    for name, (sim, x0, p) in runs.items():
        for _ in range(2):  # time the second call: the first compiles (kernels, noise generator)
            start = time.perf_counter()
            res = sim.advance(
                x0, p, 0.0, 1440.0, key=key, events=meals, rates={1: jnp.asarray(basal / 60, jnp.float32)}
            )
            jax.block_until_ready(jnp.asarray(res.stats.log_survival))
            wall = time.perf_counter() - start
        out[f"{name}_patient_days_per_s"] = batch / wall
    out["ratio_neural_torch_to_mechanistic_jax"] = (
        out["neural_torch_patient_days_per_s"] / out["mechanistic_jax_patient_days_per_s"]
    )
    out["ratio_neural_exported_jax_to_mechanistic_jax"] = (
        out["neural_exported_jax_patient_days_per_s"] / out["mechanistic_jax_patient_days_per_s"]
    )
    return out


def _report(figures: dict) -> None:
    n, m = figures["heldout_forecasts_pk"]["neural"], figures["heldout_forecasts_pk"]["mechanistic_true_parameters"]
    print(f"held-out RMSE (mg/L): neural {n['rmse']:.3f}, mechanistic (true parameters) {m['rmse']:.3f}, ", end="")
    print(f"ratio {n['rmse'] / m['rmse']:.2f}")
    for level in ("0.5", "0.9"):
        print(
            f"  {level} intervals coverage / width: neural {n['coverage'][level]:.3f} / {n['width'][level]:.2f}, ",
            end="",
        )
        print(f"mechanistic {m['coverage'][level]:.3f} / {m['width'][level]:.2f}")
    f = figures["heldout_forecasts_pk"]["mechanistic_fitted"]
    print(f"fitted mechanistic: {f['method']}")
    if "rmse" in f:
        print(f"  RMSE {f['rmse']:.3f}, coverage {f['coverage']['0.5']:.3f} / {f['coverage']['0.9']:.3f}, ", end="")
        print(f"widths {f['width']['0.5']:.2f} / {f['width']['0.9']:.2f}")
    r = figures["risk_pk_conc_above_12_by_36h"]
    for name, v in r.items():
        print(f"risk P(conc > 12 mg/L by 36 h) {name}: {v['p_bridge']:.3f} +- {v['se']:.3f} (dt {v['dt']:.3g} h)")
    t = figures["training"]
    print(f"training: {t['pk_seconds_per_epoch_median']:.2f} s/epoch (PK), ", end="")
    print(f"{t['glucose_seconds_per_epoch_median']:.2f} s/epoch (glucose)")
    sp = figures["throughput_glucose_1min_steps"]
    print(f"throughput, glucose patient-days/s (batch {sp['batch']}):")
    for name in ("neural_torch", "neural_exported_jax", "mechanistic_jax"):
        print(f"  {name}: {sp[name + '_patient_days_per_s']:.0f}")
    print(f"  ratio neural torch / mechanistic JAX: {sp['ratio_neural_torch_to_mechanistic_jax']:.4f}")
    print(f"  ratio neural in JAX / mechanistic JAX: {sp['ratio_neural_exported_jax_to_mechanistic_jax']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--device", default="cpu", help="torch device for training and the torch simulator")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    sizes = {
        "subjects": 32 if q else 64,
        "epochs": 80 if q else 300,
        "samples": 100 if q else 200,
        "particles": 1000 if q else 10000,
        "glucose_subjects": 8 if q else 16,
        "glucose_epochs": 2 if q else 3,
        "batch": 1024 if q else 4096,
    }
    steps, seed = 5, args.seed
    started = time.perf_counter()
    cohort = pk_cohort(sizes["subjects"], seed)
    settings = TrainSettings(epochs=sizes["epochs"], patience=30, device=args.device)
    fit = fit_neural(
        cohort,
        seed=seed,
        template=PKOral1Cmt(),
        test_fraction=0.25,
        settings=settings,
        steps_ahead=steps,
        calibration_samples=sizes["samples"],
    )
    model = fit.model
    train_part, test_part = cohort.split(0.75, seed)
    if tuple(test_part.ids) != fit.test_ids:
        raise RuntimeError("the benchmark's test split differs from fit_neural's")
    windows = make_windows(test_part.subjects, model.config)
    neural = predictive_samples(model, test_part.subjects, steps_ahead=steps, samples=sizes["samples"], seed=seed)
    heldout = {"neural": interval_metrics(neural["simulated"], neural["measured"], neural["mask"])}
    sim, meas, mask, ess = mechanistic_predictive(
        test_part.subjects,
        windows,
        true_population(),
        particles=sizes["particles"],
        samples=sizes["samples"],
        steps=steps,
        seed=seed,
    )
    heldout["mechanistic_true_parameters"] = {**interval_metrics(sim, meas, mask), "effective_sample_size": ess}
    fitted, how, fitted_draws = fitted_population(train_part, seed)
    heldout["mechanistic_fitted"] = {"method": how}
    if fitted is not None:
        sim, meas, mask, ess = mechanistic_predictive(
            test_part.subjects,
            windows,
            fitted,
            particles=sizes["particles"],
            samples=sizes["samples"],
            steps=steps,
            seed=seed,
        )
        heldout["mechanistic_fitted"].update({**interval_metrics(sim, meas, mask), "effective_sample_size": ess})
    risks = {
        "truth_mechanistic": risk(4000, None, seed, neural=False),
        "neural": risk(4000, model, seed, neural=True),
        "neural_at_training_dt": risk(4000, model, seed, neural=True, dt=model.config.dt),
    }
    if fitted_draws is not None:
        risks["mechanistic_fitted"] = risk(4000, None, seed, neural=False, draws=fitted_draws)
    epoch_s = [r.seconds for r in fit.training.history]
    glu = glucose_cohort(sizes["glucose_subjects"], seed)
    glu_cfg = config_from_cohort(glu, template=GlucoseInsulin(), name="neural-glucose", horizon=240.0, dt=5.0)
    glu_fit = train(
        glu.subjects,
        glu_cfg,
        seed=seed,
        settings=TrainSettings(
            epochs=sizes["glucose_epochs"], max_cuts_per_subject=12, device=args.device, kl_warmup_epochs=1
        ),
    )
    speed = throughput(glu_fit.model, sizes["batch"], seed)
    figures = {
        "heldout_forecasts_pk": heldout,
        "risk_pk_conc_above_12_by_36h": risks,
        "training": {
            "pk_seconds_per_epoch_median": float(np.median(epoch_s)),
            "pk_epochs": len(epoch_s),
            "pk_best_epoch": fit.training.best_epoch,
            "pk_train_windows": fit.training.n_train_windows,
            "pk_fit_seconds": fit.training.seconds,
            "neural_weights": model.n_weights(),
            "glucose_seconds_per_epoch_median": float(np.median([r.seconds for r in glu_fit.history])),
            "glucose_train_windows": glu_fit.n_train_windows,
        },
        "throughput_glucose_1min_steps": speed,
    }
    result = {
        "figures": figures,
        "sizes": sizes,
        "seed": seed,
        "device": args.device,
        "machine": _machine(),
        "versions": {"torch": torch.__version__, "jax": jax.__version__, "numpy": np.__version__},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "wall_seconds": time.perf_counter() - started,
    }
    _write(args.out, result)
    _report(figures)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
