"""Closed-loop glucose control: announced meals, bolus calculator, PID, time in range."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import medsim.models as registry
from medsim.policies.builtin import PID, BasalBolus
from medsim.policies.loading import FunctionPolicy
from medsim.policies.protocol import Option
from medsim.policies.rollout import rollout_many
from medsim.policies.scenarios import MealScenario
from medsim.population import sample_population
from medsim.simulate.types import Bound

GLUCOSE = registry.get("glucose_insulin")
SCENARIO = MealScenario(seed=4)


def basal_only(obs, *, rng):
    """The patient's basal rate and nothing else: no meal boluses."""
    return Option(interval=np.full(obs.n, 240.0), rate={1: obs.covariates["BASAL"] / 60.0})


@pytest.fixture(scope="module")
def results(request):
    from conftest import concentrated_draws

    draws = concentrated_draws(GLUCOSE, spread=0.05)
    pop = sample_population(draws, 8, seed=2, covariates={"BASAL": 1.2})
    # Small between-subject spread, so every policy sees the same typical physiology.
    pop = dataclasses.replace(pop, params={**pop.params, "sigma_glucose": np.full(8, 0.002)})
    calls = []
    policies = [FunctionPolicy(basal_only, "basal_only"), BasalBolus(), PID(every=30.0)]
    out = rollout_many(
        GLUCOSE,
        pop,
        policies,
        bounds=(Bound("glucose_mg_dL", 70.0, "lower"), Bound("glucose_mg_dL", 300.0, "upper")),
        horizon=24 * 60.0,
        dt=1.0,
        seed=1,
        scenario=SCENARIO,
        n_paths_saved=0,
        progress=lambda done, total: calls.append((done, total)),
    )
    return pop, out, calls


def test_meals_start_interactions_and_get_boluses(results):
    pop, (basal, bb, _), _ = results
    meals = SCENARIO.events(np.arange(pop.n_patients), 24 * 60.0, time_unit="min")
    meal_times = np.asarray(meals.time, np.float64)
    for i in range(pop.n_patients):
        starts = bb.t_start[i][bb.mask[i]]
        at_meal = np.isin(np.float32(starts), np.float32(meal_times[i]))
        assert at_meal.sum() == 3  # every announced meal is an interaction
        boluses = bb.treatment["bolus_cmt1"][i][bb.mask[i]]
        assert (boluses[at_meal] > 0).all() and (boluses[~at_meal] == 0).all()
    np.testing.assert_array_equal(basal.treatment["bolus_cmt1"], 0.0)
    # Basal rate from the covariate: 1.2 U/h = 0.02 U/min throughout.
    np.testing.assert_allclose(bb.treatment["rate_cmt1"][bb.mask], 0.02)


def test_boluses_keep_glucose_in_range(results):
    _, (basal, bb, _), _ = results
    # Without meal insulin, post-meal glucose stays high for hours; the bolus calculator cuts the
    # time above 180 mg/dL. Both policies see the same patients and meals (common random numbers),
    # so the paired difference is compared patient by patient.
    assert (bb.efficacy["time_above_range"] <= basal.efficacy["time_above_range"]).all()
    assert bb.efficacy["time_above_range"].mean() < basal.efficacy["time_above_range"].mean()
    assert bb.efficacy["time_in_range"].mean() > basal.efficacy["time_in_range"].mean()
    # Basal alone delivers 24 h x 1.2 U/h = 28.8 U.
    np.testing.assert_allclose(basal.efficacy["total_dose_cmt1"], 28.8, rtol=1e-6)
    assert (bb.efficacy["total_dose_cmt1"] > 28.8).all()


def test_pid_lowers_the_rate_when_glucose_falls(results):
    _, (_, _, pid), _ = results
    measured = pid.measured["glucose_mg_dL"][pid.mask]
    rate = pid.treatment["rate_cmt1"][pid.mask]
    # Proportional action dominates: the rate rises with the measured glucose.
    assert np.corrcoef(measured, rate)[0, 1] > 0.5
    # Low-glucose suspend: no insulin after a reading below 70 mg/dL.
    np.testing.assert_array_equal(rate[measured < 70], 0.0)


def test_progress_reaches_the_total(results):
    pop, _, calls = results
    done, total = calls[-1]
    assert total == pytest.approx(pop.n_patients * 24 * 60.0) and done == pytest.approx(total)


def test_scenario_meals_count_in_the_carbohydrate_total(results):
    """The meals of the scenario are carbohydrate the patients ate: ``total_dose_cmt2`` used to
    read 0 because only what the policy gave was summed."""
    pop, rollouts, _ = results
    meals = SCENARIO.events(np.arange(pop.n_patients), 24 * 60.0, time_unit="min")
    time, amount = np.asarray(meals.time, np.float64), np.asarray(meals.amount, np.float64)
    eaten = np.where(np.isfinite(time) & (time < 24 * 60.0), amount, 0.0).sum(axis=1)
    assert (eaten > 100).all()  # three meals of 45-80 g nominal
    for r in rollouts:  # no policy gives carbohydrate: the total is the meals, float32 amounts
        np.testing.assert_allclose(r.efficacy["total_dose_cmt2"], eaten, rtol=1e-6)


def test_cgm_trace_is_the_simulated_glucose_every_5_minutes(results):
    """The trace holds every patient's noise-free glucose on 0, 5, ... < 24 h; at the start of each
    interaction it is the value the policy's measurement was drawn around."""
    _, rollouts, _ = results
    for r in rollouts:
        g = r.trace["glucose_mg_dL"]
        assert g.shape == (r.n_patients, 288) and np.isfinite(g).all() and r.trace_step == 5.0
        on_grid = r.mask & (np.abs(r.t_start / 5.0 - np.round(r.t_start / 5.0)) < 1e-6)
        rows, cols = np.nonzero(on_grid)
        index = np.round(r.t_start[rows, cols] / 5.0).astype(int)
        # float32 simulator state vs its float64 copy: agree to float32 rounding
        np.testing.assert_allclose(g[rows, index], r.true_start["glucose_mg_dL"][rows, cols], rtol=1e-6)
