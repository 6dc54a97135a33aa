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


#: Files that run for minutes each (the README tours, the committed example reports). CI runs
#: ``pytest -n 2 --dist loadfile``, which hands whole files to its two workers in collection
#: order: collected last (``test_readme.py`` sorts after every folder), one of them kept one worker
#: busy for minutes after the other had finished. Started first, the other worker runs the rest
#: meanwhile.
LONG_FILES = ("test_readme.py", "cli/test_committed_reports.py")


def pytest_collection_modifyitems(session, config, items):
    """Files of :data:`LONG_FILES` first, then files with a ``slow`` test, then the rest (stable)."""
    tests = os.path.dirname(__file__)

    def rank(item) -> int:
        where = os.path.relpath(str(item.path), tests).replace(os.sep, "/")
        if where in LONG_FILES:
            return LONG_FILES.index(where)
        return len(LONG_FILES) + (0 if slow.get(str(item.path)) else 1)

    slow: dict[str, bool] = {}
    for item in items:
        slow[str(item.path)] = slow.get(str(item.path), False) or item.get_closest_marker("slow") is not None
    items[:] = sorted(items, key=rank)
