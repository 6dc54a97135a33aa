"""Output locations are checked (and created) before any work, with a message naming the option and the path.

The reported failures: ``risk --out FILE`` (a file where a folder is expected), ``fit --out DIR``
(a folder where a file is expected) and unwritable locations such as ``/proc/...`` ended in a
traceback after the whole computation. Every command test below passes inputs that would fail
*later* (a missing posterior, an unknown model or dataset): the output error must come first.
Tests run as root in CI, where permission bits do not stop writes, so unwritable locations are
made with ``/proc`` (a kernel file system that refuses new files) and with a path under a
regular file; the ``chmod`` case runs only for other users.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import medsim.cli  # noqa: F401  registers every command on the app
from medsim.cli.app import app
from medsim.cli.outputs import OutputPathError, prepare_output_dir, prepare_output_file

RUNNER = CliRunner()
HAS_PROC = sys.platform.startswith("linux") and Path("/proc/self").is_dir()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _invoke(args: list[str]):
    result = RUNNER.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture
def places(tmp_path):
    """A regular file and a folder to misuse."""
    a_file = tmp_path / "a_file.nc"
    a_file.write_text("not a folder")
    a_folder = tmp_path / "a_folder"
    a_folder.mkdir()
    return SimpleNamespace(root=tmp_path, file=a_file, folder=a_folder)


# ---------------------------------------------------------------- the helpers


def test_missing_parents_are_created_and_nothing_is_left_behind(tmp_path):
    target = tmp_path / "new" / "deeper" / "posterior.nc"
    assert prepare_output_file(target, "--out") == target
    assert target.parent.is_dir() and not target.exists()
    assert list(target.parent.iterdir()) == []  # the write probe removed its file
    folder = tmp_path / "reports" / "theoph"
    assert prepare_output_dir(folder, "--out") == folder
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_existing_targets_of_the_right_kind_are_accepted(places):
    assert prepare_output_file(places.file, "--out") == places.file
    assert places.file.read_text() == "not a folder"  # checked, not truncated
    assert prepare_output_dir(places.folder, "--out") == places.folder


def test_a_folder_where_a_file_is_expected(places):
    with pytest.raises(OutputPathError, match=r"--out .*a_folder: is a folder; --out expects a file"):
        prepare_output_file(places.folder, "--out")


def test_a_file_where_a_folder_is_expected(places):
    with pytest.raises(OutputPathError, match=r"--figures .*a_file.nc: is a file; --figures expects a folder"):
        prepare_output_dir(places.file, "--figures")


def test_a_parent_that_is_a_file(places):
    with pytest.raises(OutputPathError, match=r"a_file.nc is a file, not a folder, so .*sub cannot be created"):
        prepare_output_file(places.file / "sub" / "x.nc", "--out")
    with pytest.raises(OutputPathError, match=r"a_file.nc is a file, not a folder"):
        prepare_output_file(places.file / "x.nc", "--out")
    with pytest.raises(OutputPathError, match=r"a_file.nc is a file, not a folder"):
        prepare_output_dir(places.file / "report", "--out")


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc")
def test_a_folder_that_refuses_files():
    with pytest.raises(OutputPathError, match=r"--out /proc/x.nc: cannot create files in the folder /proc"):
        prepare_output_file("/proc/x.nc", "--out")
    with pytest.raises(OutputPathError, match=r"--out /proc/medsim-report: cannot create the folder"):
        prepare_output_dir("/proc/medsim-report", "--out")


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_a_device_is_not_a_file():
    with pytest.raises(OutputPathError, match="not a regular file"):
        prepare_output_file("/dev/null", "--out")


@pytest.mark.skipif(IS_ROOT or not hasattr(os, "geteuid"), reason="permission bits do not stop root")
def test_a_read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="cannot create files in the folder"):
            prepare_output_file(folder / "x.nc", "--out")
        with pytest.raises(OutputPathError, match="cannot create the folder"):
            prepare_output_dir(folder / "report", "--out")
    finally:
        folder.chmod(0o755)


# ---------------------------------------------------------------- every command that writes


def _assert_refused(result, option: str, path: Path | str, what: str) -> None:
    assert result.exit_code == 2, result.output
    assert f"error: {option} {path}" in result.output, result.output
    assert what in result.output, result.output
    assert "Traceback" not in result.output


def test_fit_out_folder(places):
    # An unknown dataset would be reported first if the output were checked after loading it.
    result = _invoke(["fit", "no-such-dataset", "--model", "pk_oral_1cmt", "--out", str(places.folder)])
    _assert_refused(result, "--out", places.folder, "is a folder; --out expects a file")


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc")
def test_fit_out_in_proc():
    result = _invoke(["fit", "no-such-dataset", "--model", "pk_oral_1cmt", "--out", "/proc/posterior.nc"])
    _assert_refused(result, "--out", "/proc/posterior.nc", "cannot create files in the folder /proc")


def test_fit_neural_checkpoint_under_a_file(places):
    result = _invoke(["fit", "no-such-dataset", "--model", "neural", "--out", str(places.file / "model")])
    _assert_refused(result, "--out", places.file / "model", "a_file.nc is a file, not a folder")


def test_risk_out_file(places):
    args = ["risk", str(places.root / "missing.nc"), "--policy", "fixed", "--spec", "conc<=20"]
    result = _invoke([*args, "--out", str(places.file)])
    _assert_refused(result, "--out", places.file, "is a file; --out expects a folder")


def test_sample_out_folder(places):
    result = _invoke(["sample", str(places.root / "missing.nc"), "--n", "5", "--out", str(places.folder)])
    _assert_refused(result, "--out", places.folder, "is a folder; --out expects a file")


def test_simulate_plot_folder(places):
    result = _invoke(["simulate", "--model", "no_such_model", "--plot", str(places.folder)])
    _assert_refused(result, "--plot", places.folder, "is a folder; --plot expects a file")


def test_check_figures_file(places):
    result = _invoke(["check", str(places.root / "missing.nc"), "--figures", str(places.file)])
    _assert_refused(result, "--figures", places.file, "is a file; --figures expects a folder")


def test_demo_out_file_and_example_folder_file(places, monkeypatch):

    def no_work(*args, **kwargs):
        raise AssertionError("the example ran although its output folder is unusable")

    monkeypatch.setattr(policies.examples, "run_example", no_work)
    _assert_refused(_invoke(["demo", "--out", str(places.file)]), "--out", places.file, "is a file")
    (places.folder / "theoph").write_text("a file where the example's folder goes")
    result = _invoke(["demo", "--out", str(places.folder), "--only", "theoph"])
    _assert_refused(result, "--out", places.folder / "theoph", "is a file; --out expects a folder")


def test_calibrate_checks_the_checkpoint_it_rewrites(places, monkeypatch):

    def no_work(*args, **kwargs):
        raise AssertionError("calibration ran although the checkpoint cannot be rewritten")

    json_path = places.file / "model.json"  # stands for a checkpoint in a folder that cannot take files
    monkeypatch.setattr(inference.neural, "load_checkpoint", lambda path: SimpleNamespace(path=json_path))
    monkeypatch.setattr(inference.neural, "calibrate", no_work)
    result = _invoke(["calibrate", "model", "theoph"])
    _assert_refused(result, "CHECKPOINT", json_path, "a_file.nc is a file, not a folder")
