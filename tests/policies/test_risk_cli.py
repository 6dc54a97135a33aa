"""``medsim risk``: end to end on a prior population, exit statuses, input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console
from risk_fixtures import bm_rollout
from typer.testing import CliRunner

import medsim.cli.risk_cmds as risk_cmds  # registers the command on the shared app
from medsim.cli import app
from medsim.policies.risk import risk_report
from medsim.policies.spec import parse_inline_spec

runner = CliRunner()


def test_risk_command_end_to_end(tmp_path):
    out = tmp_path / "report"
    args = [
        "risk",
        "--prior",
        "pk_iv_1cmt",
        "--policy",
        "fixed:dose=20,every=12",
        "--policy",
        "fixed:dose=60,every=12",
        "--spec",
        "conc<=40;horizon=24h;epsilon=0.1",
        "--n",
        "40",
        "--prior-draws",
        "10",
        "--dt",
        "0.05",
        "--seed",
        "2",
        "--out",
        str(out),
        "--fail-on-violation",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 1), result.output
    data = json.loads((out / "report.json").read_text())
    decisions = [p["verdict"]["decision"] for p in data["policies"]]
    names = [p["policy"] for p in data["policies"]]
    assert len(names) == 2 and names[0].startswith("fixed:dose=20") and names[1].startswith("fixed:dose=60")
    assert result.exit_code == (1 if "FAIL" in decisions else 0)
    assert data["provenance"]["seed"] == 2 and data["provenance"]["posterior_file"] == "prior:pk_iv_1cmt"
    assert data["comparisons"][0]["paired"] is True  # rollout_many: common random numbers
    # a higher dose cannot lower the risk of exceeding an upper bound on the same patients
    assert data["comparisons"][0]["risk_difference"]["value"] <= 0
    assert (out / "report.html").exists() and (out / "report.md").exists()
    assert "report:" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--spec", "glucose<=3;horizon=1h"], "no observable 'glucose'"),
        (["--spec", "conc<=40;horizon=1h;epsilon=2"], "key 'epsilon' must lie strictly between 0 and 1"),
        (["--spec", "conc<=40;horizon=1h", "--policy", "nope:x=1"], "unknown policy 'nope'"),
        (["--spec", "conc<=40;horizon=1h", "--loop", "gpu"], "--loop: expected auto, device or host"),
        (["--spec", "conc<=40;horizon=1h", "--statistics", "sums"], "--statistics: expected auto, rows or stream"),
        (["--spec", "conc<=40;horizon=4h;from=1h", "--statistics", "stream"], "streamed statistics cover the whole"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, args, message):
    base = ["risk", "--prior", "pk_iv_1cmt", "--n", "4", "--out", str(tmp_path)]
    if "--policy" not in args:
        base += ["--policy", "fixed:dose=20,every=12"]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2
    assert message in result.output


def test_needs_a_posterior_or_a_prior(tmp_path):
    result = runner.invoke(app, ["risk", "--policy", "x", "--spec", "conc<=1;horizon=1h", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "give either a POSTERIOR file or --prior MODEL" in result.output


def test_exit_status_follows_the_verdict_only_when_asked(tmp_path):
    spec = parse_inline_spec("x<=1;horizon=1h;epsilon=0.05")
    kw = dict(n=400, n_intervals=2, substeps=4, draw=np.repeat(np.arange(40), 10))
    unsafe = [bm_rollout(x0=0.0, policy="unsafe", **kw)]
    safe = [bm_rollout(x0=-3.0, sigma=0.5, policy="safe", **kw)]

    def finish(results, out, fail_on_violation):
        report = risk_report(results, spec, provenance={})
        return risk_cmds.finish(report, results, out=out, fail_on_violation=fail_on_violation, console=console)

    with open(tmp_path / "log.txt", "w") as log:
        console = Console(file=log)
        assert finish(unsafe, tmp_path / "a", fail_on_violation=False) == 0
        assert finish(unsafe, tmp_path / "b", fail_on_violation=True) == 1
        assert finish(safe, tmp_path / "c", fail_on_violation=True) == 0


def test_streamed_statistics_from_the_command_line(tmp_path):
    """``--statistics stream``: every patient's sums, the first ``--recorded-patients`` recorded; the
    report says which sections come from those (tests/policies/test_streamed.py checks the numbers)."""
    out = tmp_path / "streamed"
    args = ["risk", "--prior", "pk_iv_1cmt", "--n", "6", "--out", str(out), "--policy", "fixed:dose=20,every=12"]
    args += ["--spec", "conc<=40;horizon=24h", "--statistics", "stream", "--recorded-patients", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    assert data["policies"][0]["recorded_patients"] == 2 and data["policies"][0]["n_patients"] == 6
    name = data["policies"][0]["policy"]
    assert data["provenance"]["settings"]["statistics"] == f"{name}: streamed; 2 of 6 patients recorded"
    assert "come from the first 2 of 6 patients" in (out / "report.md").read_text()
    assert "note: " in result.output and "first 2 of 6 patients" in " ".join(result.output.split())
