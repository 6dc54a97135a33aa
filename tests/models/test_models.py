"""The model registry and the physiology of each registered model."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

import medsim.models as registry
from medsim.cli import app
from medsim.models.base import Parameter, ResidualError


@pytest.mark.parametrize("name", registry.available())
def test_model_metadata_is_complete(name):
    model = registry.get(name)
    assert model.name == name
    assert model.citation and model.time_unit
    for s in model.states:
        assert s.name.isidentifier() and s.unit
    for p in model.parameters:
        assert p.unit and p.description
    for o in model.observables:
        assert o.unit
    # every residual-error model belongs to an observable, every observed CMT to an observable
    assert set(model.residual) <= set(model.observable_names)
    assert set(model.obs_targets.values()) <= set(model.observable_names)
    assert set(model.dose_targets.values()) <= set(model.state_names)
    json.dumps(model.describe(), default=str)


@pytest.mark.parametrize("name", registry.available())
def test_drift_diffusion_observe_have_named_outputs(name):
    model = registry.get(name)
    theta = model.typical_parameters()
    x = model.initial_state(theta)
    assert set(x) == set(model.state_names)
    dx = model.drift(0.0, x, theta, {})
    assert set(dx) == set(model.state_names)
    g = model.diffusion(0.0, x, theta)
    assert set(g) <= set(model.state_names) and g
    y = model.observe(x, theta)
    assert set(y) == set(model.observable_names)


@pytest.mark.parametrize("name", registry.available())
def test_functions_are_elementwise_and_vmappable(name):
    """Batch evaluation equals per-patient evaluation (the simulator relies on it)."""
    model = registry.get(name)
    theta = model.typical_parameters()
    scale = jnp.array([0.8, 1.0, 1.3])
    batch_theta = {
        k: v * scale if k in {p.name for p in model.structural} else jnp.broadcast_to(v, (3,)) for k, v in theta.items()
    }
    xb = model.initial_state(batch_theta)
    xb = {k: v + 1.0 for k, v in xb.items()}
    batch = model.drift(0.0, xb, batch_theta, {})
    vm = jax.vmap(lambda x, th: model.drift(0.0, x, th, {}))(xb, batch_theta)
    for k in batch:
        np.testing.assert_allclose(batch[k], vm[k], rtol=1e-6)


def test_pk_oral_mass_balance():
    """d(depot + central)/dt = -CL/V * central: absorption moves mass, elimination removes it."""
    model = registry.get("pk_oral_1cmt")
    theta = model.typical_parameters()
    x = {"depot": jnp.asarray(100.0), "central": jnp.asarray(50.0)}
    dx = model.drift(0.0, x, theta, {})
    total = float(dx["depot"] + dx["central"])
    assert total == pytest.approx(-2.75 / 31.9 * 50.0, rel=1e-6)


def test_pk_iv_covariates_scale_clearance_and_volume():
    model = registry.get("pk_iv_1cmt")
    pop = model.typical_parameters()
    low_apgar = model.individual_parameters(pop, {}, {"WGT": 2.0, "APGR": 3.0})
    high_apgar = model.individual_parameters(pop, {}, {"WGT": 2.0, "APGR": 8.0})
    assert float(low_apgar["CL"]) == pytest.approx(0.0047 * 2.0, rel=1e-6)
    assert float(high_apgar["V"]) == pytest.approx(0.984 * 2.0, rel=1e-6)
    assert float(low_apgar["V"]) == pytest.approx(0.984 * 2.0 * 1.159, rel=1e-5)
    eta = {"CL": jnp.asarray(0.1)}
    shifted = model.individual_parameters(pop, eta, {"WGT": 2.0, "APGR": 8.0})
    assert float(shifted["CL"]) == pytest.approx(0.0047 * 2.0 * np.exp(0.1), rel=1e-6)


def test_glucose_initial_state_is_a_steady_state():
    model = registry.get("glucose_insulin")
    theta = model.individual_parameters(model.typical_parameters(), {}, {"BASAL": 1.0})
    x = model.initial_state(theta)
    dx = model.drift(0.0, x, theta, {"insulin_sc": theta["BASAL"] / 60.0})
    for name, value in dx.items():
        # float32 cancellation in terms of size ~|x|/tau: relative 1e-6 of the largest term
        assert abs(float(value)) < 1e-5 * (1.0 + abs(float(x[name]))), name
    # with 1 U/h basal, fasting glucose is in the clinically plausible range
    assert 100.0 < float(x["glucose"]) < 200.0


def test_glucose_meal_raises_and_insulin_lowers_glucose():
    model = registry.get("glucose_insulin")
    theta = model.typical_parameters()
    x = model.initial_state(theta)
    basal = {"insulin_sc": theta["BASAL"] / 60.0}
    meal = model.dose(x, 2, jnp.asarray(50.0))
    after_meal = model.drift(0.0, {**meal, "gut2": jnp.asarray(20.0)}, theta, basal)
    assert float(after_meal["glucose"]) > 0
    high_action = {**x, "action": x["action"] * 2}
    assert float(model.drift(0.0, high_action, theta, basal)["glucose"]) < 0


def test_residual_error_models():
    f = jnp.array([1.0, 10.0])
    np.testing.assert_allclose(ResidualError("additive", add=0.5).sd(f), [0.5, 0.5])
    np.testing.assert_allclose(ResidualError("proportional", prop=0.1).sd(f), [0.1, 1.0], rtol=1e-6)
    np.testing.assert_allclose(
        ResidualError("combined", add=0.5, prop=0.1).sd(f), np.sqrt([0.25 + 0.01, 0.25 + 1.0]), rtol=1e-6
    )
    with pytest.raises(ValueError, match="needs add > 0"):
        ResidualError("additive")


def test_parameter_validation_names_the_parameter():
    with pytest.raises(ValueError, match="'CL'"):
        Parameter("CL", "L/h", -1.0)


def test_unknown_model_lists_registered():
    with pytest.raises(registry.UnknownModelError, match="pk_oral_1cmt"):
        registry.get("nope")


def test_models_cli_lists_all_models():
    runner = CliRunner()
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for name in registry.available():
        assert name in result.output
    result = runner.invoke(app, ["models", "pk_iv_1cmt", "--json"])
    assert result.exit_code == 0
    described = json.loads(result.output)
    assert described[0]["covariates"][0]["name"] == "WGT"
    assert runner.invoke(app, ["models", "nope"]).exit_code == 2
