"""Atomic output: every file and report folder medsim writes appears whole or not at all.

A file is written to a temporary sibling (same folder, so the same file system), flushed to
disk and renamed over the target with :func:`os.replace`, which is atomic on POSIX and Windows.
A folder (a risk report: ``report.json``, ``report.md``, ``report.html``, ``figures/``) is
written into a temporary sibling folder and swapped in: the old folder is renamed aside, the
new one renamed in, the old one removed. A reader sees the old report or the new one, never a
mix, and a run killed at any point leaves the old report whole.

Temporaries carry the writing process's id (``.NAME.PID-TOKEN.tmp``, ``.new``, ``.old``); the
next write to the same target removes those of processes that no longer run, and puts back an
old folder that a run killed between its two renames left aside.

New files and folders get the permissions the user's umask allows (``0o666`` / ``0o777``
masked), like any file the user creates: not the private ``0o600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "FolderWriteError",
    "atomic_folder",
    "atomic_write",
    "check_folder",
    "clean_stale",
    "write_bytes",
    "write_text",
]

_SUFFIXES = ("tmp", "new", "old")
_TEMP_ENDINGS = tuple(f".{k}" for k in _SUFFIXES)


class FolderWriteError(OSError):
    """An output folder that cannot be replaced safely (the message names it and why)."""


def _temp_name(name: str, kind: str) -> str:
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}"


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.(\d+)-[0-9a-f]+\.({'|'.join(_SUFFIXES)})$")


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clean_stale(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temporaries of ``folder/name`` left by writers that no longer run.

    An old folder set aside by a run killed between its two renames (``.NAME.PID-TOKEN.old``
    while ``NAME`` is missing) is renamed back to ``NAME`` instead of removed.

    Returns
    -------
    list of Path
        The temporaries removed (or restored).
    """
    folder = Path(folder)
    pattern = _pattern(name)
    target = folder / name
    done = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return done
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or _alive(int(m.group(1))):
            continue
        if m.group(2) == "old" and not target.exists() and not target.is_symlink():
            os.replace(entry, target)
        else:
            _remove(entry)
        done.append(entry)
    return done


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, flush it to disk and rename it to ``path``.

    ``write`` receives the temporary file's path (already created, empty, with the umask's
    permissions) and may open it, or hand it to a library (``to_netcdf``, ``savefig``,
    ``to_csv``). On any error, or ``KeyboardInterrupt``, the temporary file is removed and
    ``path`` keeps its old content. The folder is created if missing.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale(folder, path.name)
    tmp = folder / _temp_name(path.name, "tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{path}: expected bytes to write, got {type(data).__name__}")
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    if not isinstance(text, str):
        raise TypeError(f"{path}: expected text to write, got {type(text).__name__}")
    return write_bytes(path, text.encode(encoding))


def _foreign(old: Path, owned: Collection[str]) -> list[Path]:
    """Entries of ``old`` the writer does not own (temporaries excluded)."""
    return [e for e in sorted(old.iterdir()) if e.name not in owned and not e.name.endswith(_TEMP_ENDINGS)]


def _check_foreign(old: Path, owned: Collection[str]) -> None:
    folders = [e.name for e in _foreign(old, owned) if e.is_dir() and not e.is_symlink()]
    if folders:
        raise FolderWriteError(
            f"{old}: will not replace this folder, it holds folders medsim did not write ({', '.join(folders[:5])}); "
            "choose an empty folder or one holding only an earlier report"
        )


def _carry_over(old: Path, new: Path, owned: Collection[str] | None) -> None:
    """Hard-link (or copy) the files of ``old`` that the writer does not own into ``new``."""
    if owned is None or not old.exists():
        return
    _check_foreign(old, owned)
    for entry in _foreign(old, owned):
        if (new / entry.name).exists() or (new / entry.name).is_symlink():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), new / entry.name)
            continue
        try:
            os.link(entry, new / entry.name)
        except OSError:
            shutil.copy2(entry, new / entry.name)


def probe_writable(folder: str | os.PathLike) -> None:
    """Create and remove a temporary file in ``folder``: the only reliable test that files can be written there.

    Raises
    ------
    OSError
        The file could not be created (read-only, immutable or virtual file systems such as
        ``/proc``) or not removed.
    """
    fd, name = tempfile.mkstemp(prefix=".medsim-write-test.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(name)


def check_folder(path: str | os.PathLike, *, owned: Collection[str] | None = None) -> None:
    """Raise :class:`FolderWriteError` now if :func:`atomic_folder` would refuse ``path``.

    Call it before long work whose result goes to ``path``, so that a bad output folder is
    reported before the work rather than after.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FolderWriteError(f"{path}: exists and is not a folder; give a folder for the output")
    if owned is not None and path.is_dir():
        _check_foreign(path, owned)


@contextmanager
def atomic_folder(path: str | os.PathLike, *, owned: Collection[str] | None = None) -> Iterator[Path]:
    """Write a folder as one unit: yields an empty temporary sibling folder to fill, then swaps it in.

    On leaving the ``with`` block without an error, the old ``path`` (if any) is renamed aside,
    the new folder renamed to ``path`` and the old one removed. On an error nothing of the new
    folder stays visible and the old one is untouched. Temporaries of killed earlier writers are
    cleaned first (see :func:`clean_stale`).

    Parameters
    ----------
    path : path
        The folder to (re)place; its parent is created if missing.
    owned : collection of str, optional
        Top-level names the writer produces (e.g. ``report.json``, ``figures``). Files of an
        existing ``path`` with other names (say a ``posterior.nc`` beside a report) are carried
        over into the new folder; an existing folder holding sub-folders with other names is
        refused (:class:`FolderWriteError`) before anything is written. ``None``: the new folder
        replaces the old one entirely.

    Raises
    ------
    FolderWriteError
        ``path`` exists and is not a folder, or holds foreign sub-folders.
    """
    path = Path(os.path.abspath(path))
    parent = path.parent
    check_folder(path, owned=owned)
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale(parent, path.name)
    new = parent / _temp_name(path.name, "new")
    new.mkdir()
    try:
        yield new
        _carry_over(path, new, owned)
        _fsync_folder(new)
        if path.exists():
            old = parent / _temp_name(path.name, "old")
            os.replace(path, old)
            try:
                os.replace(new, path)
            except BaseException:
                os.replace(old, path)
                raise
            _fsync_folder(parent)
            _remove(old)
        else:
            os.replace(new, path)
        _fsync_folder(parent)
    except BaseException:
        _remove(new)
        raise
