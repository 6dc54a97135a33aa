"""Hostile event tables that used to be accepted silently or answered with a misleading message.

Each test reproduces one reported input: numbers that overflow float32 (``DV = 1e308``), short
rows filled with NONMEM defaults, one subject's ID spelled two ways, a folder, a gzip file named
``.csv``, Latin-1 text. Each must now be a problem naming the row (and column) and saying what
is wrong.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from medsim.data import CohortFormatError, read_event_table, validate_event_table
from medsim.data.limits import MAX_ADDL, MAX_CMT, MAX_MAGNITUDE, MIN_MAGNITUDE

HEADER = "ID,TIME,DV,AMT,EVID,CMT"
DOSE = "1,0,.,100,1,1"


def one_problem(path: Path, **kwargs):
    report = validate_event_table(path, **kwargs)
    assert len(report.problems) == 1, report.format()
    return report.problems[0]


@pytest.mark.parametrize(
    ("line", "column", "value"),
    [
        ("1,1,1e308,0,0,2", "DV", "1e308"),  # the reported input: inf in float32, then 200/200 divergences
        ("1,1,-1e308,0,0,2", "DV", "-1e308"),
        ("1,1,1e-300,0,0,2", "DV", "1e-300"),  # a float32 zero: log(DV) = -inf
        ("1,1,1e16,0,0,2", "DV", "1e16"),
        ("1,1e300,3,0,0,2", "TIME", "1e300"),
        ("1,1,.,1e308,1,1", "AMT", "1e308"),  # the reported input
        ("1,1,.,1e-31,1,1", "AMT", "1e-31"),
    ],
)
def test_values_beyond_float32_range_are_errors_naming_row_and_column(write_text, line, column, value):
    path = write_text("t.csv", f"{HEADER}\n{DOSE}\n{line}\n1,2,3,0,0,2\n")
    problem = one_problem(path)
    assert (problem.row, problem.column, problem.value) == (3, column, value)
    assert "outside the range medsim computes with" in problem.message
    with pytest.raises(CohortFormatError, match=rf"row 3, column {column}"):
        read_event_table(path)


def test_values_at_the_limits_are_accepted(write_text):
    """The limits themselves are inside the range (and 1e15 squared times 1e6 records < float32 max)."""
    assert MAX_MAGNITUDE**2 * 1e6 < np.finfo(np.float32).max
    assert np.float32(MIN_MAGNITUDE) > 0 and np.isfinite(np.float32(1) / np.float32(MIN_MAGNITUDE))
    path = write_text("t.csv", f"{HEADER}\n1,0,.,{MAX_MAGNITUDE!r},1,1\n1,1,{MIN_MAGNITUDE!r},0,0,2\n1,2,-0,0,0,2\n")
    report = validate_event_table(path)
    assert report.ok, report.format()


def test_derived_infusion_rate_and_last_additional_dose_are_range_checked(write_text):
    path = write_text("t.csv", "ID,TIME,DV,AMT,EVID,CMT,DUR\n1,0,.,1e10,1,1,1e-25\n1,1,3,0,0,2,0\n")
    problem = one_problem(path)
    assert (problem.row, problem.column) == (2, "DUR")
    assert "AMT / DUR" in problem.message
    path = write_text("t.csv", "ID,TIME,DV,AMT,EVID,CMT,ADDL,II\n1,0,.,10,1,1,1000,1e14\n1,1,3,0,0,2,0,0\n")
    problem = one_problem(path)
    assert (problem.row, problem.column) == (2, "ADDL")
    assert "TIME + ADDL x II" in problem.message


@pytest.mark.parametrize(
    ("cells", "column", "fragment"),
    [
        (f"{DOSE},{MAX_ADDL + 1},1", "ADDL", f"at most {MAX_ADDL}"),  # would expand to 1e6+ doses in memory
        ("1,0,.,100,1,1e308,0,0", "CMT", f"at most {MAX_CMT}"),  # int64 overflow when grouped by CMT
    ],
)
def test_counts_and_compartments_have_upper_limits(write_text, cells, column, fragment):
    path = write_text("t.csv", f"{HEADER},ADDL,II\n{cells}\n1,1,3,0,0,2,0,0\n")
    problem = one_problem(path)
    assert (problem.row, problem.column) == (2, column)
    assert fragment in problem.message


def test_out_of_range_covariate_is_an_error_when_checked_and_ignored_otherwise(write_text):
    path = write_text("t.csv", f"{HEADER},WT\n{DOSE},1e300\n1,1,3,0,0,2,70\n")
    problem = one_problem(path, covariates=["WT"])
    assert (problem.row, problem.column, problem.value) == (2, "WT", "1e300")
    report = validate_event_table(path)
    assert report.ok
    assert any(n.column == "WT" and "1e300" in n.message for n in report.notices)


def test_short_row_is_an_error_naming_row_and_field_counts(write_text):
    """Reported: the short row's CMT became 1 (NONMEM default) and its WT dropped the column."""
    path = write_text("t.csv", f"{HEADER},WT\n{DOSE},70\n1,1,3,0,0\n1,2,2,0,0,2,70\n")
    problem = one_problem(path)
    assert (problem.row, problem.column, problem.value) == (3, None, "1,1,3,0,0")
    assert "this line has 5 fields; expected 7" in problem.message
    assert "not filled with defaults" in problem.message
    with pytest.raises(CohortFormatError, match="row 3"):
        read_event_table(path)


def test_every_ragged_row_is_listed_and_blank_lines_stay_blank(write_text):
    path = write_text("t.csv", f"{HEADER}\n{DOSE}\n\n1,1,3\n1,2,3,0,0,2,9\n1,3,3,0,0,2\n")
    report = validate_event_table(path)
    assert [(p.row, p.value) for p in report.problems] == [(4, "1,1,3"), (5, "1,2,3,0,0,2,9")]


def test_a_trailing_empty_cell_is_a_field_not_a_short_row(write_text):
    path = write_text("t.csv", f"{HEADER},WT\n{DOSE},\n1,1,3,0,0,2,\n")
    assert validate_event_table(path).ok


def test_quoted_field_with_newline_counts_as_one_field(write_text):
    path = write_text("t.csv", f'{HEADER},NOTE\n{DOSE},"first\nsecond"\n1,1,3,0,0,2,x\n')
    report = validate_event_table(path)
    assert report.ok, report.format()


@pytest.mark.parametrize(
    ("first", "second"),
    [("02", "2"), ("2", "2.0"), ("1e3", "1000"), ("-0", "0")],
)
def test_one_subject_spelled_two_ways_is_refused_naming_both_rows(write_text, first, second):
    path = write_text("t.csv", f"{HEADER}\n{first},0,.,100,1,1\n{second},1,3,0,0,2\n")
    problem = one_problem(path)
    assert (problem.row, problem.column, problem.value) == (3, "ID", second)
    assert f"{first!r} on row 2" in problem.message
    assert "one spelling per subject" in problem.message


def test_consistent_numeric_spelling_is_still_compared_as_a_number(write_text):
    path = write_text("t.csv", f"{HEADER}\n01,0,.,100,1,1\n01,1,3,0,0,2\n")
    assert read_event_table(path).ids == ("1",)


def test_ids_beyond_exact_float_integers_are_kept_as_written(write_text):
    """2**53 + 1 and 2**53 are the same float64; as numbers they would merge two patients."""
    a, b = str(2**53 + 1), str(2**53)
    path = write_text("t.csv", f"{HEADER}\n{a},0,.,100,1,1\n{a},1,3,0,0,2\n{b},0,.,100,1,1\n{b},1,3,0,0,2\n")
    assert read_event_table(path).ids == (a, b)


def test_folder_is_reported_as_a_folder(tmp_path):
    folder = tmp_path / "table.csv"
    folder.mkdir()
    problem = one_problem(folder)
    assert "is a folder, not a file" in problem.message
    assert "not found" not in problem.message
    with pytest.raises(CohortFormatError, match="is a folder"):
        read_event_table(tmp_path)  # a folder without a table suffix: still named a folder


def test_missing_file_is_still_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_event_table(tmp_path / "absent.csv")


def test_gzip_file_named_csv_is_recognised(tmp_path):
    text = f"{HEADER}\n{DOSE}\n1,1,3,0,0,2\n"
    (tmp_path / "t.csv").write_bytes(gzip.compress(text.encode()))
    problem = one_problem(tmp_path / "t.csv")
    assert "gzip-compressed" in problem.message and ".csv.gz" in problem.message
    assert "UTF-8" not in problem.message
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(text.encode()))
    assert read_event_table(tmp_path / "t.csv.gz").n_subjects == 1
    (tmp_path / "u.csv.gz").write_text(text)
    assert "not gzip-compressed" in one_problem(tmp_path / "u.csv.gz").message


def test_workbook_named_csv_is_recognised(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"PK\x03\x04" + bytes(100))
    assert "Excel workbook" in one_problem(tmp_path / "t.csv").message


def test_latin1_text_names_the_line_and_the_encoding(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(f"{HEADER},SITE\n{DOSE},Paris\n1,1,3,0,0,2,Orléans\n".encode("latin-1"))
    problem = one_problem(path)
    assert problem.row == 3
    assert "line 3 is not UTF-8" in problem.message
    assert "Latin-1" in problem.message and "'é'" in problem.message
    assert "Orléans" in problem.value


def test_bom_and_crlf_are_read(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(("\ufeff" + f"{HEADER}\r\n{DOSE}\r\n1,1,3,0,0,2\r\n").encode("utf-8"))
    cohort = read_event_table(path)
    assert cohort.subjects[0].obs_value.tolist() == [3.0]


def test_unclosed_quote_is_named(write_text):
    path = write_text("t.csv", f'{HEADER}\n"1,0,.,100,1,1\n1,1,3,0,0,2\n')
    problem = one_problem(path)
    assert problem.row == 2
    assert "never closed" in problem.message and "line 2" in problem.message


def test_csv_parser_errors_name_the_line(write_text):
    # A quoted cell beyond the csv module's field limit (quotes take the exact, quote-aware parser).
    path = write_text("t.csv", f'{HEADER}\n{DOSE}\n1,1,"{"9" * 200_000}",0,0,2\n')
    problem = one_problem(path)
    assert problem.row == 3 and "line 3 cannot be parsed as CSV" in problem.message


def test_huge_unquoted_number_is_not_finite(write_text):
    path = write_text("t.csv", f"{HEADER}\n{DOSE}\n1,1,{'9' * 400},0,0,2\n")
    problem = one_problem(path)
    assert (problem.row, problem.column) == (3, "DV") and "not finite" in problem.message


def _cohort(ids):
    from medsim.data import Cohort

    n = len(ids)
    return Cohort.from_arrays(ids, obs_time=[[1.0]] * n, obs_value=[[3.0]] * n, obs_cmt=2)


def test_writer_refuses_ids_that_would_read_back_as_one_subject(tmp_path):
    from medsim.data import write_event_table

    with pytest.raises(ValueError, match="'1' and '01' are the same number"):
        write_event_table(_cohort(["1", "01"]), tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()


def test_long_numeric_ids_round_trip_exactly(tmp_path):
    """Such IDs used to pass through int64 when written (1e20 overflows it)."""
    from medsim.data import write_event_table

    ids = ["99999999999999999999", str(2**53 + 1), "7"]
    path = write_event_table(_cohort(ids), tmp_path / "t.csv")
    assert read_event_table(path).ids == tuple(ids)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p.write_text(f"{HEADER}\n{DOSE}\n1,1,1e308,0,0,2\n"), "outside the range medsim computes with"),
        (lambda p: p.write_text(f"{HEADER}\n{DOSE}\n1,1,3,0,0\n"), "this line has 5 fields; expected 6"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(gzip.compress(f"{HEADER}\n{DOSE}\n".encode())), "gzip-compressed"),
        (lambda p: p.write_bytes(f"{HEADER},S\n{DOSE},é\n".encode("latin-1")), "line 2 is not UTF-8"),
    ],
)
def test_validate_command_answers_hostile_tables_without_traceback(tmp_path, make, fragment):
    from typer.testing import CliRunner

    from medsim.cli import app

    path = tmp_path / "t.csv"
    make(path)
    result = CliRunner().invoke(app, ["validate", str(path), "--json"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    report = json.loads(result.output)
    assert not report["ok"] and fragment in report["problems"][0]["message"]


@pytest.mark.parametrize("field", ["obs_value", "obs_time", "dose_amount"])
def test_subjects_built_in_python_refuse_values_beyond_float32_range(field):
    from medsim.data import Subject

    arrays = {"obs_time": [1.0], "obs_value": [3.0], "obs_cmt": [2], "dose_time": [0.0], "dose_amount": [100.0]}
    arrays[field] = [1e308]
    with pytest.raises(ValueError, match=rf"{field} contains 1e\+308; expected magnitudes at most 1e\+15"):
        Subject("1", **arrays, dose_cmt=[1], dose_rate=[0.0])
