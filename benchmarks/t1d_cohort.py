"""A type-1 diabetes cohort from an independent simulator (simglucose, the UVA/Padova T1D model).

simglucose (Xie 2018, https://github.com/jxx123/simglucose, MIT licence) implements the
UVA/Padova simulator of Dalla Man et al. 2007 / Kovatchev et al. 2009 with its 30 published
virtual patients (10 adults, 10 adolescents, 10 children), a CGM sensor with autocorrelated
error (Breton & Kovatchev 2008) and insulin pumps. Nothing in it shares code or equations with
medsim's glucose models, which is the point: a cohort from it tests medsim on data it did not
generate.

Each patient is simulated with simglucose's random meal scenario (3 main meals and up to 3
snacks a day, seeded), the Dexcom CGM (3-minute readings, seeded), the Insulet pump and
simglucose's basal-bolus controller (basal from the patient's steady-state insulin, meal
boluses from the carbohydrate ratio plus a correction above 150 mg/dL). ``bolus_factor`` scales
every bolus from ``factor_from_day`` on (1.5 = boluses 50 % too large, which makes
hypoglycaemia common on those days).

The result is simglucose's own tidy shape: ``patient, time_min, bg_true, cgm, cho_g_per_min,
insulin_U_per_min`` with 3-minute rows, rates over the row's 3 minutes (the last row's rates
are empty), ``bg_true`` the simulator's subcutaneous-site glucose (what the sensor measures
before its error); ``--weight`` adds ``weight_kg``, the patient's body weight from simglucose's
patient table. ``python benchmarks/t1d_cohort.py OUT.csv [--workers N]`` writes one; the bundled
``t1d_sim`` dataset was made with :func:`bundled_cohort`.

simglucose integrates minute by minute in Python, one core per patient (about 35-55 s of CPU per
patient and 3 days). :func:`generate_cohorts` runs patients on several processes and simulates the
days that scenarios share once (the overdose scenario differs from the ordinary one on day 3
only): the external check's two 12-patient cohorts then cost 4 patient-days per patient instead
of 6, spread over the cores. Neither changes a digit of the tables.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

TIDY_COLUMNS = ("patient", "time_min", "bg_true", "cgm", "cho_g_per_min", "insulin_U_per_min")
START = datetime(2026, 1, 1, 0, 0)

#: 4 adults, 4 adolescents, 4 children of simglucose's 30 virtual patients.
PATIENTS_12 = tuple(f"{group}#{i:03d}" for group in ("adult", "adolescent", "child") for i in range(1, 5))
#: The bundled demo cohort: 2 of each group.
PATIENTS_6 = tuple(f"{group}#{i:03d}" for group in ("adult", "adolescent", "child") for i in range(1, 3))


@dataclass(frozen=True)
class Scenario:
    """How a cohort is generated (recorded in the output's provenance)."""

    days: int = 3
    seed: int = 1
    bolus_factor: float = 1.0
    factor_from_day: int = 3

    def patient_seed(self, index: int) -> int:
        """Meal scenario, CGM noise and patient seed of the ``index``-th patient."""
        return 1000 * self.seed + index


def simglucose_version() -> str:
    from importlib.metadata import version

    return version("simglucose")


class ScaledBolus:
    """simglucose's basal-bolus controller with every bolus scaled by ``factor`` from ``factor_from`` on.

    Built on first use (simglucose is imported lazily); the factor is an attribute so that a copy
    of a running simulation can continue with another one (:func:`simulate_branches`)."""

    def __init__(self, factor: float, factor_from: datetime):
        from simglucose.controller.basal_bolus_ctrller import BBController

        self.inner = BBController()
        self.factor = factor
        self.factor_from = factor_from

    def reset(self) -> None:
        self.inner.reset()

    def policy(self, observation, reward, done, **info):
        from simglucose.controller.base import Action

        action = self.inner.policy(observation, reward, done, **info)
        if info.get("time", START) >= self.factor_from:
            return Action(basal=action.basal, bolus=action.bolus * self.factor)
        return action


def _tidy(name: str, env) -> pd.DataFrame:
    history = env.show_history()
    minutes = (history.index - START).total_seconds().to_numpy() / 60.0
    return pd.DataFrame(
        {
            "patient": name,
            "time_min": np.round(minutes, 6),
            "bg_true": history["BG"].to_numpy(),
            "cgm": history["CGM"].to_numpy(),
            "cho_g_per_min": history["CHO"].to_numpy(),
            "insulin_U_per_min": history["insulin"].to_numpy(),
        }
    )


def simulate_branches(
    name: str, seed: int, *, duration: timedelta, branch_at: timedelta, factors: tuple[float, ...]
) -> list[pd.DataFrame]:
    """One simglucose patient under each bolus factor of ``factors`` (applied from ``branch_at``),
    in the tidy shape (``TIDY_COLUMNS``), one table per factor.

    The time before ``branch_at`` is the same under every factor, so it is simulated once and the
    whole simulation (patient ODE solver, CGM noise, meal scenario, controller) is copied there;
    each copy then continues with its own factor. The copies continue exactly as separate runs
    from the start would (same random streams, same solver state): the tables are identical to
    :func:`simulate_patient`'s, at ``1 + len(factors) * (1 - branch_at / duration)`` runs' cost
    instead of ``len(factors)``.
    """
    import copy

    logging.getLogger("simglucose").setLevel(logging.WARNING)
    from simglucose.actuator.pump import InsulinPump
    from simglucose.patient.t1dpatient import T1DPatient
    from simglucose.sensor.cgm import CGMSensor
    from simglucose.simulation.env import T1DSimEnv
    from simglucose.simulation.scenario_gen import RandomScenario

    if not factors:
        raise ValueError("need at least one bolus factor")
    if not timedelta(0) <= branch_at <= duration:
        raise ValueError(f"branch_at must lie in [0, duration]; got {branch_at} and {duration}")
    env = T1DSimEnv(
        T1DPatient.withName(name, seed=seed),
        CGMSensor.withName("Dexcom", seed=seed),
        InsulinPump.withName("Insulet"),
        RandomScenario(start_time=START, seed=seed),
    )
    controller = ScaledBolus(factors[0], START + branch_at)
    # simglucose's SimObj.simulate, in two parts: reset, then step until each end time
    controller.reset()
    step = env.reset()
    shared = (env, controller, step)

    def advance(sim, until: datetime):
        env, controller, (obs, reward, done, info) = sim
        while env.time < until:
            obs, reward, done, info = env.step(controller.policy(obs, reward, done, **info))
        return env, controller, (obs, reward, done, info)

    shared = advance(shared, START + branch_at)
    tables = []
    for i, factor in enumerate(factors):
        sim = shared if i == len(factors) - 1 else copy.deepcopy(shared)  # the last branch needs no copy
        sim[1].factor = factor
        tables.append(_tidy(name, advance(sim, START + duration)[0]))
    return tables


def simulate_patient(name: str, seed: int, scenario: Scenario) -> pd.DataFrame:
    """One simglucose patient, in the tidy shape (``TIDY_COLUMNS``)."""
    return _scenario_task((name, seed, scenario.days, scenario.factor_from_day, (scenario.bolus_factor,)))[0]


def _scenario_task(task: tuple) -> list[pd.DataFrame]:
    """:func:`simulate_branches` of ``(name, seed, days, factor_from_day, factors)``; module level, so
    that worker processes can run it."""
    name, seed, days, factor_from_day, factors = task
    return simulate_branches(
        name,
        seed,
        duration=timedelta(days=days),
        branch_at=timedelta(days=min(max(factor_from_day - 1, 0), days)),
        factors=tuple(factors),
    )


def run_tasks(function, tasks: list, workers: int = 1) -> list:
    """``[function(t) for t in tasks]``, over ``workers`` processes when more than one (simglucose
    integrates in Python, one core per patient); results in the order of ``tasks``. Workers are
    started fresh (``spawn``), so a caller that has started JAX's threads can use it."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    if workers == 1 or len(tasks) < 2:
        return [function(t) for t in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
        return list(pool.map(function, tasks))


def generate_cohorts(
    patients: tuple[str, ...], scenarios: tuple[Scenario, ...], *, weight: bool = False, workers: int = 1
) -> list[pd.DataFrame]:
    """The tidy table of ``patients`` under each of ``scenarios`` (one table per scenario, as
    :func:`generate_cohort` makes it). Scenarios that differ only in ``bolus_factor`` share the
    simulation of the days before ``factor_from_day`` (:func:`simulate_branches`); patients run on
    ``workers`` processes. The tables do not depend on either."""
    groups: dict[tuple, list[int]] = {}
    for k, s in enumerate(scenarios):
        groups.setdefault((s.days, s.seed, s.factor_from_day), []).append(k)
    tasks, where = [], []
    for members in groups.values():
        first, factors = scenarios[members[0]], tuple(scenarios[k].bolus_factor for k in members)
        for i, name in enumerate(patients):
            tasks.append((name, first.patient_seed(i), first.days, first.factor_from_day, factors))
            where.append(members)
    frames: list[list[pd.DataFrame]] = [[] for _ in scenarios]
    for members, tables in zip(where, run_tasks(_scenario_task, tasks, workers), strict=True):
        for k, table in zip(members, tables, strict=True):
            frames[k].append(table)
    weights = body_weights() if weight else None  # simglucose's patient table, read once
    out = []
    for tables in frames:
        table = pd.concat(tables, ignore_index=True)
        if weights is not None:
            table["weight_kg"] = table["patient"].map(weights).round(1)
        out.append(table)
    return out


def generate_cohort(
    patients: tuple[str, ...], scenario: Scenario, *, weight: bool = False, workers: int = 1
) -> pd.DataFrame:
    """The tidy table of ``patients`` under ``scenario`` (patients in the order given, on
    ``workers`` processes); with ``weight``, a ``weight_kg`` column (each patient's body weight in
    simglucose's patient table), which ``uva_padova`` needs and ``t1d_ou`` scales by."""
    return generate_cohorts(patients, (scenario,), weight=weight, workers=workers)[0]


def body_weights() -> dict[str, float]:
    """Body weight (kg) of every simglucose virtual patient, from its patient table."""
    from importlib.resources import files

    table = pd.read_csv(files("simglucose") / "params" / "vpatient_params.csv")
    return dict(zip(table["Name"], table["BW"].astype(float), strict=True))


def provenance(patients: tuple[str, ...], scenario: Scenario) -> dict:
    """What made the cohort: simulator, version, patients, seeds, scenario."""
    return {
        "simulator": "simglucose (UVA/Padova T1D simulator), MIT licence",
        "simglucose_version": simglucose_version(),
        "patients": list(patients),
        "seeds": [scenario.patient_seed(i) for i in range(len(patients))],
        "days": scenario.days,
        "scenario": "simglucose RandomScenario (meals), Dexcom CGM, Insulet pump, BBController",
        "bolus_factor": scenario.bolus_factor,
        "factor_from_day": scenario.factor_from_day,
    }


def bundled_cohort() -> tuple[pd.DataFrame, dict]:
    """The tidy table behind the bundled ``t1d_sim`` dataset, and its provenance."""
    scenario = Scenario(days=3, seed=1)
    return generate_cohort(PATIENTS_6, scenario), provenance(PATIENTS_6, scenario)


BUNDLED_PATH = Path(__file__).resolve().parents[1] / "medsim" / "data" / "bundled" / "t1d_sim.csv"
BUNDLED_CGM_EVERY = 15.0


def write_bundled(tidy: pd.DataFrame, path: Path = BUNDLED_PATH) -> Path:
    """The bundled event table: CGM every 15 minutes (rounded to 0.1 mg/dL), meals and insulin as recorded."""
    from medsim.data import write_event_table
    from medsim.data.t1d import read_t1d_table
    from medsim.data.tablefile import units_sidecar

    table = tidy.assign(cgm=tidy["cgm"].round(1))
    cohort = read_t1d_table(table.drop(columns=["bg_true"]), cgm_every=BUNDLED_CGM_EVERY)
    written = write_event_table(cohort, path)
    units_sidecar(written).unlink(missing_ok=True)  # units are declared in medsim/data/datasets.py
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", help="tidy CSV to write")
    parser.add_argument(
        "--bundled",
        action="store_true",
        help=f"write the bundled t1d_sim dataset ({BUNDLED_PATH.name}) from bundled_cohort() (or --from-tidy)",
    )
    parser.add_argument("--from-tidy", type=Path, help="with --bundled: a tidy CSV made by bundled_cohort()")
    parser.add_argument("--patients", nargs="*", default=list(PATIENTS_12), help="simglucose patient names")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bolus-factor", type=float, default=1.0)
    parser.add_argument("--factor-from-day", type=int, default=3)
    parser.add_argument(
        "--weight",
        action="store_true",
        help="add a weight_kg column (body weight: uva_padova needs it, t1d_ou scales by it)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes simulating patients side by side (same table)"
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1; got {args.workers}")
    if args.bundled:
        tidy = pd.read_csv(args.from_tidy) if args.from_tidy else bundled_cohort()[0]
        print(f"wrote {write_bundled(tidy)}", file=sys.stderr)
        return 0
    if args.out is None:
        parser.error("give OUT (a tidy CSV to write) or --bundled")
    scenario = Scenario(args.days, args.seed, args.bolus_factor, args.factor_from_day)
    from medsim.data.tablefile import atomic_write

    table = generate_cohort(tuple(args.patients), scenario, weight=args.weight, workers=args.workers)
    atomic_write(args.out, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    print(f"{args.out}: {len(table)} rows, {table['patient'].nunique()} patients", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
