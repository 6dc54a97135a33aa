"""Cohort generation for the external T1D check (``benchmarks/t1d_cohort.py``): the scenarios that
share their first days simulate them once, and patients run side by side, without changing a digit."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

import benchmarks.t1d_cohort as t1d_cohort
from benchmarks.t1d_cohort import TIDY_COLUMNS, Scenario, generate_cohorts, run_tasks, simulate_branches


def test_branches_equal_separate_runs_bit_for_bit():
    """Copying a running simglucose simulation at the branch time and continuing each copy with its
    own bolus factor gives exactly the tables of separate runs from time 0 (same random streams for
    meals and CGM noise, same ODE solver state). 9 h, first meal of simglucose's random scenario
    around 7 am, so the boluses after the 5-h branch differ between the factors."""
    pytest.importorskip("simglucose")
    kwargs = {"duration": timedelta(hours=9), "branch_at": timedelta(hours=5)}
    branched = simulate_branches("child#001", 7, factors=(1.0, 1.5), **kwargs)
    separate = [simulate_branches("child#001", 7, factors=(f,), **kwargs)[0] for f in (1.0, 1.5)]
    for a, b in zip(branched, separate, strict=True):
        assert list(a.columns) == list(TIDY_COLUMNS)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    normal, larger = branched
    before = normal["time_min"] < 5 * 60
    pd.testing.assert_frame_equal(normal[before], larger[before], check_exact=True)  # one history before
    after = ~before & (normal["insulin_U_per_min"] > normal["insulin_U_per_min"].min())  # basal + a bolus
    assert after.any(), "no bolus after the branch: the test would not see the factor"
    np.testing.assert_array_less(normal.loc[after, "insulin_U_per_min"], larger.loc[after, "insulin_U_per_min"])


def test_branching_refuses_what_it_cannot_simulate():
    with pytest.raises(ValueError, match="at least one bolus factor"):
        simulate_branches("child#001", 1, duration=timedelta(hours=1), branch_at=timedelta(0), factors=())
    with pytest.raises(ValueError, match="branch_at"):
        simulate_branches("child#001", 1, duration=timedelta(hours=1), branch_at=timedelta(hours=2), factors=(1.0,))
    with pytest.raises(ValueError, match="workers"):
        run_tasks(abs, [1], workers=0)


def test_tasks_on_worker_processes_come_back_in_order():
    tasks = [-5, 3, -1, 0, 2]
    assert run_tasks(abs, tasks, workers=2) == run_tasks(abs, tasks, workers=1) == [5, 3, 1, 0, 2]


def test_scenarios_that_share_their_first_days_are_simulated_together(monkeypatch):
    """One task per patient and group of scenarios that differ only in the bolus factor; each
    table holds its scenario's patients in the order given, with the patient's seed."""
    calls = []

    def fake(task):
        calls.append(task)
        name, seed, days, factor_from_day, factors = task
        return [
            pd.DataFrame({"patient": [name], "seed": [seed], "days": [days], "factor": [f], "from": [factor_from_day]})
            for f in factors
        ]

    monkeypatch.setattr(t1d_cohort, "_scenario_task", fake)
    scenarios = (Scenario(3, 1, 1.0, 3), Scenario(3, 2, 1.0, 3), Scenario(3, 1, 1.5, 3))
    tables = generate_cohorts(("adult#001", "child#002"), scenarios)
    assert len(calls) == 4  # (seed 1: factors 1.0 and 1.5 together) and seed 2, for each patient
    assert {c[4] for c in calls} == {(1.0, 1.5), (1.0,)}
    for table, scenario in zip(tables, scenarios, strict=True):
        assert list(table["patient"]) == ["adult#001", "child#002"]
        assert list(table["seed"]) == [scenario.patient_seed(0), scenario.patient_seed(1)]
        assert set(table["factor"]) == {scenario.bolus_factor} and set(table["from"]) == {3}
