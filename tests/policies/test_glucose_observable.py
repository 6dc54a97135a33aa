"""The glucose controllers measure the glucose observable their model declares, not a fixed name."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import medsim.cli.risk_cmds as risk_cmds  # registers the command on the shared app
import medsim.models as registry
from medsim.cli import app
from medsim.policies.builtin import PID, BasalBolus, Flip
from medsim.policies.loading import parse_policy
from medsim.policies.protocol import MissingObservableError, PolicyContext, PolicySpecError, for_model

del risk_cmds
GLUCOSE_MODELS = ("glucose_insulin", "t1d_ou", "uva_padova")
CONTROLLERS = ("pid", "basal_bolus")


def test_every_declared_glucose_observable_is_an_observable_of_its_models_limits():
    for name in registry.available():
        model = registry.get(name)
        glucose = model.glucose_observable
        if glucose is None:
            continue
        assert glucose in model.observable_names, name
        # The observable the model's safety limits and target range are set on (mg/dL).
        assert {lim.observable for lim in model.safety_limits} == {glucose} == {model.target_range.observable}, name
        assert model.observable(glucose).unit == "mg/dL", name


@pytest.mark.parametrize("kind", CONTROLLERS)
@pytest.mark.parametrize("model_name", GLUCOSE_MODELS)
def test_controllers_measure_the_models_glucose(model_name, kind):
    model = registry.get(model_name)
    policy = parse_policy(f"{kind}:every=30", context=PolicyContext(model=model))
    assert policy.glucose == model.glucose_observable == "glucose_mg_dL"
    assert policy.name == f"{kind}:every=30"  # what it takes from the model is not a parameter
    # The rollout and the environment bind a policy built without a model in the same way.
    assert for_model(dict(pid=PID, basal_bolus=BasalBolus)[kind](every=30.0), model) == policy


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_a_model_without_glucose_names_the_policy_and_its_observables(kind):
    pk = registry.get("pk_oral_1cmt")
    with pytest.raises(MissingObservableError, match=rf"{kind}: model 'pk_oral_1cmt' declares no glucose") as err:
        parse_policy(kind, context=PolicyContext(model=pk))
    assert "its observables: conc" in str(err.value) and "observable=NAME" in str(err.value)
    assert isinstance(err.value, PolicySpecError)  # the command line reports it as bad input
    assert (err.value.policy, err.value.model, err.value.observables) == (kind, "pk_oral_1cmt", ("conc",))
    with pytest.raises(MissingObservableError):
        PID().for_model(pk)
    # Named explicitly, the observable is the user's choice on any model.
    assert parse_policy(f"{kind}:observable=conc", context=PolicyContext(model=pk)).glucose == "conc"


def test_the_user_named_observable_wins_and_stays_in_the_name():
    t1d = registry.get("t1d_ou")
    cgm = parse_policy("pid:observable=cgm_mg_dL", context=PolicyContext(model=t1d))
    assert cgm.glucose == "cgm_mg_dL" and cgm.name == "pid:observable=cgm_mg_dL"
    with pytest.raises(PolicySpecError, match="unknown parameter 'model_observable'"):
        parse_policy("pid:model_observable=cgm_mg_dL")


def test_a_controller_built_without_a_model_says_how_to_give_it_one(make_obs):
    obs = make_obs([0.0], {"glucose_mg_dL": [150.0]}, covariates={"BASAL": 1.0}, time_unit="min")
    with pytest.raises(MissingObservableError, match=r"pid: no glucose observable to measure: .* without a model"):
        PID().act(PID().init(1, seed=0), obs, rng=np.random.default_rng(0))


def test_composites_bind_their_components():
    model = registry.get("uva_padova")
    flip = for_model(Flip(a=PID(every=15.0), b=BasalBolus(every=60.0)), model)
    assert flip.a.glucose == flip.b.glucose == "glucose_mg_dL"
    assert for_model(flip, model) is flip  # already bound: nothing rebuilt


def test_the_risk_command_refuses_pid_on_a_pk_model(tmp_path):
    args = ["risk", "--prior", "pk_iv_1cmt", "--policy", "pid", "--spec", "conc<=40;horizon=4h", "--n", "4"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "pid: model 'pk_iv_1cmt' declares no glucose observable (its observables: conc)" in result.output


def test_basal_bolus_reads_the_meal_compartment_its_model_declares():
    """The announced carbohydrate comes from ``model.meal_cmt``, unless ``meal_cmt`` is given."""
    from dataclasses import replace

    model = registry.get("glucose_insulin")
    assert BasalBolus().for_model(model).meal == model.meal_cmt
    assert BasalBolus(meal_cmt=7).for_model(model).meal == 7
    moved = replace(model, meal_cmt=5)  # a model that doses meals elsewhere
    assert BasalBolus().for_model(moved).meal == 5
    assert BasalBolus().for_model(moved).name == "basal_bolus"  # not a spec parameter
    assert BasalBolus().meal is None  # unbound: no announced meals are read
