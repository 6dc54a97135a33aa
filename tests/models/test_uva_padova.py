"""The ``uva_padova`` model against simglucose's independent implementation, its steady state,
populations, stability limit and the Breton-Kovatchev CGM error it simulates."""

from __future__ import annotations

import logging
from importlib.resources import files
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import medsim.models as registry
from medsim.models.uva_padova import JOHNSON, POPULATION, T_CGM
from medsim.simulate import Simulator, stability

PATIENTS = ("adult#001", "adolescent#001", "child#001")
NOISE = ("sigma_glucose", "sigma_SI", "sigma_EGP", "sigma_CGM")
MINUTES = 600
FIRST_MEAL = 240
MEALS = ((FIRST_MEAL, 50.0), (420, 40.0))  # (minute, g)
SUBSTEPS = 10  # RK4 steps per minute (h = 0.1 min)


def table_theta(model, name: str) -> dict[str, float]:
    """The model's parameters for simglucose patient ``name`` (its parameter table, process noise off)."""
    pytest.importorskip("simglucose")  # the test extra installs it; its package data is the table
    table = pd.read_csv(files("simglucose") / "params" / "vpatient_params.csv")
    row = table.loc[table.Name == name].iloc[0]
    theta = {k: float(v) for k, v in model.typical_parameters().items()}
    theta.update({k: float(row[k]) for k in POPULATION})
    theta.update({"WT": float(row.BW), "BASAL": float(row.u2ss * row.BW / 100.0)})
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


@pytest.mark.parametrize("name", ["uva_padova", "uva_padova_adolescent", "uva_padova_child"])
def test_basal_state_is_a_fixed_point_at_the_basal_glucose(name):
    """Under its own basal rate every patient rests at ``Gb`` (the steady-state conditions of the docstring)."""
    model = registry.get(name)
    theta = {
        k: jnp.asarray(v, jnp.float32)
        for k, v in model.individual_parameters(model.typical_parameters(), {}, {}).items()
    }
    x = model.initial_state(theta)
    dx = model.drift(0.0, x, theta, {"insulin_sc": theta["BASAL"] / 60.0})
    for state, value in dx.items():
        # float32 cancellation of terms of size |x| * rate (rates <= 0.5 /min): relative 1e-6
        assert abs(float(value)) < 1e-5 * (1.0 + abs(float(x[state]))), state
    y = model.observe(x, theta)
    assert float(y["glucose_mg_dL"]) == pytest.approx(float(theta["Gb"]), rel=1e-6)
    assert float(y["glucose_ig_mg_dL"]) == pytest.approx(float(theta["Gb"]), rel=1e-6)


def test_each_group_has_its_population_means():
    """Typical values of the adolescent and child models are the adult ones times the table's group ratios."""
    models = {
        g: registry.get(n)
        for g, n in (("adult", "uva_padova"), ("teen", "uva_padova_adolescent"), ("child", "uva_padova_child"))
    }
    typical = {g: m.individual_parameters(m.typical_parameters(), {}, {}) for g, m in models.items()}
    for p, (_, mean, r_teen, r_child, _, _) in POPULATION.items():
        assert float(typical["adult"][p]) == pytest.approx(mean, rel=1e-6)
        assert float(typical["teen"][p]) == pytest.approx(mean * r_teen, rel=1e-6)
        assert float(typical["child"][p]) == pytest.approx(mean * r_child, rel=1e-6)
    assert float(models["child"].reference_covariates()["WT"]) < float(models["adult"].reference_covariates()["WT"])


def test_stability_limit_names_the_fast_absorption():
    """The drift's Jacobian limit: a 1-min step is stable for the typical patients of each group, and a
    patient with the table's fastest intestinal absorption (kabs = 1.23 /min, adolescent#005) is held
    to 1 / kabs (the explicit step keeps the gut nonnegative only while kabs dt <= 1)."""
    model = registry.get("uva_padova")
    jacobian = stability.jacobian_fn(model)

    def limit_of(theta):
        theta = {k: jnp.asarray([v], jnp.float32) for k, v in theta.items()}
        return stability.step_limit(model, model.initial_state(theta), theta, jacobian=jacobian)

    for name in ("uva_padova", "uva_padova_adolescent", "uva_padova_child"):
        group = registry.get(name)
        limit = limit_of(group.individual_parameters(group.typical_parameters(), {}, {}))
        assert limit.max_dt >= 1.0, (name, limit.reason)
    theta = table_theta(model, "adolescent#005")
    limit = limit_of(theta)
    assert "gut" in limit.reason and limit.max_dt == pytest.approx(1.0 / theta["kabs"], rel=1e-5)
    with pytest.raises(stability.UnstableStepError, match="stability limit"):
        stability.check_step(model, "milstein", 1.0, limit)
    # not triangular (plasma <-> liver insulin), yet the exponential step is stable there: --scheme auto
    assert not limit.triangular and stability.choose_scheme(model, 1.0, limit) == "exponential"


def test_simulated_cgm_error_has_the_published_marginal_and_autocorrelation(model):
    """Breton & Kovatchev (2008): Johnson SU marginal and AR(1) coefficient 0.7 per 15 min.

    Only the sensor driver is noisy (glucose stays at its basal value), so ``cgm - glucose_ig`` is
    the sensor error. Euler-Maruyama at h = 1 min turns the OU driver into an AR(1) with stationary
    variance ``1 / (1 - h / (2 T))`` = 1.012 and a 15-step autocorrelation ``(1 - h / T)^15`` =
    0.697 (against 1 and 0.700): both far inside the Monte Carlo error of n = 2000 patients
    (Kolmogorov-Smirnov p-value > 1e-3; autocorrelation SE (1 - rho^2) / sqrt(n) = 0.011, 4 SE
    allowed).
    """
    from scipy import stats

    n = 2000
    theta = {k: jnp.full((n,), v, jnp.float32) for k, v in model.typical_parameters().items()}
    theta.update({k: jnp.zeros((n,), jnp.float32) for k in NOISE if k != "sigma_CGM"})
    sim = Simulator(model, dt=1.0, bounds=(), scheme="euler")
    rates = {1: np.asarray(theta["BASAL"]) / 60.0}
    burn = sim.advance(model.initial_state(theta), theta, 0.0, 8 * T_CGM, key=jax.random.key(5), rates=rates)
    out = sim.advance(burn.state, theta, 0.0, 60.0, key=jax.random.key(6), rates=rates, save_every=15)
    error = np.asarray(out.path.values["cgm_mg_dL"], np.float64) - np.asarray(
        out.path.values["glucose_ig_mg_dL"], np.float64
    )  # (n, 5): every 15 min
    johnson = stats.johnsonsu(JOHNSON["gamma"], JOHNSON["delta"], loc=JOHNSON["xi"], scale=JOHNSON["lambda"])
    assert stats.kstest(error[:, 0], johnson.cdf).pvalue > 1e-3
    assert stats.kstest(error[:, 0], stats.norm(error[:, 0].mean(), error[:, 0].std()).cdf).pvalue < 1e-3  # skewed
    driver = JOHNSON["gamma"] + JOHNSON["delta"] * np.arcsinh((error - JOHNSON["xi"]) / JOHNSON["lambda"])
    rho = np.mean([np.corrcoef(driver[:, k], driver[:, k + 1])[0, 1] for k in range(driver.shape[1] - 1)])
    assert abs(rho - 0.7) < 4 * 0.011
    assert np.exp(-15.0 / T_CGM) == pytest.approx(0.7, rel=1e-12)
