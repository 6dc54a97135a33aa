"""Repeatable ``NAME=VALUE`` command-line options (``--map``, ``--unit``)."""

from __future__ import annotations

import typer


def parse_pairs(entries: list[str], option: str, example: str) -> dict[str, str]:
    """``NAME=VALUE`` entries as a dict; a malformed entry ends the command with exit status 2.

    Parameters
    ----------
    entries : list of str
        The option's values.
    option : str
        The option's name (``"--map"``), for the message.
    example : str
        What the option expects, shown in the message (``"FILE_COLUMN=NAME (e.g. --map Subject=ID)"``).
    """
    pairs = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name.strip() or not value.strip():
            typer.echo(f"error: {option} expects {example}, got {entry!r}", err=True)
            raise typer.Exit(2)
        pairs[name.strip()] = value.strip()
    return pairs
