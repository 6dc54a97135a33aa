"""Compile once across runs: JAX's persistent compilation cache in the user's cache folder.

A ``medsim risk`` run compiles a few dozen XLA programs (the simulator's kernels for each
dose-event layout, the observation function, the statistics). Compiled once, they are written to
disk and the next run of the same shapes loads them instead of compiling again. The folder is

1. ``MEDSIM_COMPILE_CACHE`` when it names a folder; ``off`` (or ``0``, ``false``, ``no``, ``none``)
   turns the cache off;
2. else ``$XDG_CACHE_HOME/medsim/jax`` when ``XDG_CACHE_HOME`` is set;
3. else ``~/.cache/medsim/jax``.

The ``medsim`` command enables it for every command (its ``--compile-cache DIR|off`` option
sets ``MEDSIM_COMPILE_CACHE``); from Python call :func:`enable` once before the first simulation
(the library changes no JAX setting on import). Entries are keyed by JAX on the program, the
compiler options, the device and the JAX version, so a stale or foreign entry is never used;
the folder may be deleted at any time. Dask workers started by medsim get the same folder
(:mod:`medsim.policies.distribute`).

This is the cross-process layer; within one process, compiled functions are kept by
:mod:`medsim.simulate.cache`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

ENV = "MEDSIM_COMPILE_CACHE"
OFF = frozenset({"off", "0", "false", "no", "none"})

# Cache every compilation, however short: a run's start-up is dozens of sub-second compilations
# (JAX's default only keeps those over one second).
MIN_COMPILE_SECONDS = 0.0

# Most bytes the folder may hold before JAX evicts the least recently used entries.
MAX_BYTES = 2 << 30


class CompileCacheError(ValueError):
    """The compile cache folder cannot be used (names the folder, the setting and why)."""


def cache_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """The persistent cache folder the environment asks for, or ``None`` when it is turned off.

    Parameters
    ----------
    env : mapping, optional
        Environment variables (default ``os.environ``).
    """
    env = os.environ if env is None else env
    value = env.get(ENV)
    if value is not None:
        if value.strip().lower() in OFF or not value.strip():
            return None
        return Path(value).expanduser()
    base = env.get("XDG_CACHE_HOME")
    root = Path(base).expanduser() if base else Path.home() / ".cache"
    return root / "medsim" / "jax"


def _settings(folder: Path | None) -> dict[str, object]:
    if folder is None:
        return {"jax_enable_compilation_cache": False}
    return {
        "jax_enable_compilation_cache": True,
        "jax_compilation_cache_dir": str(folder),
        "jax_persistent_cache_min_compile_time_secs": MIN_COMPILE_SECONDS,
        "jax_persistent_cache_min_entry_size_bytes": 0,
        "jax_compilation_cache_max_size": MAX_BYTES,
    }


def environ(folder: Path | None) -> dict[str, str]:
    """The ``JAX_*`` environment variables that set the cache up in a process started with them."""
    return {
        name.upper(): str(value).lower() if isinstance(value, bool) else str(value)
        for name, value in _settings(folder).items()
    }


def enable(folder: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> Path | None:
    """Turn JAX's persistent compilation cache on (or off), in ``folder`` or :func:`cache_dir`.

    Before JAX is imported the settings go into the process environment (``JAX_*`` variables,
    which JAX reads when it starts, so the commands' lazy imports stay lazy and child processes
    inherit them); afterwards into ``jax.config``.

    Parameters
    ----------
    folder : str or Path, optional
        Where to keep compiled programs (default: :func:`cache_dir` of ``env``). The string
        ``"off"`` turns the cache off.
    env : mapping, optional
        Environment to resolve the default folder from (default ``os.environ``).

    Returns
    -------
    Path or None
        The folder in use, or ``None`` when the cache is off.

    Raises
    ------
    CompileCacheError
        If the folder cannot be created (it names the folder and the setting to change).
    """
    if folder is not None and str(folder).strip().lower() in OFF:
        path = None
    else:
        path = Path(folder).expanduser() if folder is not None else cache_dir(env)
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CompileCacheError(
                f"compile cache folder {path}: cannot create it ({err.strerror or err}); set {ENV} to a writable "
                f"folder or to 'off' (medsim: --compile-cache DIR|off)"
            ) from None
    settings = _settings(path)
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            # Only changes: some of these settings are part of JAX's tracing context, and setting
            # them, even to the same value, would make every jitted function trace again.
            if getattr(jax.config, name) != value:
                jax.config.update(name, value)
    else:
        os.environ.update(environ(path))
    return path
