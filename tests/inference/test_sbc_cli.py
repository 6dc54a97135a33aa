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
