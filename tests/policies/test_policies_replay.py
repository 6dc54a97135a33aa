"""``replay``: recorded doses given again as recorded (open loop, "as treated")."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import medsim.models as registry
from medsim.data import Cohort, write_event_table
from medsim.policies.loading import PolicySpecError, parse_policy
from medsim.policies.protocol import Observation
from medsim.policies.rollout import rollout_many
from medsim.population import sample_population
from medsim.simulate.types import Bound

GLUCOSE = registry.get("glucose_insulin")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A: basal 0.02 U/min over 0-300 min then 0.01 U/min over 300-600, a meal and its bolus; B: basal and a meal."""
    cohort = Cohort.from_arrays(
        ["A", "B"],
        obs_time=[np.array([0.0]), np.array([0.0])],
        obs_value=[np.array([120.0]), np.array([140.0])],
        obs_cmt=3,
        dose_time=[np.array([0.0, 60.0, 60.0, 300.0]), np.array([0.0, 90.0])],
        dose_amount=[np.array([6.0, 4.0, 50.0, 3.0]), np.array([12.0, 30.0])],
        dose_cmt=[np.array([1, 1, 2, 1]), np.array([1, 2])],
        dose_rate=[np.array([0.02, 0.0, 0.0, 0.01]), np.array([0.02, 0.0])],
        covariates={"BASAL": [1.2, 1.2]},
        units={"TIME": "min", "DV": "mg/dL"},
    )
    return write_event_table(cohort, tmp_path_factory.mktemp("replay") / "recorded.csv")


def observe(t, subject, patient=(0, 1)):
    n = len(t)
    return Observation(
        time=np.asarray(t, float),
        measured={},
        announced={},
        covariates={},
        active=np.ones(n, bool),
        patient=np.asarray(patient),
        index=np.zeros(n, int),
        subject=np.asarray(subject),
        time_unit="min",
        horizon=1440.0,
    )


def test_replay_gives_each_twin_its_own_record(recorded):
    policy = parse_policy(f"replay:cohort={recorded}")
    assert policy.name == f"replay:cohort={recorded}"
    _, at0 = policy.act(None, observe([0.0, 0.0], ["A", "B"]), rng=np.random.default_rng(0))
    np.testing.assert_allclose(at0.rate[1], [0.02, 0.02])
    np.testing.assert_allclose(at0.interval, [60.0, 90.0])  # next recorded events: A's meal, B's meal
    _, at60 = policy.act(None, observe([60.0, 90.0], ["A", "B"]), rng=np.random.default_rng(0))
    np.testing.assert_allclose(at60.bolus[1], [4.0, 0.0])
    np.testing.assert_allclose(at60.bolus[2], [50.0, 30.0])
    np.testing.assert_allclose(at60.interval, [240.0, 510.0])  # A: new basal at 300; B: infusion ends at 600
    _, late = policy.act(None, observe([300.0, 600.0], ["A", "B"]), rng=np.random.default_rng(0))
    np.testing.assert_allclose(late.rate[1], [0.01, 0.0])
    np.testing.assert_allclose(late.interval, [300.0, np.inf])  # A's infusion ends at 600; B has nothing left


def test_population_patients_cycle_through_the_subjects_and_meals_can_be_left_out(recorded):
    policy = parse_policy(f"replay:cohort={recorded},meals=false,measure_every=30")
    _, option = policy.act(None, observe([60.0] * 3, ["", "", ""], patient=(0, 1, 2)), rng=np.random.default_rng(0))
    np.testing.assert_allclose(option.bolus[1], [4.0, 0.0, 4.0])  # patients 0 and 2 replay A, 1 replays B
    assert 2 not in option.bolus
    np.testing.assert_allclose(option.interval, [30.0, 30.0, 30.0])


def test_bad_specs_name_the_problem(recorded, tmp_path):
    with pytest.raises(PolicySpecError, match="not found"):
        parse_policy(f"replay:cohort={tmp_path / 'missing.csv'}")
    with pytest.raises(PolicySpecError, match="unknown parameter '_records'"):
        parse_policy(f"replay:cohort={recorded},_records=1")
    policy = parse_policy(f"replay:cohort={recorded}")
    with pytest.raises(ValueError, match=r"subjects \['Z'\] are not in"):
        policy.act(None, observe([0.0], ["Z"], patient=(0,)), rng=np.random.default_rng(0))


def test_a_rollout_delivers_exactly_the_recorded_doses(recorded):
    from conftest import concentrated_draws

    draws = concentrated_draws(GLUCOSE, spread=0.05)
    pop = sample_population(draws, 2, seed=2, covariates={"BASAL": 1.2})
    pop = dataclasses.replace(pop, subject=np.array(["A", "B"]))
    (result,) = rollout_many(
        GLUCOSE,
        pop,
        [parse_policy(f"replay:cohort={recorded}")],
        bounds=(Bound("glucose_mg_dL", 70.0, "lower"),),
        horizon=720.0,
        dt=1.0,
        seed=1,
        scenario=None,
        n_paths_saved=0,
    )
    # A: 0.02 U/min x 300 min + 4 U + 0.01 U/min x 300 min = 13 U; B: 0.02 U/min x 600 min = 12 U
    np.testing.assert_allclose(result.efficacy["total_dose_cmt1"], [13.0, 12.0], rtol=1e-5)
