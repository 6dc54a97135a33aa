"""``medsim simulate`` smoke tests (the command module is registered by importing it)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

import medsim.cli.sim_cmds  # noqa: F401  (registers the command)
from medsim.cli.app import app
from medsim.policies.regimen import DeclaredRegimen, declared_bounds
from medsim.population import VirtualPopulation, prior_population
from medsim.simulate import Bound

RUNNER = CliRunner()


@pytest.fixture(autouse=True)
def _one_device(monkeypatch):
    # Keep this test process on JAX's default single CPU device.
    monkeypatch.setenv("MEDSIM_CPU_DEVICES", "1")


def test_json_summary_and_fan_chart(tmp_path):
    png = tmp_path / "fan.png"
    result = RUNNER.invoke(
        app, ["simulate", "--model", "glucose_insulin", "--n", "40", "--hours", "8", "--json", "--plot", str(png)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["n_patients"] == 40 and summary["hours"] == 8.0
    assert [b["bound"] for b in summary["bounds"]] == ["glucose_mg_dL>=70", "glucose_mg_dL<=180"]
    for b in summary["bounds"]:
        assert 0.0 <= b["p_bridge"] <= 1.0 and 0.0 <= b["p_grid"] <= 1.0
        # Every grid crossing is a bridge crossing with probability 1, so bridge >= grid per patient.
        assert b["p_bridge"] >= b["p_grid"] - 1e-12
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed into place


def test_table_output_for_a_pk_model():
    result = RUNNER.invoke(
        app, ["simulate", "--model", "pk_oral_1cmt", "--n", "20", "--hours", "13", "--bound", "conc<=8"]
    )
    assert result.exit_code == 0, result.output
    assert "conc<=8" in result.output and "patient-days/s" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--bound", "glucose_mg_dL=>70"], "expected OBSERVABLE<=VALUE or OBSERVABLE>=VALUE"),
        (["--bound", "insulin>=5"], "no observable 'insulin'"),
    ],
)
def test_bad_arguments_exit_with_a_message(args, message):
    result = RUNNER.invoke(app, ["simulate", "--n", "4", "--hours", "1", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_bounds_come_from_the_model_declarations():
    # every registered model's declared limits become the simulated bounds; no command lists models by name
    import medsim.models as registry

    assert declared_bounds(registry.get("glucose_insulin")) == (
        Bound("glucose_mg_dL", 70.0, "lower"),
        Bound("glucose_mg_dL", 180.0, "upper"),
    )
    assert declared_bounds(registry.get("pk_oral_1cmt")) == (Bound("conc", 20.0, "upper"),)
    # t1d_ou inherits the glucose model's limits, regimen and meal compartment (it had none before)
    ou = registry.get("t1d_ou")
    assert declared_bounds(ou) == declared_bounds(registry.get("glucose_insulin"))
    theta = prior_population(ou, 2, key=jax.random.key(0), covariates={"BASAL": [1.2, 0.6]})
    regimen = DeclaredRegimen.for_population(VirtualPopulation.from_parameters(ou, theta), 1440.0, look_every=60.0)
    assert regimen.time.shape == (6,) and regimen.amount.shape == (6, 2)
    assert np.allclose(regimen.rate[1], [0.02, 0.01])  # 1.2 and 0.6 U/h in U/min
    assert ou.meal_cmt == 2


def test_bound_option_uses_the_spec_parser():
    result = RUNNER.invoke(app, ["simulate", "--n", "4", "--hours", "1", "--bound", "glucose<<3"])
    assert result.exit_code == 2
    assert "--bound" in result.output and "OBSERVABLE<=VALUE" in result.output


def test_a_model_in_days_simulates_the_hours_asked_for(monkeypatch):
    # The command once read any time unit other than minutes as hours: a model in days ran 24 times
    # the horizon at 24-minute steps. It now converts with the one time-unit table (medsim/units.py).
    import dataclasses

    import medsim.models as registry

    days = dataclasses.replace(registry.get("pk_oral_1cmt"), name="pk_oral_days", time_unit="d")
    original = registry.get
    monkeypatch.setattr(registry, "get", lambda name: days if name == days.name else original(name))
    result = RUNNER.invoke(app, ["simulate", "--model", days.name, "--n", "4", "--hours", "48", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["time_unit"] == "d" and summary["horizon"] == 2.0
    assert summary["dt"] == 1.0 / 1440.0  # one minute in days: the units table's 1 / 1440, bit for bit
