"""Fixtures for the cohort-data tests: a small cohort and a function writing CSV text to a temporary file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medsim.data import Cohort


@pytest.fixture
def small_cohort() -> Cohort:
    """Three subjects: bolus + infusion doses, two observation CMTs, two covariates, one without doses."""
    return Cohort.from_arrays(
        ["1", "2", "10"],
        obs_time=[np.array([0.5, 1.0, 4.0]), np.array([2.0, 2.0]), np.array([1.0])],
        # 0.1 + 0.2 = 0.30000000000000004: round trips must keep every bit, not just 15 digits
        obs_value=[np.array([3.1, 2.7, 1.25]), np.array([0.7, 9.5]), np.array([0.1 + 0.2])],
        obs_cmt=[np.array([2, 2, 2]), np.array([3, 2]), np.array([2])],
        dose_time=[np.array([0.0, 12.0]), np.array([0.0]), np.array([])],
        dose_amount=[np.array([320.0, 160.0]), np.array([100.0]), np.array([])],
        dose_cmt=1,
        dose_rate=[np.array([0.0, 80.0]), np.array([0.0]), np.array([])],
        covariates={"WT": [79.6, 72.4, 70.5], "AGE": [31.0, 45.0, 27.0]},
        units={"TIME": "h", "DV": "mg/L", "AMT": "mg", "RATE": "mg/h", "WT": "kg", "AGE": "y"},
        name="small",
    )


@pytest.fixture
def write_text(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write ``text`` to ``tmp_path / name`` and return the path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
