"""``medsim sbc``: simulation-based calibration of a mechanistic model from the command line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medsim.cli import app

RUNNER = CliRunner()


@pytest.mark.slow
def test_sbc_runs_and_writes_a_rank_summary(tmp_path):
    # Tiny run (2 cohorts, 9 rank draws): checks the wiring, not the calibration (the statistical
    # check of run_calibration is tests/inference/test_calibration.py).
    out = tmp_path / "sbc.json"
    args = ["sbc", "pk_iv_1cmt", "--replications", "2", "--subjects", "2", "--times", "0.5,2,6,12,24"]
    args += ["--dose", "30", "--chains", "1", "--warmup", "15", "--draws", "15", "--rank-draws", "9", "--bins", "5"]
    result = RUNNER.invoke(app, [*args, "--json", "--out", str(out)])
    assert result.exit_code in (0, 1), result.output
    summary = json.loads(out.read_text())
    assert summary == json.loads(result.stdout)
    assert summary["n_cohorts"] == 2 and summary["n_rank_draws"] == 9
    assert summary["settings"]["design"]["obs_time"] == [0.5, 2.0, 6.0, 12.0, 24.0]
    sites = summary["sites"]
    assert "eta_CL[0]" in sites
    for entry in sites.values():
        assert entry["rank_test"]["n"] == 2 and sum(entry["rank_test"]["counts"]) == 2
    assert (result.exit_code == 1) == bool(summary["rejected"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bins", "7"], "--bins 7 must divide --rank-draws + 1 = 100"),
        (["--obs-cmt", "5"], "--obs-cmt 5: model 'pk_iv_1cmt' observes CMT"),
        (["--covariate", "HEIGHT=3"], "--covariate HEIGHT: model 'pk_iv_1cmt' has covariates"),
        (["--covariate", "WGT"], "--covariate: expected NAME=NUMBER"),
        (["--times", "1,x"], "--times: expected comma-separated numbers"),
    ],
)
def test_sbc_rejects_bad_options_before_any_fit(extra, message):
    result = RUNNER.invoke(app, ["sbc", "pk_iv_1cmt", *extra])
    assert result.exit_code == 2
    assert message in result.output


def test_sbc_unknown_model():
    result = RUNNER.invoke(app, ["sbc", "no_such_model"])
    assert result.exit_code == 2 and "no_such_model" in result.output


@pytest.mark.slow
def test_sbc_with_svi_fits_every_cohort_and_ranks_the_truth(tmp_path):
    # Mechanics only (2 cohorts, 30 SVI steps, ODE limit): ranks in range, SVI settings recorded,
    # exit status 1 exactly when a site is rejected. Two boluses given as TIME:CMT:AMOUNT. Slow
    # for its size: each cohort's fit compiles its own SVI program and posterior file.
    out = tmp_path / "sbc.json"
    args = ["sbc", "pk_iv_1cmt", "--method", "svi", "--svi-steps", "30", "--replications", "2", "--subjects", "2"]
    args += ["--times", "0.5,2,6,12", "--dose", "0:1:30", "--dose", "6:1:15", "--ode"]
    args += ["--draws", "19", "--rank-draws", "19", "--bins", "5", "--max-substep", "2", "--svi-learning-rate", "0.02"]
    result = RUNNER.invoke(app, [*args, "--json", "--out", str(out)])
    assert result.exit_code in (0, 1), result.output
    summary = json.loads(out.read_text())
    settings = summary["settings"]
    assert settings["method"] == "svi" and settings["svi_steps"] == 30 and settings["max_substep"] == 2.0
    assert settings["svi_learning_rate"] == 0.02 and settings["svi_start"] == "prior"  # the default, recorded
    assert len(settings["elbo"]) == 2 and settings["fits_diagnostics_ok"] == sum(settings["fit_diagnostics_ok"])
    assert settings["design"]["doses"] == [[0.0, 1, 30.0], [6.0, 1, 15.0]]
    assert summary["n_rank_draws"] == 19 and summary["divergences"] == 0
    assert "eta_CL[0]" in summary["sites"] and not any("sigma" in s for s in summary["sites"])
    for entry in summary["sites"].values():
        counts = entry["rank_test"]["counts"]
        assert len(counts) == 5 and sum(counts) == 2  # every rank fell in one of the bins 0..19
        assert len(entry["ranks"]) == 2 and all(0 <= r <= 19 for r in entry["ranks"])
    assert (result.exit_code == 1) == bool(summary["rejected"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "vi"], "--method: expected nuts or svi, got 'vi'"),
        (["--max-substep", "0"], "--max-substep: expected a positive step"),
        (["--method", "svi", "--draws", "50"], "--rank-draws 99 exceeds the posterior draws (--draws = 50)"),
        (["--dose", "0:1"], "--dose: expected one AMOUNT or repeated TIME:CMT:AMOUNT"),
        (["--dose", "30", "--dose", "0:1:5"], "--dose: expected one AMOUNT or repeated TIME:CMT:AMOUNT"),
        (["--dose", "0:7:5"], "--dose CMT 7: model 'pk_iv_1cmt' is dosed in CMT"),
        (["--dose", "-1:1:5"], "doses need a time >= 0 and an amount >= 0"),
        (["--method", "svi", "--svi-start", "map"], "--svi-start: SVI start: expected distinct names from prior, ode"),
        (["--method", "svi", "--svi-start", "ode"], "--svi-start ode starts an SDE fit at its ODE limit; with --ode"),
        (["--svi-start", "prior,ode", "--process-noise"], "--svi-start prior,ode applies to --method svi"),
    ],
)
def test_sbc_rejects_bad_method_and_dose_options(extra, message):
    result = RUNNER.invoke(app, ["sbc", "pk_iv_1cmt", *extra])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
