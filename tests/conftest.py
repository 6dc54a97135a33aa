"""Test-suite settings shared by every package's tests."""

import os

# Figures are rendered off-screen in tests and CI.
os.environ.setdefault("MPLBACKEND", "Agg")

# Commands run in-process by the tests must not write compiled programs into the user's cache
# folder (tests/test_compile_cache.py checks the persistent cache in throwaway folders).
os.environ.setdefault("MEDSIM_COMPILE_CACHE", "off")
