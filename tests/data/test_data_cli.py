"""``medsim datasets`` and ``medsim validate`` through typer's CliRunner."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from typer.testing import CliRunner

from medsim.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def pheno_path():
    with resources.as_file(resources.files("medsim.data") / "bundled" / "pheno.csv") as path:
        yield path


def test_datasets_lists_the_bundled_data():
    result = runner.invoke(app, ["datasets", "--json"])
    assert result.exit_code == 0, result.output
    names = [d["name"] for d in json.loads(result.output)]
    assert names == ["theoph", "pheno", "t1d_sim"]
    table = runner.invoke(app, ["datasets"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "theoph" in table.output and "pk_iv_1cmt" in table.output


def test_validate_valid_table_prints_summary_and_exits_0(pheno_path):
    result = runner.invoke(app, ["validate", str(pheno_path), "--model", "pk_iv_1cmt"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    assert "59 subjects, 155 observations (per subject 1/3/6 min/median/max), 589 doses" in result.output
    assert "covariate WGT: 0.6-3.6" in result.output


def test_validate_invalid_table_lists_numbered_problems_and_exits_1(write_text):
    path = write_text("bad.csv", "ID,TIME,DV,AMT,EVID\n1,-1,.,100,1\n1,[red]x[/red],3,0,0\n")
    result = runner.invoke(app, ["validate", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    assert "invalid" in result.output and "2 problems" in result.output
    assert "1. row 2, column TIME: value '-1': negative time" in result.output
    # user text is printed literally, not interpreted as rich markup
    assert "2. row 3, column TIME: value '[red]x[/red]': not a number" in result.output
    limited = runner.invoke(app, ["validate", str(path), "--limit", "1"], env={"COLUMNS": "300"})
    assert limited.exit_code == 1 and "… and 1 more" in limited.output


def test_validate_json_report(write_text):
    path = write_text("j.csv", "ID,TIME,DV,EVID\n1,0,1,0\n1,1,2,2\n")
    result = runner.invoke(app, ["validate", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True and report["problems"] == []
    assert report["warnings"][0]["rows"] == [3] and report["summary"]["observations"] == 1
    bad = write_text("k.csv", "ID,TIME,DV\n1,0,.\n")
    result = runner.invoke(app, ["validate", str(bad), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["problems"][0] == {
        "row": 2,
        "column": "DV",
        "value": ".",
        "message": "observation record (EVID 0, MDV 0) without a DV; expected the measured value, or MDV = 1 to "
        "mark a record without a measurement",
    }


def test_validate_column_map_option(write_text):
    path = write_text("m.csv", "Subject,TIME,conc\n1,0,1.5\n")
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 1
    result = runner.invoke(app, ["validate", str(path), "--map", "Subject=ID", "--map", "conc=DV"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["validate", "missing.csv"], "event table not found: missing.csv"),
        (["validate", "table.xlsx"], "cannot tell the table format"),
        (["validate", "{pheno}", "--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["validate", "{pheno}", "--map", "Subject"], "--map expects FILE_COLUMN=NAME"),
    ],
)
def test_validate_usage_errors_exit_2(args, fragment, pheno_path):
    result = runner.invoke(app, [a.format(pheno=pheno_path) for a in args])
    assert result.exit_code == 2
    assert fragment in result.output
