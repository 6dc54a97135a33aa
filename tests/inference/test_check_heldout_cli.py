"""``medsim check --heldout-...`` stores the gate; ``medsim risk`` reads it; ``--compare`` ranks fits."""

from __future__ import annotations

import json
import shutil

import pytest
from inference_synthetic import oral_cohort
from typer.testing import CliRunner

import medsim.cli.fit_cmds  # noqa: F401  (registers `fit` and `check` on the app)
from medsim.cli import app
from medsim.data import Cohort, read_event_table, write_event_table
from medsim.inference import Posterior, fit
from medsim.inference.checks.heldout import split_after
from medsim.models import get
from medsim.models.gate import CalibrationGate, Criterion

runner = CliRunner()
RISK = ["--policy", "fixed:dose=320,every=24", "--spec", "conc<=1000;horizon=24h;epsilon=0.5;rare=off", "--n", "20"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An event table of 3 synthetic subjects and an SVI fit of its first 9 hours (tiny: seconds)."""
    folder = tmp_path_factory.mktemp("gate")
    padded = oral_cohort(3).padded()
    cohort = Cohort.from_arrays(
        padded.ids,
        padded.obs_time,
        padded.obs_value,
        2,
        dose_time=padded.dose_time,
        dose_amount=padded.dose_amount,
        dose_cmt=1,
        units={"TIME": "h", "DV": "mg/L", "AMT": "mg"},
        name="three subjects",
    )
    table = write_event_table(cohort, folder / "cohort.csv")
    training, _ = split_after(read_event_table(table), after=9.0)
    # 3000 steps: at 200 and 1000 the guide's spread had not converged (the spread test flags them)
    posterior = fit(training, get("pk_oral_1cmt"), method="svi", svi_steps=3000, draws=60, seed=1)
    return {"table": table, "posterior": posterior.save(folder / "train.nc")}


@pytest.mark.slow
def test_check_stores_the_gate_and_risk_reads_it(files, tmp_path):
    post = tmp_path / "post.nc"
    shutil.copy(files["posterior"], post)
    # unchecked: the report says so first
    result = runner.invoke(app, ["risk", str(post), *RISK, "--out", str(tmp_path / "unchecked")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "unchecked" / "report.json").read_text())
    assert data["warnings"][0].startswith("CALIBRATION NOT CHECKED")
    # the posterior was fitted without the held-out window: no refit, the gate is stored in the file
    args = ["check", str(post), "--cohort", str(files["table"]), "--heldout-after", "9", "--bound", "conc>=2"]
    checked = runner.invoke(app, [*args, "--json"])
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.output[checked.output.index("{") :])
    gate = Posterior.load(post).calibration()
    assert report["calibration"]["status"] == gate.status and gate.n_points == 6 and gate.n_subjects == 3
    # 6 held-out points cannot support a coverage judgement: not checked, never passed
    assert gate.status == "not_checked" and "posterior fitted without them" in gate.heldout
    assert gate.events.startswith("conc>=2") and gate.figure("log_score") is not None
    # a failed gate (stored as `medsim check` would): no PASS, MISCALIBRATED first; --force is recorded
    failed = CalibrationGate(
        status="failed",
        criteria=(Criterion("coverage_0.9", 0.3, 0.82, 0.98, "failed", "90% intervals covered 0.300"),),
        n_points=40,
        n_subjects=3,
    )
    Posterior.load(post).with_calibration(failed).save(post)
    for extra, forced in (([], False), (["--force"], True)):
        out = tmp_path / f"failed{forced}"
        result = runner.invoke(app, ["risk", str(post), *RISK, *extra, "--out", str(out)])
        assert result.exit_code == 0, result.output
        data = json.loads((out / "report.json").read_text())
        assert data["warnings"][0].startswith("MISCALIBRATED on 40 held-out measurements")
        assert data["provenance"]["calibration_forced"] is forced
        if not forced:
            assert data["policies"][0]["verdict"]["decision"] != "PASS"
            assert "PASS: P(violation)" not in (out / "report.md").read_text()


@pytest.mark.slow
def test_check_refuses_foreign_data_and_compare_ranks_fits(files, tmp_path):
    from medsim.cli.check_cmds import heldout_gate

    full = read_event_table(files["table"])
    posterior = Posterior.load(files["posterior"])
    with pytest.raises(ValueError, match="fitted to other data"):
        heldout_gate(posterior, split_after(full, after=12.0)[0], after=5.0)
    a, b = tmp_path / "a.nc", tmp_path / "b.nc"
    for path in (a, b):
        shutil.copy(files["posterior"], path)
        args = ["check", str(path), "--cohort", str(files["table"]), "--heldout-after", "9"]
        assert runner.invoke(app, args).exit_code == 0
    figs = tmp_path / "figs"
    result = runner.invoke(app, ["check", str(a), str(b), "--compare", "--json", "--figures", str(figs)])
    assert result.exit_code == 0, result.output
    assert (figs / "loo_compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the PSIS-LOO plot
    compared = json.loads(result.output)
    assert compared["heldout_comparable"] is True and set(compared["models"]) == {str(a), str(b)}
    scores = {m["heldout_log_score"] for m in compared["models"].values()}
    assert len(scores) == 1  # the same fit, the same seed: the same held-out log score
    assert runner.invoke(app, ["check", str(a), str(b)]).exit_code == 2  # two files need --compare


@pytest.mark.slow
def test_refit_settings_reproduce_the_recorded_fit(files):
    import inspect

    from medsim.cli.check_cmds import refit_settings

    posterior = Posterior.load(files["posterior"])
    settings = refit_settings(posterior)
    assert settings["method"] == "svi" and settings["svi_steps"] == 3000 and settings["draws"] == 60
    # SVI runs non-centred whatever "auto" means for NUTS: () reproduces that
    assert settings["seed"] == 1 and settings["centered"] == () and settings["process_noise"] is True
    assert settings["guide"] == "mvn" and settings["svi_particles"] == 1 and settings["svi_learning_rate"] == 0.01
    inspect.signature(fit).bind(None, None, **settings)  # every key is an argument of inference.fit
