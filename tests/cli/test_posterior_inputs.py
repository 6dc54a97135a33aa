"""``medsim risk`` and ``medsim sample`` on files that are not posteriors: exit 2 naming the file, no traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import medsim.cli.risk_cmds
import medsim.cli.sample_cmds  # noqa: F401  (registers `medsim sample`)
from medsim.cli import app

runner = CliRunner()

NOT_POSTERIORS = {
    "empty.nc": b"",
    "text.nc": b"ID,TIME,DV\n1,0,5\n",
    "random.nc": bytes(range(256)) * 8,
    "truncated_hdf5.nc": b"\x89HDF\r\n\x1a\n" + b"\x00" * 64,
}


@pytest.mark.parametrize("name", sorted(NOT_POSTERIORS))
@pytest.mark.parametrize("command", ["risk", "sample"])
def test_a_file_that_is_not_a_posterior_is_refused_by_name(tmp_path, name, command):
    path = tmp_path / name
    path.write_bytes(NOT_POSTERIORS[name])
    out = tmp_path / "out"
    if command == "risk":
        args = ["risk", str(path), "--policy", "fixed:dose=20,every=12", "--spec", "conc<=40;horizon=24h;epsilon=0.1"]
        args += ["--n", "8", "--out", str(out)]
    else:
        args = ["sample", str(path), "--n", "8", "--out", str(tmp_path / "vp.nc")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert f"error: {path}" in result.output, result.output
    assert "Traceback" not in result.output
    # the output folder is created and probed before any work (medsim.cli.outputs); nothing is written in it
    assert not (out / "report.json").exists() and not (tmp_path / "vp.nc").exists()
