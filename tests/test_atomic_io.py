"""medsim.io: files and report folders appear whole or not at all, with the user's umask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medsim.io import FolderWriteError, atomic_folder, atomic_write, check_folder, clean_stale, write_bytes, write_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(previous)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _dead_pid() -> int:
    """The id of a process that has ended (reuse within the test is vanishingly unlikely)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_files_and_folders_follow_the_umask(tmp_path, umask, mask):
    # mkstemp made every file 0600 while the report files were forced to 0644; both follow the umask now.
    umask(mask)
    a = write_text(tmp_path / "a.json", "{}")
    b = atomic_write(tmp_path / "b.nc", lambda tmp: tmp.write_bytes(b"x"))
    with atomic_folder(tmp_path / "report") as new:
        write_bytes(new / "figures" / "f.png", b"png")
    assert _mode(a) == _mode(b) == 0o666 & ~mask
    assert _mode(tmp_path / "report" / "figures" / "f.png") == 0o666 & ~mask
    assert _mode(tmp_path / "report") == _mode(tmp_path / "report" / "figures") == 0o777 & ~mask


def test_every_atomic_writer_of_medsim_uses_medsim_io():
    # One writer: no module outside medsim/io.py creates its own temporary files any more.
    offenders = []
    for package in ("medsim", "inference", "policies"):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "medsim" / "io.py":
                continue
            text = path.read_text(encoding="utf-8")
            if "mkstemp" in text or "os.replace(" in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "post.nc"
    write_bytes(target, b"old")

    def half(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["post.nc"]
    with pytest.raises(TypeError, match=r"post\.nc: expected bytes"):
        write_bytes(target, "text")


def test_stale_temporaries_of_ended_writers_are_removed_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    stale_file = tmp_path / f".post.nc.{dead}-0a1b.tmp"
    stale_dir = tmp_path / f".report.{dead}-0a1b.new"
    running = tmp_path / f".post.nc.{live}-0a1b.tmp"
    stale_file.write_bytes(b"half")
    stale_dir.mkdir()
    (stale_dir / "report.json").write_text("{}")
    running.write_bytes(b"in progress")
    write_bytes(tmp_path / "post.nc", b"new")
    with atomic_folder(tmp_path / "report"):
        pass
    assert not stale_file.exists() and not stale_dir.exists()
    assert running.exists()  # another process may still be writing it


def test_old_folder_left_aside_between_the_renames_is_put_back(tmp_path):
    # A run killed after renaming the old report aside but before renaming the new one in.
    aside = tmp_path / f".report.{_dead_pid()}-beef.old"
    aside.mkdir()
    (aside / "report.json").write_text("old")
    assert clean_stale(tmp_path, "report") == [aside]
    assert (tmp_path / "report" / "report.json").read_text() == "old"


def _old_report(folder: Path, fans: int) -> None:
    (folder / "figures").mkdir(parents=True)
    for i in range(fans):
        (folder / "figures" / f"fan_{i}.png").write_bytes(b"old fan")
    (folder / "report.json").write_text("old json")
    (folder / "report.md").write_text("![](figures/fan_0.png)")


def test_failure_mid_write_leaves_the_old_folder_whole(tmp_path):
    out = tmp_path / "report"
    _old_report(out, fans=2)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(RuntimeError, match="figure failed"), atomic_folder(out) as new:
        write_bytes(new / "figures" / "fan_0.png", b"new fan")
        raise RuntimeError("figure failed")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert (out / "figures" / "fan_0.png").read_bytes() == b"old fan"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_rerun_with_fewer_outputs_drops_the_old_ones_and_keeps_foreign_files(tmp_path):
    out = tmp_path / "report"
    _old_report(out, fans=2)
    (out / "posterior.nc").write_bytes(b"the fit")  # medsim demo keeps its posterior beside the report
    with atomic_folder(out, owned=("report.json", "report.md", "report.html", "figures")) as new:
        write_bytes(new / "figures" / "fan_0.png", b"new fan")
        write_text(new / "report.json", "new json")
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["fan_0.png"]
    assert sorted(p.name for p in out.iterdir()) == ["figures", "posterior.nc", "report.json"]
    assert (out / "posterior.nc").read_bytes() == b"the fit"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_folders_that_are_not_reports_are_refused_before_any_work(tmp_path):
    home = tmp_path / "home"
    (home / "projects").mkdir(parents=True)
    called = []
    with pytest.raises(FolderWriteError, match=r"home: will not replace .*projects"):
        with atomic_folder(home, owned=("report.json",)):
            called.append(1)
    assert called == [] and (home / "projects").is_dir()
    with pytest.raises(FolderWriteError, match="projects"):
        check_folder(home, owned=("report.json",))
    check_folder(home)  # replacing it entirely (no carry-over) is the caller's explicit choice
    (tmp_path / "file").write_text("x")
    with pytest.raises(FolderWriteError, match="file: exists and is not a folder"):
        with atomic_folder(tmp_path / "file"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "home"]


_KILLED_WRITER = """
import sys, time
from pathlib import Path
from medsim.io import atomic_folder, write_bytes
with atomic_folder(Path(sys.argv[1])) as new:
    write_bytes(new / "figures" / "fan_0.png", b"new fan")
    write_bytes(new / "figures" / "fan_5.png", b"new fan")
    print("written", flush=True)
    time.sleep(60)
"""


def test_kill_9_mid_write_leaves_the_old_report_and_the_next_run_cleans_up(tmp_path):
    # The reported failure: kill -9 during `medsim risk` left new figures beside the old report.json
    # and a temporary file that no later run removed.
    out = tmp_path / "report"
    _old_report(out, fans=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), str(out)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["fan_0.png", "fan_1.png"]
    assert (out / "figures" / "fan_0.png").read_bytes() == b"old fan"
    assert (out / "report.json").read_text() == "old json"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "report"]
    assert len(leftovers) == 1 and leftovers[0].endswith(".new")  # invisible to readers of report/
    with atomic_folder(out) as new:
        write_text(new / "report.json", "rerun")
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
