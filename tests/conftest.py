"""Test-suite settings shared by every package's tests."""

import os
import shutil
import tempfile

from medsim import compile_cache

# Figures are rendered off-screen in tests and CI.
os.environ.setdefault("MPLBACKEND", "Agg")

# One throwaway compilation cache per test run, never the user's cache folder: the first process
# of the run (pytest itself; under xdist the controller, whose environment the workers inherit)
# creates it and sets MEDSIM_COMPILE_CACHE and JAX's cache variables, so the CLI and library calls
# of every test, the workers and the commands the tests start share their compiled programs, as
# a user's runs do (tests/test_compile_cache.py checks the cache itself in folders of its own).
# Set MEDSIM_COMPILE_CACHE (a folder, or "off") to choose otherwise.
_CREATED: str | None = None
if compile_cache.ENV not in os.environ:
    _CREATED = tempfile.mkdtemp(prefix="medsim-test-compile-cache-")
    os.environ[compile_cache.ENV] = _CREATED
compile_cache.enable()


def pytest_unconfigure(config):
    if _CREATED is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_CREATED, ignore_errors=True)
