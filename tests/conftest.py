"""Test-suite settings shared by every package's tests."""

import os

# Figures are rendered off-screen in tests and CI.
os.environ.setdefault("MPLBACKEND", "Agg")
