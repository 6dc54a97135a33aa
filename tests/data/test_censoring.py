"""Censored observations in the event table (NONMEM CENS / BLQ, the M3 convention).

CENS = 1: below the lower limit held in DV (a limit of quantification, a CGM floor); -1: above
the upper limit held in DV (a CGM ceiling); 0 or '.': a measurement. Hypothesis draws tables
whose CENS cells mix valid and invalid codes: the reader must accept exactly the valid ones,
keep each code with its observation, and name every bad cell's row and column.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsim.data import Cohort, CohortFormatError, read_event_table, validate_event_table

VALID = {"0": 0, "1": 1, "-1": -1, ".": 0, "1.0": 1}
INVALID = ["2", "-2", "0.5", "3", "abc"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    codes=st.lists(st.sampled_from([*VALID, *VALID, *INVALID]), min_size=1, max_size=6),
    header=st.sampled_from(["CENS", "BLQ", "cens"]),
)
def test_cens_codes_are_kept_or_named(codes, header):
    lines = [f"ID,TIME,DV,AMT,EVID,CMT,{header}", "1,0,.,100,1,1,0"]
    lines += [f"1,{k + 1},{5.0 + k},0,0,1,{c}" for k, c in enumerate(codes)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.csv"
        path.write_text("\n".join(lines) + "\n")
        report = validate_event_table(path)
        bad_rows = [k + 3 for k, c in enumerate(codes) if c not in VALID]  # header row 1, dose row 2
        assert report.ok == (not bad_rows), report.format()
        assert sorted({p.row for p in report.problems}) == bad_rows
        assert all(p.column == header for p in report.problems)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if bad_rows:
                with pytest.raises(CohortFormatError):
                    read_event_table(path)
                return
            cohort = read_event_table(path)
    assert cohort.subjects[0].obs_cens.tolist() == [VALID[c] for c in codes]
    # the canonical table writes CENS (when used) and reads back to the same cohort
    again = read_event_table(cohort.to_event_table())
    assert again.subjects[0] == cohort.subjects[0]


def test_cens_on_a_dose_record_is_an_error():
    table = "ID,TIME,DV,AMT,EVID,CMT,CENS\n1,0,.,100,1,1,1\n1,1,5,0,0,1,0\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.csv"
        path.write_text(table)
        report = validate_event_table(path)
    assert [(p.row, p.column) for p in report.problems] == [(2, "CENS")]
    assert "not a used observation" in report.problems[0].message


def test_subject_rejects_an_unknown_code_and_padding_carries_codes():
    with pytest.raises(ValueError, match=r"subject 'a': obs_cens contains 2"):
        Cohort.from_arrays(["a"], [np.array([1.0])], [np.array([2.0])], obs_cens=[np.array([2])])
    cohort = Cohort.from_arrays(
        ["a", "b"],
        [np.array([1.0, 2.0]), np.array([1.0])],
        [np.array([39.0, 80.0]), np.array([400.0])],
        obs_cens=[np.array([1, 0]), np.array([-1])],
    )
    padded = cohort.padded()
    assert padded.obs_cens.tolist() == [[1, 0], [-1, 0]]
    assert padded.to_cohort().subjects[1].obs_cens.tolist() == [-1]
