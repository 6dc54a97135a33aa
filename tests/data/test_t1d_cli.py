"""``medsim import-t1d`` through typer's CliRunner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medsim.cli import app
from medsim.data import read_event_table
from tests.data.test_t1d_reader import tidy

runner = CliRunner()


def test_import_t1d_writes_a_valid_event_table(tmp_path):
    source = tmp_path / "sim.csv"
    tidy().to_csv(source, index=False)
    out = tmp_path / "cohort.csv"
    result = runner.invoke(app, ["import-t1d", str(source), str(out), "--cgm-every", "15"])
    assert result.exit_code == 0, result.output
    assert "2 subjects, 194 CGM readings" in " ".join(result.output.split())
    cohort = read_event_table(out)
    assert cohort.n_subjects == 2 and cohort.units["RATE"] == "U/min"


def test_import_t1d_needs_the_unit_and_takes_it_as_an_option(tmp_path):
    source = tmp_path / "sim.csv"
    tidy().rename(columns={"insulin_U_per_min": "insulin"}).to_csv(source, index=False)
    out = tmp_path / "cohort.csv"
    result = runner.invoke(app, ["import-t1d", str(source), str(out), "--json"])
    assert result.exit_code == 1 and not out.exists()
    problem = json.loads(result.output)["problems"][0]
    assert (problem["row"], problem["column"]) == (1, "insulin")
    ok = runner.invoke(app, ["import-t1d", str(source), str(out), "--unit", "insulin=U/min"])
    assert ok.exit_code == 0, ok.output and out.exists()
    bad = runner.invoke(app, ["import-t1d", str(source), str(out), "--unit", "insulin"])
    assert bad.exit_code == 2


def test_import_t1d_censors_readings_at_the_sensor_floor(tmp_path):
    source = tmp_path / "sim.csv"
    table = tidy(n_rows=21, patients=("a",))
    table.loc[[3, 4], "cgm"] = 39.0
    table.to_csv(source, index=False)
    out = tmp_path / "cohort.csv"
    result = runner.invoke(app, ["import-t1d", str(source), str(out), "--cgm-floor", "39"])
    assert result.exit_code == 0, result.output
    cens = read_event_table(out).subjects[0].obs_cens
    assert cens.tolist() == [1 if k in (3, 4) else 0 for k in range(21)]
