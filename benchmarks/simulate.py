"""Simulator throughput: medsim against a numpy loop, torchsde, diffrax, simglucose and the RNG roofline.

Run: ``.venv/bin/python benchmarks/simulate.py [--quick]`` (``--quick`` < 1 min). Writes
``benchmarks/results/simulate.json``. Figures are best-of-repeats wall-clock throughputs after a
warm-up (compilation excluded), at 1-minute sub-steps with interval statistics on for medsim (two
bounds, Brownian-bridge crossing probabilities, extremes, time outside).

Environment set here, at the entry point only: JAX gets one CPU device per core
(``jax_num_cpu_devices``; the simulator spreads a batch over them) and torch ``os.cpu_count()``
intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

CORES = os.cpu_count() or 1
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", CORES)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from machine import machine_info  # noqa: E402  (benchmarks/, on the path when run as a script)

import medsim.models as registry  # noqa: E402
from medsim.population.prior import prior_population  # noqa: E402
from medsim.simulate import Bound, Simulator  # noqa: E402
from medsim.simulate import noise as medsim_noise  # noqa: E402

DAY_MIN = 1440
BOUNDS = {
    "glucose_insulin": (Bound("glucose_mg_dL", 70.0, "lower"), Bound("glucose_mg_dL", 180.0, "upper")),
    "pk_oral_1cmt": (Bound("conc", 2.0, "lower"), Bound("conc", 20.0, "upper")),
    "pk_iv_1cmt": (Bound("conc", 10.0, "lower"), Bound("conc", 40.0, "upper")),
}
FIRST_DOSE = {"glucose_insulin": {}, "pk_oral_1cmt": {"depot": 320.0}, "pk_iv_1cmt": {"central": 26.0}}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _best(fn, repeats: int, work: float, warm_up: bool = True) -> dict[str, float]:
    """Throughput ``work / s`` after a warm-up (compilation): ``wall`` from the fastest repeat,
    ``cpu`` from the least process CPU time (all threads) — the per-core-second rate, which other
    jobs sharing the machine distort much less than wall time."""
    if warm_up:
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {"wall": work / min(walls), "cpu": work / max(min(cpus), 1e-9)}


def _setup(name: str, n: int):
    model = registry.get(name)
    theta = {k: np.asarray(v, np.float32) for k, v in prior_population(model, n, key=jax.random.key(0)).items()}
    x0 = {k: np.asarray(v, np.float32) for k, v in model.initial_state(theta).items()}
    for s, amount in FIRST_DOSE[name].items():
        x0[s] = x0[s] + np.float32(amount)
    rate = {"insulin_sc": theta["BASAL"] / 60.0} if name == "glucose_insulin" else {}
    steps = DAY_MIN
    dt = 1.0 if model.time_unit == "min" else 1.0 / 60.0
    return model, theta, x0, rate, steps, dt


# ---------------------------------------------------------------------------------------- medsim
def bench_medsim(name: str, n: int, repeats: int, scheme: str = "milstein", meals: bool = False) -> dict:
    model, theta, x0, _, steps, dt = _setup(name, n)
    sim = Simulator(model, dt=dt, bounds=BOUNDS[name], scheme=scheme)
    th = {k: jnp.asarray(v) for k, v in theta.items()}
    x = {k: jnp.asarray(v) for k, v in x0.items()}
    rates = {1: th["BASAL"] / 60.0} if name == "glucose_insulin" else None
    events = None
    if meals:  # three meals with boluses at per-patient times: the event path splits sub-steps
        from medsim.simulate import DoseEvents

        jitter = np.random.default_rng(0).uniform(-30, 30, (n, 1))
        times = np.array([[420.0, 420.0, 720.0, 720.0, 1080.0, 1080.0]]) + jitter
        cmt = np.tile([[2, 1, 2, 1, 2, 1]], (n, 1))
        amount = np.tile([[50.0, 5.0, 70.0, 7.0, 80.0, 8.0]], (n, 1))
        events = DoseEvents.from_arrays(times, cmt, amount)

    def run():
        res = sim.advance(x, th, 0.0, steps * dt, key=jax.random.key(1), events=events, rates=rates)
        jax.block_until_ready(res.stats.log_survival)

    return _best(run, repeats, n * steps)


# ----------------------------------------------------------------------------------- numpy loop
def bench_numpy(name: str, n: int) -> dict:
    """Per-patient Euler–Maruyama loop calling the model's own equations on Python floats, with
    the same statistics (extremes, bridge log-survival) accumulated per step."""
    model, theta, x0, rate, steps, dt = _setup(name, n)
    bounds = BOUNDS[name]
    obs = bounds[0].observable
    log_scale = model.observable(obs).bridge_scale == "log"
    rng = np.random.default_rng(0)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        th = {k: float(v[i]) for k, v in theta.items()}
        x = {k: float(v[i]) for k, v in x0.items()}
        r = {k: float(v[i]) for k, v in rate.items()}
        y = model.observe(x, th)[obs]
        scale = model_scale(model, obs, x, th)  # dy/dx of the noisy state (constant for these models)
        lo = hi = y
        log_surv = [0.0] * len(bounds)
        z_noise = rng.standard_normal(steps)
        for j in range(steps):
            f = model.drift(j * dt, x, th, r)
            g = model.diffusion(j * dt, x, th)
            new = {s: x[s] + f[s] * dt for s in x}
            for s, gs in g.items():
                new[s] = max(new[s] + gs * math.sqrt(dt) * z_noise[j], 0.0)
            y1 = model.observe(new, th)[obs]
            for k, b in enumerate(bounds):
                if b.outside(y) or b.outside(y1):
                    log_surv[k] = -math.inf
                elif y > 0 or not log_scale:  # from y = 0 (an empty compartment) no bridge: p = 0
                    z0, z1, zb = (math.log(y), math.log(y1), math.log(b.value)) if log_scale else (y, y1, b.value)
                    sd = next(iter(g.values())) * scale / (y if log_scale else 1.0)  # diffusion of z
                    log_surv[k] += math.log1p(-math.exp(-2 * (zb - z0) * (zb - z1) / (sd * sd * dt)))
            lo, hi, x, y = min(lo, y1), max(hi, y1), new, y1
    return {"wall": n * steps / (time.perf_counter() - start), "cpu": n * steps / (time.process_time() - cpu)}


def model_scale(model, obs, x, th) -> float:
    """d(observable)/d(noisy state) (both shipped families observe the noisy state linearly)."""
    noisy = model.noisy_states[0]
    return model.observe({**x, noisy: x[noisy] + 1.0}, th)[obs] - model.observe(x, th)[obs]


# -------------------------------------------------------------------------------------- torchsde
def bench_torchsde(name: str, n: int, repeats: int) -> dict:
    import torch
    import torchsde

    torch.set_num_threads(CORES)
    model, theta, x0, rate, steps, dt = _setup(name, n)
    names = model.state_names
    noisy = [names.index(s) for s in model.noisy_states]
    th = {k: torch.tensor(np.array(v)) for k, v in theta.items()}
    r = {k: torch.tensor(np.array(v)) for k, v in rate.items()}

    class SDE(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            d = model.drift(t, {s: y[:, i] for i, s in enumerate(names)}, th, r)
            return torch.stack([d[s] for s in names], dim=1)

        def g(self, t, y):
            out = torch.zeros_like(y)
            gg = model.diffusion(t, {s: y[:, i] for i, s in enumerate(names)}, th)
            for i in noisy:
                out[:, i] = gg[names[i]]
            return out

    y0 = torch.stack([torch.tensor(np.array(x0[s])) for s in names], dim=1)
    ts = torch.tensor([0.0, steps * dt])
    sde = SDE()

    def run():
        with torch.no_grad():
            torchsde.sdeint(sde, y0, ts, method="euler", dt=dt)

    return _best(run, repeats, n * steps, warm_up=repeats > 1)  # nothing to compile


# --------------------------------------------------------------------------------------- diffrax
def bench_diffrax(name: str, n: int, repeats: int) -> dict:
    import diffrax

    model, theta, x0, rate, steps, dt = _setup(name, n)
    names = model.state_names
    noisy = [names.index(s) for s in model.noisy_states]

    def one(th, rt, y0, key):
        def drift(t, y, args):
            d = model.drift(t, dict(zip(names, y, strict=True)), th, rt)
            return jnp.stack([d[s] for s in names])

        def diffusion(t, y, args):
            g = model.diffusion(t, dict(zip(names, y, strict=True)), th)
            return (
                jnp.zeros((len(names), len(noisy)), y.dtype)
                .at[jnp.array(noisy), jnp.arange(len(noisy))]
                .set(jnp.stack([g[names[i]] for i in noisy]))
            )

        bm = diffrax.UnsafeBrownianPath(shape=(len(noisy),), key=key)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        sol = diffrax.diffeqsolve(
            terms, diffrax.Euler(), 0.0, steps * dt, dt, y0, max_steps=steps + 1, adjoint=diffrax.ForwardMode()
        )
        return sol.ys[-1]

    fn = jax.jit(jax.vmap(one))
    y0 = jnp.stack([jnp.asarray(x0[s]) for s in names], axis=1)
    keys = jax.random.split(jax.random.key(0), n)
    th = {k: jnp.asarray(v) for k, v in theta.items()}
    rt = {k: jnp.asarray(v) for k, v in rate.items()}
    return _best(lambda: jax.block_until_ready(fn(th, rt, y0, keys)), repeats, n * steps)


def milstein_accuracy(n: int = 32, hours: float = 2.0) -> dict:
    """Strong error at dt = 1 min of Euler and Milstein on the glucose model, against Milstein at
    dt = 1/32 min on the same Brownian paths (diffrax VirtualBrownianTree; diffrax's Euler and
    Itô-Milstein compute the simulator's recursion, see tests/simulate/test_sim_vs_diffrax.py)."""
    import diffrax

    model, theta, x0, rate, _, _ = _setup("glucose_insulin", n)
    names = model.state_names
    gi = names.index("glucose")
    horizon = hours * 60.0

    def solve(th, rt, y0, key, solver, dt):
        def drift(t, y, args):
            d = model.drift(t, dict(zip(names, y, strict=True)), th, rt)
            return jnp.stack([d[s] for s in names])

        def diffusion(t, y, args):
            g = model.diffusion(t, dict(zip(names, y, strict=True)), th)["glucose"]
            return jnp.zeros((len(names), 1), y.dtype).at[gi, 0].set(g)

        bm = diffrax.VirtualBrownianTree(0.0, horizon, tol=2.0**-7, shape=(1,), key=key)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        steps = round(horizon / dt)
        return diffrax.diffeqsolve(terms, solver, 0.0, horizon, dt, y0, max_steps=steps + 1).ys[-1, gi]

    keys = jax.random.split(jax.random.key(5), n)
    y0 = jnp.stack([jnp.asarray(x0[s]) for s in names], axis=1)
    rt = {k: jnp.asarray(v) for k, v in rate.items()}
    out = {}
    for label, sigma in (("default_sigma", None), ("sigma_x5", 5.0)):
        th = {k: jnp.asarray(v) for k, v in theta.items()}
        if sigma is not None:
            th["sigma_glucose"] = th["sigma_glucose"] * sigma
        run = jax.jit(jax.vmap(solve, in_axes=(0, 0, 0, 0, None, None)), static_argnums=(4, 5))
        ref = np.asarray(run(th, rt, y0, keys, diffrax.ItoMilstein(), 1.0 / 32))
        err = {}
        for scheme, solver in (("euler", diffrax.Euler()), ("milstein", diffrax.ItoMilstein())):
            err[scheme] = float(np.mean(np.abs(np.asarray(run(th, rt, y0, keys, solver, 1.0)) - ref)))
        out[label] = {"mean_abs_error_mg_dL": err, "sigma_glucose": float(th["sigma_glucose"][0])}
    return out


# ------------------------------------------------------------------------------------ simglucose
def bench_simglucose(hours: float) -> dict:
    try:
        from datetime import datetime, timedelta

        from simglucose.actuator.pump import InsulinPump
        from simglucose.controller.basal_bolus_ctrller import BBController
        from simglucose.patient.t1dpatient import T1DPatient
        from simglucose.sensor.cgm import CGMSensor
        from simglucose.simulation.env import T1DSimEnv
        from simglucose.simulation.scenario import CustomScenario
        from simglucose.simulation.sim_engine import SimObj
    except ImportError as err:
        return {"error": f"simglucose not importable: {err}"}
    start = datetime(2024, 1, 1)
    scenario = CustomScenario(start_time=start, scenario=[(7, 50), (12, 70), (18, 80)])
    env = T1DSimEnv(
        T1DPatient.withName("adult#001"),
        CGMSensor.withName("Dexcom", seed=1),
        InsulinPump.withName("Insulet"),
        scenario,
    )
    with tempfile.TemporaryDirectory() as tmp:
        sim = SimObj(env, BBController(), timedelta(hours=hours), animate=False, path=tmp)
        t0, c0 = time.perf_counter(), time.process_time()
        sim.simulate()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps = hours * 60.0  # patient-minutes, for comparison with 1-minute sub-steps
    return {"wall": steps / seconds, "cpu": steps / cpu, "simulated_hours": hours, "seconds": seconds}


# ------------------------------------------------------------------------------------- roofline
def bench_roofline(n: int, steps: int, repeats: int, quick: bool = False) -> dict:
    """Bare cost of drawing ``n x steps`` standard normals with jax.random (the best of a per-step
    scan and blocks of 16/64 steps, chunks spread over the devices as the simulator does), and
    with medsim's own counter-based generator."""
    devices = jax.local_devices()
    per = n // len(devices)

    def spread(fn, *args):
        outs = [fn(*[jax.device_put(a, d) for a in args]) for d in devices]
        jax.block_until_ready(outs)

    out = {}
    for block in (16,) if quick else (1, 16, 64):

        def draw(key, block=block):
            def body(acc, i):
                z = jax.random.normal(jax.random.fold_in(key, i), (block, per))
                return acc + z.sum(axis=0), None

            return jax.lax.scan(body, jnp.zeros(per), jnp.arange(steps // block))[0]

        f = jax.jit(draw)
        out[f"jax_random_block{block}"] = _best(lambda f=f: spread(f, jax.random.key(0)), repeats, n * steps)
    k1, k2 = medsim_noise.patient_key_words(jax.random.key(0), per)

    def ours(a, b):
        def body(acc, i):
            z0, z1 = medsim_noise.normal_pair(a, b, i.astype(jnp.uint32), 0)
            return acc + z0 + z1, None

        return jax.lax.scan(body, jnp.zeros(per), jnp.arange(steps // 2))[0]

    g = jax.jit(ours)
    out["medsim_threefry_pairs"] = _best(lambda: spread(g, k1, k2), repeats, n * steps)
    best = max((k for k in out if k.startswith("jax_random")), key=lambda k: out[k]["wall"])
    out["jax_random_best"] = out[best]
    return out


# ------------------------------------------------------------------------------------------ main
def _machine() -> dict:
    return machine_info(CORES)


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("jax", "jaxlib", "numpy", "torch", "torchsde", "diffrax", "simglucose"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches and a 2-hour simglucose run (< 1 min)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "simulate.json")
    args = parser.parse_args()
    q = args.quick
    n_med, n_base, n_loop, reps = (16384, 1024, 2, 1) if q else (65536, 4096, 8, 5)
    figures: dict[str, dict] = {}
    _log("roofline")
    roof = bench_roofline(n_med, DAY_MIN, reps, quick=q)
    for name in BOUNDS:
        _log(f"{name}: medsim")
        f = {"medsim": bench_medsim(name, n_med, reps)}
        if name == "glucose_insulin" and not q:
            f["medsim_euler"] = bench_medsim(name, n_med, reps, scheme="euler")
            f["medsim_meal_events"] = bench_medsim(name, n_med, reps, meals=True)
        if name == "pk_oral_1cmt" and not q:  # the stiff-absorption scheme next to the explicit one
            f["medsim_euler"] = bench_medsim(name, n_med, reps, scheme="euler")
            f["medsim_exponential"] = bench_medsim(name, n_med, reps, scheme="exponential")
        _log(f"{name}: numpy loop")
        f["numpy_loop"] = bench_numpy(name, n_loop)
        _log(f"{name}: torchsde")
        f["torchsde"] = bench_torchsde(name, n_base, max(1, reps // 2))
        _log(f"{name}: diffrax")
        f["diffrax"] = bench_diffrax(name, n_base, reps)
        f["rng_roofline_jax_random"] = roof["jax_random_best"]
        f["rng_medsim_generator"] = roof["medsim_threefry_pairs"]
        figures[name] = f
    if not q:
        _log("Euler vs Milstein accuracy")
        accuracy = milstein_accuracy()
    else:
        accuracy = None
    _log("simglucose")
    sg = bench_simglucose(2.0 if q else 24.0)
    if "wall" in sg:
        figures["glucose_insulin"]["simglucose_uva_padova"] = {"wall": sg["wall"], "cpu": sg["cpu"]}

    head = ("model", "implementation", "steps/s wall", "days/s wall", "medsim/this", "steps/core-s", "medsim/this")
    print(f"{head[0]:16s} {head[1]:24s} {head[2]:>13s} {head[3]:>12s} {head[4]:>12s} {head[5]:>13s} {head[6]:>12s}")
    for name, f in figures.items():
        m = f["medsim"]
        for k, v in f.items():
            print(
                f"{name:16s} {k:24s} {v['wall']:13.3g} {v['wall'] / DAY_MIN:12.3g} {m['wall'] / v['wall']:12.3g} "
                f"{v['cpu']:13.3g} {m['cpu'] / v['cpu']:12.3g}"
            )
    if "error" in sg:
        print(f"simglucose: {sg['error']}")
    g = figures["glucose_insulin"]

    def ratio(a: str, b: str) -> dict[str, float]:
        return {k: g[a][k] / g[b][k] for k in ("wall", "cpu")}

    summary = {
        "glucose_patient_days_per_s": {k: v / DAY_MIN for k, v in g["medsim"].items()},
        "fraction_of_rng_roofline": ratio("medsim", "rng_roofline_jax_random"),
        "over_torchsde": ratio("medsim", "torchsde"),
        "over_diffrax": ratio("medsim", "diffrax"),
        "over_numpy_loop": ratio("medsim", "numpy_loop"),
    }
    if "simglucose_uva_padova" in g:
        summary["over_simglucose"] = ratio("medsim", "simglucose_uva_padova")
    if "medsim_euler" in g:
        summary["euler_over_milstein_speed"] = ratio("medsim_euler", "medsim")
    print(json.dumps({"summary": summary, "milstein_accuracy": accuracy}, indent=2))
    result = {
        "benchmark": "simulate",
        "figures": figures,
        "summary": summary,
        "simglucose": sg,
        "milstein_accuracy": accuracy,
        "units": (
            "patient-steps per second at 1-minute sub-steps (one patient-day = 1440 steps): 'wall' = best "
            "wall-clock repeat, 'cpu' = per second of process CPU time (all threads); simglucose in "
            "simulated patient-minutes per second"
        ),
        "batch": {"medsim": n_med, "torchsde_diffrax": n_base, "numpy_loop": n_loop},
        "machine": _machine(),
        "versions": _versions(),
        "command": "python benchmarks/simulate.py" + (" --quick" if q else ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
