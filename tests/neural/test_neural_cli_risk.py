"""``medsim sample`` and ``medsim risk`` on a neural checkpoint: the gate, the files, the errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from medsim.cli import app
from medsim.data.eventtable import read_event_table, write_event_table
from medsim.inference.neural import calibrate, load_checkpoint, save_checkpoint, update_calibration
from medsim.models.neural import export_model, sample_neural_population
from medsim.population import load_population

runner = CliRunner()

# 12 h of one-compartment oral PK in 0.25 h sub-steps (the model's training step is 0.75 h): a
# short, cheap rollout that still crosses the 8 mg/L bound for some patients.
RISK = ["--policy", "fixed:dose=320,every=6", "--spec", "conc<=8;horizon=12h;epsilon=0.2;rare=off", "--dt", "0.25"]


def _text(result) -> str:
    """The command's output with line breaks undone (rich wraps at the terminal width, 80 in CI)."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def files(tmp_path_factory, cohort, trained):
    """A calibrated checkpoint trained on an event-table file, and a miscalibrated copy of it.

    ``tiny`` carries the calibration ``medsim calibrate`` would store (held-out forecasts of
    three subjects); ``bad`` has the same weights with a recorded 90% coverage of 0.55 and 50%
    coverage of 0.25, below the default floor 0.8 whatever the trained weights give.
    """
    folder = tmp_path_factory.mktemp("neural_cli_risk")
    table = write_event_table(cohort, folder / "tiny.csv")
    data = read_event_table(table)
    provenance = {
        "cohort": data.name,
        "cohort_source": str(table),
        "data_hash": data.data_hash(),
        "train_ids": list(trained.train_ids),
        "validation_ids": list(trained.validation_ids),
        "best_epoch": trained.best_epoch,
        "n_weights": trained.model.n_weights(),
    }
    record = calibrate(trained.model, list(data.subjects[:3]), steps_ahead=2, samples=16, seed=0).to_dict()
    good = update_calibration(save_checkpoint(trained.model, folder / "tiny", provenance=provenance), record)
    low = {**record, "coverage": {"0.5": 0.25, "0.9": 0.55}}
    low["coverage_by_step"] = {"0.5": [0.25, 0.25], "0.9": [0.55, 0.55]}
    bad = update_calibration(save_checkpoint(trained.model, folder / "bad", provenance=provenance), low)
    return {"folder": folder, "table": table, "data": data, "good": good, "bad": bad, "record": record}


@pytest.fixture(scope="module")
def floor_ok(files):
    """A floor the calibrated checkpoint passes: just under its measured 90% coverage."""
    return max(0.01, round(files["record"]["coverage"]["0.9"] - 0.05, 2))


def test_sample_writes_a_population_that_round_trips(files, floor_ok, tmp_path):
    out = tmp_path / "pop.nc"
    args = ["sample", str(files["good"]), "--n", "6", "--seed", "3", "--coverage-floor", str(floor_ok)]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "neural model tiny" in _text(result) and "held-out 90% coverage" in _text(result)
    loaded = load_checkpoint(files["good"])
    back = load_population(out, model=export_model(loaded.model))
    # the same seed through the library, with covariates resampled from the training cohort
    direct = sample_neural_population(loaded.model, 6, seed=3, subjects=list(files["data"].subjects), floor=floor_ok)
    assert back.n_patients == 6 and back.mode == "population"
    np.testing.assert_array_equal(back.draw, direct.draw)
    for name, values in direct.params.items():
        np.testing.assert_array_equal(back.params[name], values)
    np.testing.assert_array_equal(back.covariates["WT"], direct.covariates["WT"])
    prov = back.provenance
    assert prov["checkpoint"] == str(files["good"]) == prov["source_file"]
    assert prov["checkpoint_weights_sha256"] == loaded.weights_sha256
    assert prov["data_hash"] == files["data"].data_hash() and prov["cohort_used"].startswith("the training cohort")
    assert prov["calibration_coverage_90"] == files["record"]["coverage"]["0.9"]
    assert prov["calibration_passed"] is True and prov["forced"] is False
    # the same ranges a posterior stores (inference.cohort_support): infusion rates included
    assert set(prov["data_support"]) == {"conc", "bolus_cmt1", "rate_cmt1"}


def test_sample_a_digital_twin_of_a_training_subject(files, floor_ok, tmp_path):
    out = tmp_path / "twin.nc"
    args = ["sample", str(files["good"]), "--n", "4", "--mode", "personalized", "--subject", "2"]
    result = runner.invoke(app, [*args, "--coverage-floor", str(floor_ok), "--out", str(out)])
    assert result.exit_code == 0, result.output
    twin = load_population(out, model=export_model(load_checkpoint(files["good"]).model))
    assert list(twin.subject) == ["2"] * 4 and twin.provenance["subject"] == "2"


def test_risk_on_a_checkpoint_writes_a_report_naming_the_learned_model(files, floor_ok, tmp_path):
    out = tmp_path / "report"
    args = ["risk", str(files["good"]), *RISK, "--n", "8", "--seed", "1", "--coverage-floor", str(floor_ok)]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "LEARNED MODEL" in _text(result)
    for name in ("report.json", "report.md", "report.html"):
        assert "LEARNED MODEL" in (out / name).read_text()
    data = json.loads((out / "report.json").read_text())
    loaded = load_checkpoint(files["good"])
    prov, settings = data["provenance"], data["provenance"]["settings"]
    assert prov["model"] == "tiny" and prov["model_version"] == export_model(loaded.model).version
    assert prov["posterior_file"] == str(files["good"]) and prov["data_hash"] == files["data"].data_hash()
    assert prov["fit"]["ok"] is None and prov["fit"]["summary"]["method"].startswith("neural")
    assert settings["model_kind"].startswith("learned")
    assert settings["neural_weights_sha256"] == loaded.weights_sha256 and len(settings["neural_config_sha256"]) == 64
    assert settings["calibration_coverage_90"] == str(files["record"]["coverage"]["0.9"])
    assert settings["calibration_gate"] == "passed"
    # one report-level warning: the model is learned (the gate passed, fit diagnostics do not apply)
    assert len(data["warnings"]) == 1 and data["warnings"][0].startswith("LEARNED MODEL")
    assert data["policies"][0]["policy"].startswith("fixed:dose=320")


def test_a_miscalibrated_checkpoint_is_refused_unless_forced(files, tmp_path):
    bad = str(files["bad"])
    for command in (["sample", bad, "--out", str(tmp_path / "p.nc")], ["risk", bad, *RISK, "--out", str(tmp_path)]):
        result = runner.invoke(app, [*command, "--n", "4"])
        assert result.exit_code == 2
        # the measured 90% and 50% coverage and the floor, in the words a user reads
        assert "covered 0.550 of" in _text(result) and "floor 0.80" in _text(result)
        assert "50% intervals covered 0.250" in _text(result) and "--force" in _text(result)
    assert not (tmp_path / "p.nc").exists() and not (tmp_path / "report.json").exists()
    # a floor below the recorded coverage lets it through without --force
    lenient = runner.invoke(
        app, ["sample", bad, "--n", "4", "--coverage-floor", "0.5", "--out", str(tmp_path / "l.nc")]
    )
    assert lenient.exit_code == 0, lenient.output
    forced = runner.invoke(app, ["sample", bad, "--n", "4", "--force", "--out", str(tmp_path / "f.nc")])
    assert forced.exit_code == 0, forced.output
    assert "calibration gate overridden" in _text(forced)
    prov = load_population(tmp_path / "f.nc", model=export_model(load_checkpoint(bad).model)).provenance
    assert prov["forced"] is True and prov["calibration_passed"] is False and prov["calibration_coverage_90"] == 0.55


def test_a_forced_risk_report_says_so(files, tmp_path):
    out = tmp_path / "forced"
    result = runner.invoke(app, ["risk", str(files["bad"]), *RISK, "--n", "8", "--force", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    overridden = [w for w in data["warnings"] if w.startswith("CALIBRATION GATE OVERRIDDEN")]
    assert len(overridden) == 1 and "covered 0.550" in overridden[0] and "floor 0.80" in overridden[0]
    assert data["provenance"]["settings"]["calibration_gate"].startswith("FORCED")
    assert "CALIBRATION GATE OVERRIDDEN" in (out / "report.md").read_text()


def test_clear_errors(files, floor_ok, tmp_path):
    folder, good = files["folder"], files["good"]

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 2, result.output
        return _text(result)

    foreign = tmp_path / "settings.json"
    foreign.write_text('{"epochs": 3}')
    assert "not a medsim neural checkpoint" in run("sample", str(foreign), "--n", "2", "--out", str(tmp_path / "x"))
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(good, alone / "tiny.json")
    shutil.copy(folder / "bad.safetensors", alone / "bad.safetensors")
    message = run("sample", str(alone / "tiny.json"), "--n", "2", "--out", str(tmp_path / "x"))
    assert "tiny.safetensors: weights file of tiny.json not found" in message
    message = run("sample", str(alone / "bad.safetensors"), "--n", "2", "--out", str(tmp_path / "x"))
    assert "bad.json: not found" in message
    floor = ["--coverage-floor", str(floor_ok)]
    twin = ["--n", "2", "--mode", "personalized", "--subject", "nobody", *floor, "--out", str(tmp_path / "x")]
    message = run("sample", str(good), *twin)
    assert "'nobody' is not in the training cohort" in message and "'1'" in message
    message = run(
        "sample", "--prior", "pk_iv_1cmt", "--n", "2", "--cohort", str(files["table"]), "--out", str(tmp_path / "x")
    )
    assert "--cohort applies to neural checkpoints only" in message
    # pid doses insulin at a multiple of the patient's basal rate: a PK model conditioned on
    # body weight has none to give it.
    pid = ["--policy", "pid:observable=conc,target=5,every=1", "--spec", "conc<=8;horizon=2h;rare=off", "--dt", "0.25"]
    message = run("risk", str(good), *pid, "--n", "2", *floor, "--out", str(tmp_path / "r"))
    assert "pid needs the covariate BASAL" in message and "conditioned on covariates ['WT']" in message


def test_a_changed_training_cohort_is_not_used_silently(files, trained, floor_ok, tmp_path):
    record = json.loads(files["good"].read_text())
    stale = save_checkpoint(
        trained.model, tmp_path / "stale", provenance={**record["provenance"], "data_hash": "0" * 64}
    )
    update_calibration(stale, record["config"]["calibration"])
    twin = ["--n", "2", "--mode", "personalized", "--subject", "2", "--coverage-floor", str(floor_ok)]
    result = runner.invoke(app, ["sample", str(stale), *twin, "--out", str(tmp_path / "x.nc")])
    assert result.exit_code == 2 and "has changed since training" in _text(result)
    # naming the cohort explicitly is the way out
    result = runner.invoke(
        app, ["sample", str(stale), *twin, "--cohort", str(files["table"]), "--out", str(tmp_path / "x.nc")]
    )
    assert result.exit_code == 0, result.output
