"""``medsim calibrate`` and the neural branches of ``fit`` / ``sample`` on tiny data."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

import medsim.cli.neural_cmds as neural_cmds
from medsim.cli import app
from medsim.data.eventtable import write_event_table
from medsim.inference.neural import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory, cohort, trained):
    folder = tmp_path_factory.mktemp("neural_cli")
    table = write_event_table(cohort, folder / "tiny.csv")
    held_out = [s.id for s in cohort.subjects if s.id not in trained.train_ids + trained.validation_ids]
    provenance = {
        "train_ids": list(trained.train_ids),
        "validation_ids": list(trained.validation_ids),
        "test_ids": held_out or ["1"],
    }
    checkpoint = save_checkpoint(trained.model, folder / "tiny", provenance=provenance)
    return table, checkpoint


def test_calibrate_stores_coverage_in_the_checkpoint(files):
    table, checkpoint = files
    runner = CliRunner()
    result = runner.invoke(
        app, ["calibrate", str(checkpoint), str(table), "--steps", "2", "--samples", "16", "--floor", "0.01"]
    )
    assert result.exit_code == 0, result.output
    assert "cover 90%" in result.output
    record = json.loads(checkpoint.read_text())["config"]["calibration"]
    assert record["steps_ahead"] == 2 and record["samples"] == 16
    assert 0.0 <= record["coverage"]["0.9"] <= 1.0
    # the model reloads with its calibration, and the weights were not touched
    assert load_checkpoint(checkpoint).config.calibration["n_predictions"] == record["n_predictions"]


def test_calibrate_refuses_training_subjects(files):
    table, checkpoint = files
    result = CliRunner().invoke(app, ["calibrate", str(checkpoint), str(table), "--subjects", "all"])
    assert result.exit_code == 2
    assert "were used in training" in result.output


def test_fit_neural_cli_writes_a_checkpoint_with_its_calibration(files, tmp_path):
    table, _ = files
    status = neural_cmds.fit_neural_cli(
        str(table), out=tmp_path / "fit", template="pk_oral_1cmt", epochs=2, steps_ahead=2, samples=8, floor=0.01
    )
    assert status == 0
    loaded = load_checkpoint(tmp_path / "fit")
    assert loaded.config.observables[0].name == "conc" and loaded.config.time_unit == "h"
    assert loaded.config.calibration["steps_ahead"] == 2
    assert loaded.provenance["versions"]["torch"]
    assert set(loaded.provenance["test_ids"]).isdisjoint(loaded.provenance["train_ids"])
    assert neural_cmds.is_neural_checkpoint(tmp_path / "fit.safetensors")
    assert not neural_cmds.is_neural_checkpoint(table)
    # Two epochs make no useful model: the gate judges it (coverage against the 0.01 floor, but also
    # sharpness and CRPS skill, which such a model may fail), so the population is forced and says so.
    assert loaded.config.calibration["coverage"]["0.9"] is not None
    population = neural_cmds.neural_population_cli(
        tmp_path / "fit", 4, seed=0, cohort=str(table), floor=0.01, force=True
    )
    assert population.n_patients == 4 and population.provenance["checkpoint"].endswith("fit.json")


def test_sampling_an_uncalibrated_checkpoint_exits(trained, tmp_path, capsys):
    save_checkpoint(trained.model, tmp_path / "raw")
    with pytest.raises(typer.Exit) as err:
        neural_cmds.neural_population_cli(tmp_path / "raw", 4, seed=0)
    assert err.value.exit_code == 2
    assert "no held-out calibration" in capsys.readouterr().err


def test_importing_medsim_does_not_load_torch():
    import subprocess
    import sys

    code = (
        "import sys, medsim, medsim.models, medsim.cli, medsim.cli.neural_cmds, medsim.simulate, medsim.population;"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
