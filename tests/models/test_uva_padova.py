"""The ``uva_padova`` model against simglucose's independent implementation, its steady state,
populations, stability limit and the Breton-Kovatchev CGM error it simulates."""

from __future__ import annotations

import logging
from importlib.resources import files
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import medsim.models as registry
from medsim.models.uva_padova import JOHNSON, POPULATION, T_CGM
from medsim.simulate import Simulator, stability

simglucose = pytest.importorskip("simglucose")
pd = pytest.importorskip("pandas")

PATIENTS = ("adult#001", "adolescent#001", "child#001")
NOISE = ("sigma_glucose", "sigma_SI", "sigma_EGP", "sigma_CGM")
MINUTES = 600
FIRST_MEAL = 240
MEALS = ((FIRST_MEAL, 50.0), (420, 40.0))  # (minute, g)
SUBSTEPS = 10  # RK4 steps per minute (h = 0.1 min)


def table_theta(model, name: str) -> dict[str, float]:
    """The model's parameters for simglucose patient ``name`` (its parameter table, process noise off)."""
    table = pd.read_csv(files("simglucose") / "params" / "vpatient_params.csv")
    row = table.loc[table.Name == name].iloc[0]
    theta = {k: float(v) for k, v in model.typical_parameters().items()}
    theta.update({k: float(row[k]) for k in POPULATION})
    theta.update({"WT": float(row.BW), "BASAL": float(row.u2ss * row.BW / 100.0), "AGE": 40.0})
    theta.update({k: 0.0 for k in NOISE})
    return theta


def simglucose_run(name: str, insulin: np.ndarray, meals: np.ndarray):
    """simglucose's patient minute by minute; returns its plasma and subcutaneous glucose and what was eaten."""
    logging.getLogger("simglucose").setLevel(logging.WARNING)
    from simglucose.patient.t1dpatient import Action, T1DPatient

    table = pd.read_csv(files("simglucose") / "params" / "vpatient_params.csv")
    row = table.loc[table.Name == name].squeeze()
    # The same values in a plain namespace: simglucose reads every parameter by attribute at every
    # right-hand-side evaluation, which on a pandas Series costs most of its run time.
    fast = SimpleNamespace(**row.to_dict(), iloc=row.iloc)
    patient = T1DPatient(fast)
    plasma, sensor, eaten = (np.zeros(len(insulin)) for _ in range(3))
    for t in range(len(insulin)):
        plasma[t], sensor[t] = patient.state[3] / row.Vg, patient.observation.Gsub
        before = patient.planned_meal
        patient.step(Action(CHO=meals[t], insulin=insulin[t]))
        eaten[t] = before + meals[t] - patient.planned_meal  # simglucose eats at most 5 g/min
    return plasma, sensor, eaten


def medsim_run(model, thetas: list[dict], insulin: np.ndarray, eaten: np.ndarray):
    """The model's drift, RK4 at h = 0.1 min, inputs constant over each minute (as simglucose holds them)."""
    names = model.state_names
    theta = {k: jnp.asarray([t[k] for t in thetas], jnp.float32) for k in thetas[0]}
    x0 = model.initial_state(theta)
    h = 1.0 / SUBSTEPS

    @jax.jit
    def minute(x, u, c):
        def f(x):
            return model.drift(0.0, x, theta, {"insulin_sc": u, "stomach": c})

        def rk4(_, x):
            k1 = f(x)
            k2 = f({s: x[s] + 0.5 * h * k1[s] for s in names})
            k3 = f({s: x[s] + 0.5 * h * k2[s] for s in names})
            k4 = f({s: x[s] + h * k3[s] for s in names})
            return {s: x[s] + h / 6.0 * (k1[s] + 2 * k2[s] + 2 * k3[s] + k4[s]) for s in names}

        obs = model.observe(x, theta)
        return jax.lax.fori_loop(0, SUBSTEPS, rk4, x), obs["glucose_mg_dL"], obs["glucose_ig_mg_dL"]

    x, plasma, sensor = x0, [], []
    for t in range(insulin.shape[1]):
        x, p, s = minute(x, jnp.asarray(insulin[:, t], jnp.float32), jnp.asarray(eaten[:, t], jnp.float32))
        plasma.append(np.asarray(p))
        sensor.append(np.asarray(s))
    return np.stack(plasma, axis=1), np.stack(sensor, axis=1)


def scenario(model):
    """4 h of insulin alone (a 0.02 U/kg bolus at 10 min, basal x 1.5 from 1 h to 2.5 h), then meals of 50 g
    at 4 h and 40 g at 7 h with carb-ratio boluses; simglucose's 3 patients and the model's drift."""
    quest = pd.read_csv(files("simglucose") / "params" / "Quest.csv").set_index("Name")
    thetas = [table_theta(model, n) for n in PATIENTS]
    runs = []
    for name, th in zip(PATIENTS, thetas, strict=True):
        insulin = np.full(MINUTES, th["BASAL"] / 60.0)
        insulin[60:150] *= 1.5
        insulin[10] += 0.02 * th["WT"]  # 0.02 U/kg, 1.7 U for an 84-kg adult
        meals = np.zeros(MINUTES)
        for t, grams in MEALS:
            insulin[t] += grams / quest.loc[name, "CR"]
            meals[t] = grams
        runs.append((insulin, *simglucose_run(name, insulin, meals)))
    insulin = np.stack([r[0] for r in runs])
    eaten = np.stack([r[3] for r in runs])
    plasma, sensor = medsim_run(model, thetas, insulin, eaten)
    return {
        "simglucose": (np.stack([r[1] for r in runs]), np.stack([r[2] for r in runs])),
        "medsim": (plasma, sensor),
    }


@pytest.fixture(scope="module")
def model():
    return registry.get("uva_padova")


@pytest.fixture(scope="module")
def runs(model):
    return scenario(model)


def test_insulin_and_glucose_kinetics_match_simglucose_to_solver_error(runs):
    """Boluses and a temporary basal rate, no meal: the same equations, so only the solvers differ.

    simglucose integrates each minute with dopri5 at its default tolerances (relative 1e-6), medsim's
    drift here with RK4 at h = 0.1 min in float32 (local error O(h^5) ~ 1e-7 of the state, rounding
    ~1e-7 per step over 2400 steps). Measured 2e-4 mg/dL; the bound 0.01 mg/dL is 1e-4 of glucose.
    """
    before = slice(0, FIRST_MEAL)
    (sg_plasma, sg_sensor), (ms_plasma, ms_sensor) = runs["simglucose"], runs["medsim"]
    assert np.ptp(sg_plasma[:, before], axis=1).min() > 20.0  # insulin moved glucose: the check is not vacuous
    np.testing.assert_allclose(ms_plasma[:, before], sg_plasma[:, before], atol=0.01)
    np.testing.assert_allclose(ms_sensor[:, before], sg_sensor[:, before], atol=0.01)


def test_meal_response_matches_simglucose(runs):
    """Meals, the second on a stomach still holding ~10 g: the same equations except the meal size
    ``D`` of gastric emptying. simglucose updates it once a minute and counts the minute's food at
    the minute's start, so while eating its ``D`` leads the stomach content by up to 5 g; the model
    carries ``D`` continuously (module docstring; between meals both equal the stomach content plus
    what was emptied since eating began, checked to 0.05 g). Where emptying is steep in ``Q / D``
    (child#001: b = 0.75, the remnant near b D) that first-minute lead changes emptying for minutes.
    Measured: 3.0 mg/dL for child#001 (2 % of its 140 mg/dL excursion), 0.4 for the others; the bound
    is 3 % of each patient's excursion.
    """
    (sg_plasma, sg_sensor), (ms_plasma, ms_sensor) = runs["simglucose"], runs["medsim"]
    excursion = np.ptp(sg_plasma[:, FIRST_MEAL:], axis=1)
    assert excursion.min() > 20.0
    for got, want in ((ms_plasma, sg_plasma), (ms_sensor, sg_sensor)):
        assert (np.abs(got - want).max(axis=1) <= 0.03 * excursion).all(), np.abs(got - want).max(axis=1)
