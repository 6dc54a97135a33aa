"""Check every output location before any work, so that a bad ``--out`` fails in a second, not after a fit.

A command that writes calls :func:`prepare_output_file` or :func:`prepare_output_dir` for each
output option first thing, as CmdStan does: missing parent folders are created, the folder that
will receive the file is probed by creating and removing a temporary file in it (permission
bits alone do not say whether a file system is read-only or a ``/proc`` entry accepts files),
and the target must be of the right kind (a file where a file is expected, a folder where a
folder is). The files themselves are still written atomically by the library (a temporary name
in the same folder, then a rename), which is why the probe is made in that folder.

:func:`output_file` and :func:`output_dir` do the same for typer commands: they print
``error: --out PATH: what is wrong`` and exit with status 2 instead of raising.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from medsim.io import probe_writable

__all__ = ["OutputPathError", "output_dir", "output_file", "prepare_output_dir", "prepare_output_file"]


class OutputPathError(ValueError):
    """An output location cannot be written; the message names the option, the path and the problem."""


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor."""
    current = path
    while not os.path.lexists(current) and current != current.parent:
        current = current.parent
    return current


def _make_folder(folder: Path, option: str, role: str) -> None:
    """Create ``folder`` (and its parents), or raise naming the part of it that stands in the way."""
    existing = _first_existing(folder)
    if existing.exists() and not existing.is_dir():
        if existing == folder:
            raise OutputPathError(f"{option} {role}: {folder} is a file, not a folder")
        raise OutputPathError(f"{option} {role}: {existing} is a file, not a folder, so {folder} cannot be created")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputPathError(f"{option} {role}: {folder} exists and is not a folder") from None
    except OSError as err:
        raise OutputPathError(f"{option} {role}: cannot create the folder {folder} ({err.strerror or err})") from None


def _probe(folder: Path, option: str, role: str) -> None:
    try:
        probe_writable(folder)
    except OSError as err:
        raise OutputPathError(
            f"{option} {role}: cannot create files in the folder {folder} ({err.strerror or err})"
        ) from None


def prepare_output_file(path: str | os.PathLike, option: str) -> Path:
    """Check that ``path`` can be written as a file; create its parent folders.

    Parameters
    ----------
    path : path-like
        The file a command will write (replacing it if it exists).
    option : str
        The option or argument that named it (``"--out"``), for the message.

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    OutputPathError
        ``path`` is a folder or something other than a regular file, a part of its parent is a
        file, or the parent folder cannot be created or written to.
    """
    target = Path(path)
    role = str(target)
    if str(path).endswith(("/", os.sep)) or target.name in ("", ".", ".."):
        raise OutputPathError(f"{option} {role}: expected a file name, got a folder path")
    if target.is_dir():
        raise OutputPathError(f"{option} {role}: is a folder; {option} expects a file")
    if os.path.lexists(target) and target.exists() and not target.is_file():
        raise OutputPathError(f"{option} {role}: exists and is not a regular file (a device, pipe or socket)")
    folder = target.parent
    _make_folder(folder, option, role)
    _probe(folder, option, role)
    return target


def prepare_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Check that ``path`` is (or can be created as) a folder that files can be written into; create it.

    Parameters
    ----------
    path : path-like
        The folder a command will write files into.
    option : str
        The option or argument that named it (``"--out"``), for the message.

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    OutputPathError
        ``path`` exists and is not a folder, a part of it is a file, or it cannot be created or
        written to.
    """
    target = Path(path)
    role = str(target)
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"{option} {role}: is a file; {option} expects a folder")
    _make_folder(target, option, role)
    _probe(target, option, role)
    return target


def output_file(path: str | os.PathLike, option: str) -> Path:
    """:func:`prepare_output_file` for a command: on failure print the reason and exit with status 2."""
    try:
        return prepare_output_file(path, option)
    except OutputPathError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def output_dir(path: str | os.PathLike, option: str) -> Path:
    """:func:`prepare_output_dir` for a command: on failure print the reason and exit with status 2."""
    try:
        return prepare_output_dir(path, option)
    except OutputPathError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
