"""``medsim --version`` on its own prints the version (it used to fail with "Missing command")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import medsim
import medsim.cli  # registers every command on the app
from medsim.cli.app import app


def test_version_alone():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == medsim.__version__


def test_version_as_a_module():
    # ``python -m medsim.cli`` is the same command as the ``medsim`` script.
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "medsim.cli", "--version"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == medsim.__version__


def test_no_arguments_still_shows_help():
    result = CliRunner().invoke(app, [])
    assert "Usage" in result.output and "fit" in result.output
