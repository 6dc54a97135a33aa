"""``evaluate_policies`` takes objects (policies, scenarios); spec strings are parsed in one place."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import medsim.cli.risk_cmds as risk_cmds  # registers the command on the shared app
import medsim.models as registry
from medsim.cli import app
from medsim.policies import evaluate
from medsim.policies.builtin import PID, TDM, FixedDose
from medsim.policies.evaluate import evaluate_policies, resolve_scenario
from medsim.policies.loading import PolicySpecError, build_policies
from medsim.policies.protocol import MissingObservableError, Policy, PolicyContext
from medsim.policies.risk.codec import to_jsonable
from medsim.policies.scenarios import MealScenario
from medsim.policies.spec_file import parse_spec

PK = registry.get("pk_oral_1cmt")
GLUCOSE = registry.get("glucose_insulin")
del risk_cmds


def test_policy_objects_give_the_report_of_their_spec_strings(pk_draws):
    spec = parse_spec("conc<=12;horizon=24h;rare=off", model=PK)
    common = dict(n=4, seed=0, scenario="none", loop="host")
    objects = [FixedDose(dose=320.0, every=12.0), TDM(target=7.0, every=12.0, dose=320.0)]
    by_object, results = evaluate_policies(pk_draws, objects, spec, **{**common, "scenario": None})
    by_spec, spec_results = evaluate_policies(
        pk_draws, ["fixed:dose=320,every=12", "tdm:target=7,every=12,dose=320"], spec, **common
    )
    assert [r.policy for r in results] == [p.name for p in objects]
    # Same patients, same seed, same policies: the same report, number for number.
    assert to_jsonable(by_object.policies) == to_jsonable(by_spec.policies)
    np.testing.assert_array_equal(results[1].log_survival, spec_results[1].log_survival)


def test_build_policies_keeps_objects_and_parses_strings_only():
    fixed = FixedDose(dose=1.0)
    built = build_policies([fixed, "tdm:target=7"])
    assert built[0] is fixed and isinstance(built[1], Policy) and built[1] == TDM(target=7.0)
    with pytest.raises(PolicySpecError, match=r"policies\[1\] \(int\) is not a policy"):
        build_policies([fixed, 3])
    # Objects meet the model here: a glucose controller on a PK model fails before any simulation.
    with pytest.raises(MissingObservableError, match="pid: model 'pk_oral_1cmt' declares no glucose"):
        build_policies([fixed, PID()], context=PolicyContext(model=PK))
    bound = build_policies([PID()], context=PolicyContext(model=GLUCOSE))[0]
    assert bound.glucose == "glucose_mg_dL" and bound.name == "pid"
    # A single spec string is not a sequence of specs (it used to be read letter by letter).
    with pytest.raises(PolicySpecError, match="got the string 'pid'"):
        build_policies("pid")


def test_scenario_names_become_scenarios_in_one_place():
    meals = MealScenario(seed=5, time_sd_h=0.0)
    assert resolve_scenario(GLUCOSE, meals, seed=1) is meals
    assert resolve_scenario(GLUCOSE, None, seed=1) is None
    assert resolve_scenario(GLUCOSE, "auto", seed=1) == MealScenario(seed=1, cmt=GLUCOSE.meal_cmt)
    assert resolve_scenario(PK, "auto", seed=1) is None
    with pytest.raises(ValueError, match="scenario must be auto, meals or none, got 'lunch'"):
        resolve_scenario(GLUCOSE, "lunch", seed=1)


def test_the_risk_command_hands_the_library_objects(tmp_path, monkeypatch):
    seen = {}

    def spy(draws, policies, spec, **options):
        seen.update(policies=policies, scenario=options["scenario"], loop=options["loop"])
        raise ValueError("stop here")

    monkeypatch.setattr(evaluate, "evaluate_policies", spy)
    args = ["risk", "--prior", "pk_iv_1cmt", "--policy", "fixed:dose=20,every=12", "--policy", "tdm:target=7"]
    args += ["--spec", "conc<=40;horizon=4h", "--n", "4", "--out", str(tmp_path), "--loop", "host"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "stop here" in result.output
    assert seen["policies"] == [FixedDose(dose=20.0, every=12.0), TDM(target=7.0)]
    assert seen["scenario"] is None  # "auto" on a model without a meal compartment
    assert seen["loop"] == "host"
