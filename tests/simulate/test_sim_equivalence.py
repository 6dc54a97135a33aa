"""``medsim simulate`` is the library's loop: prior population -> rollout of the declared regimen -> risk report."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

import medsim.cli.sim_cmds  # noqa: F401  (registers the command)
import medsim.models as registry
from medsim.cli.app import app
from medsim.policies.protocol import Observation
from medsim.policies.regimen import DeclaredRegimen
from medsim.policies.risk import risk_report
from medsim.policies.rollout import rollout
from medsim.policies.spec import SafetySpec, parse_bound
from medsim.population import VirtualPopulation, prior_population

RUNNER = CliRunner()
PK = registry.get("pk_oral_1cmt")


@pytest.fixture(autouse=True)
def _one_device(monkeypatch):
    monkeypatch.setenv("MEDSIM_CPU_DEVICES", "1")


def _library(n: int, hours: float, seed: int, bound: str):
    """The calls ``medsim simulate --model pk_oral_1cmt`` stands for, written out with the library."""
    theta = prior_population(PK, n, key=jax.random.fold_in(jax.random.key(seed), 0))
    population = VirtualPopulation.from_parameters(PK, theta, seed=seed)
    policy = DeclaredRegimen.for_population(population, hours, look_every=1.0)  # PK time unit: h
    spec = SafetySpec((parse_bound(bound),), hours, time_unit="h", rare="off").validate(PK)
    result = rollout(PK, population, policy, bounds=spec.bounds, horizon=hours, dt=1 / 60, seed=seed, n_paths_saved=0)
    return result, risk_report([result], spec, model=PK)


def test_simulate_gives_the_numbers_of_rollout_and_risk_report():
    args = ["simulate", "--model", "pk_oral_1cmt", "--n", "16", "--hours", "13", "--seed", "3"]
    out = RUNNER.invoke(app, [*args, "--bound", "conc<=8", "--json"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.stdout)["bounds"][0]
    result, report = _library(16, 13.0, 3, "conc<=8")
    vp = report.policies[0].per_bound[0]
    # The same computation on the same seed and patients: equal to the last bit (JSON keeps floats exactly).
    assert row["p_bridge"] == vp.bridge.value and row["se_bridge"] == vp.bridge.se
    assert row["interval_bridge"] == [vp.bridge.lower, vp.bridge.upper]
    assert row["p_grid"] == vp.grid.value and row["se_grid"] == vp.grid.se
    assert 0.0 < vp.bridge.value < 1.0  # a bound some patients cross, so the comparison is not of zeros
    # The declared regimen (320 mg at 0 h and 12 h) is what the patients got.
    np.testing.assert_array_equal(result.efficacy["total_dose_cmt1"], np.full(16, 640.0))


def test_declared_regimen_doses_at_its_times_and_looks_hourly():
    glucose = registry.get("glucose_insulin")
    theta = prior_population(glucose, 3, key=jax.random.key(0), covariates={"BASAL": [1.2, 0.6, 0.9]})
    population = VirtualPopulation.from_parameters(glucose, theta)
    regimen = DeclaredRegimen.for_population(population, 1440.0, look_every=60.0)

    def act(t: float, patients: list[int]):
        n = len(patients)
        obs = Observation(
            time=np.full(n, t),
            measured={},
            announced={},
            covariates={},
            active=np.ones(n, bool),
            patient=np.asarray(patients),
            index=np.zeros(n, int),
            subject=np.full(n, ""),
            time_unit="min",
            horizon=1440.0,
        )
        return regimen.act(None, obs, rng=np.random.default_rng(0))[1]

    breakfast = act(420.0, [2, 0])  # 07:00: 50 g with 1 U per 10 g (glucose_insulin.default_regimen)
    np.testing.assert_array_equal(breakfast.bolus[2], [50.0, 50.0])
    np.testing.assert_array_equal(breakfast.bolus[1], [5.0, 5.0])
    np.testing.assert_allclose(breakfast.rate[1], [0.9 / 60, 1.2 / 60])  # each patient's own basal, U/min
    np.testing.assert_array_equal(breakfast.interval, [60.0, 60.0])
    between = act(450.0, [1])  # no dose; the next look is on the hour
    assert between.bolus[2][0] == 0.0 and between.bolus[1][0] == 0.0 and between.interval[0] == 30.0
