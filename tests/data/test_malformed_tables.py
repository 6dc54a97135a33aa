"""The malformed-table corpus: each file has exactly one problem, reported at the right place.

Each CSV in ``malformed/`` is a valid five-record table with one defect. The expectations give
the row (spreadsheet numbering: header = row 1), the column as written in the file, the
offending cell as written, and a fragment of the "what was expected" part of the message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medsim.data import CohortFormatError, read_event_table, validate_event_table

MALFORMED = Path(__file__).parent / "malformed"

# file, keyword arguments, row, column, value, fragment of the message
CASES = [
    ("missing_dv_column.csv", {}, 1, "DV", None, "required column DV"),
    ("non_numeric_time.csv", {}, 4, "TIME", "2h", "expected a numeric TIME"),
    ("infinite_dv.csv", {}, 3, "DV", "inf", "expected a finite DV"),
    ("negative_time.csv", {}, 5, "TIME", "-0.5", "expected TIME >= 0"),
    ("decreasing_time.csv", {}, 4, "TIME", "0.5", "expected records sorted by time within each subject"),
    ("dose_missing_amt.csv", {}, 5, "AMT", ".", "expected the dose amount (> 0)"),
    ("dose_zero_amt.csv", {}, 2, "AMT", "0", "expected AMT > 0"),
    ("dose_negative_amt.csv", {}, 5, "AMT", "-100", "expected AMT > 0"),
    ("obs_missing_dv.csv", {}, 6, "DV", ".", "expected the measured value, or MDV = 1"),
    ("obs_with_amt.csv", {}, 3, "AMT", "50", "expected AMT = 0 or '.', or EVID = 1"),
    ("duplicate_row.csv", {}, 5, "ID", "1", "duplicates row 4"),
    ("evid_reset.csv", {}, 5, "EVID", "3", "reset events (EVID 3/4) are not supported"),
    ("evid_unknown.csv", {}, 4, "EVID", "7", "expected 0 (observation), 1 (dose) or 2 (other event)"),
    ("mdv_invalid.csv", {}, 3, "MDV", "2", "expected MDV 0"),
    ("cmt_zero.csv", {}, 6, "CMT", "0", "expected CMT to be a positive whole number"),
    ("missing_id.csv", {}, 4, "ID", ".", "expected the subject identifier on every record"),
    ("id_not_contiguous.csv", {}, 6, "ID", "1", "expected all records of a subject together"),
    ("steady_state.csv", {}, 5, "SS", "1", "steady-state dosing (SS) is not supported"),
    ("rate_modelled.csv", {}, 2, "RATE", "-2", "modelled infusion rate/duration (RATE -1/-2) is not supported"),
    ("rate_negative.csv", {}, 5, "RATE", "-5", "expected RATE = 0 (bolus) or > 0"),
    ("addl_without_ii.csv", {}, 2, "ADDL", "3", "expected an interdose interval II > 0"),
    ("ii_without_addl.csv", {}, 2, "II", "12", "II without ADDL"),
    ("addl_not_whole.csv", {}, 2, "ADDL", "2.5", "expected ADDL to be a whole number >= 0"),
    ("addl_on_observation.csv", {}, 3, "ADDL", "2", "ADDL on a record that is not a dose"),
    ("censored_bad_code.csv", {}, 4, "BLQ", "2", "expected 0 (measured), 1 (below the lower limit"),
    ("negative_duration.csv", {}, 2, "DUR", "-2", "expected DUR = 0 (bolus) or > 0"),
    ("rate_and_duration.csv", {}, 2, "DUR", "2", "both RATE and DUR are given"),
    (
        "covariate_changes.csv",
        {"constant_covariates": ["WT"]},
        4,
        "WT",
        "72.5",
        "covariate WT changes within subject 1",
    ),
    ("covariate_not_numeric.csv", {"covariates": ["WT"]}, 5, "WT", "heavy", "expected a numeric value of covariate WT"),
    ("duplicate_columns.csv", {}, 1, "id", "id", "both mean ID; expected one column per name"),
    ("unnamed_column.csv", {}, 1, "#3", "", "column 3 has no name"),
    ("ragged_row.csv", {}, 5, None, "2,0,.,100,1,1,1,9", "this line has 8 fields; expected 7"),
    ("empty_file.csv", {}, 1, None, None, "the file is empty"),
    ("no_records.csv", {}, None, None, None, "the table has no records"),
    ("model_obs_cmt.csv", {"model": "pk_oral_1cmt"}, 4, "CMT", "3", "does not observe; expected one of CMT 1"),
    ("model_dose_cmt.csv", {"model": "pk_oral_1cmt"}, 2, "CMT", "3", "cannot dose; expected one of CMT 1 (depot)"),
    ("model_missing_covariate.csv", {"model": "pk_iv_1cmt"}, 1, "APGR", None, "needed by model pk_iv_1cmt"),
]


def test_corpus_has_an_expectation_for_every_file():
    files = sorted(p.name for p in MALFORMED.glob("*.csv"))
    assert files == sorted(case[0] for case in CASES)
    assert len(files) >= 20


@pytest.mark.parametrize(("filename", "kwargs", "row", "column", "value", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_each_malformed_table_reports_its_one_problem(filename, kwargs, row, column, value, fragment):
    path = MALFORMED / filename
    report = validate_event_table(path, **kwargs)
    assert not report.ok
    assert len(report.problems) == 1, report.format()
    problem = report.problems[0]
    assert (problem.row, problem.column, problem.value) == (row, column, value)
    assert fragment in problem.message

    if "model" in kwargs:
        return  # read_event_table takes no model; the same table without one is valid
    with pytest.raises(CohortFormatError) as err:
        read_event_table(path, **kwargs)
    message = str(err.value)
    line = next(text for text in message.splitlines() if text.startswith("  1. "))
    assert str(path) in line  # every listed problem names the file ...
    if row is not None:
        assert f"row {row}" in line  # ... the row, as a spreadsheet numbers it ...
    if column is not None:
        assert f"column {column}" in line  # ... the column as written in the file ...
    if value is not None:
        assert f"value {value!r}" in line  # ... the offending value ...
    assert fragment in line  # ... and what was expected.
    assert "the header is row 1, the first record row 2" in message
