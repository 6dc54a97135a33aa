"""``medsim simulate`` smoke tests (the command module is registered by importing it)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import medsim.cli.sim_cmds as sim_cmds
from medsim.cli.app import app
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
        (["--bound", "glucose_mg_dL=>70"], "expected OBSERVABLE>=VALUE"),
        (["--bound", "insulin>=5"], "no observable 'insulin'"),
    ],
)
def test_bad_arguments_exit_with_a_message(args, message):
    result = RUNNER.invoke(app, ["simulate", "--n", "4", "--hours", "1", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_parse_bound():
    assert sim_cmds.parse_bound("glucose_mg_dL >= 70") == Bound("glucose_mg_dL", 70.0, "lower")
    assert sim_cmds.parse_bound("conc<2e1") == Bound("conc", 20.0, "upper")
