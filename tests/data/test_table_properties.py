"""Property-based tests of the event-table readers: any input gets a report or a typed error.

Hypothesis generates odd CSV files (missing and unknown columns, short and long rows, numbers
such as ``1e400``, ``nan``, ``-0``, ``1e-320``, huge IDs, unicode, quotes, BOMs, CRLF, empty
files, random bytes) and odd DataFrames. For every one of them:

* :func:`validate_event_table` returns a :class:`ValidationReport` (it never raises for a
  problem in the table), whose problems name a row inside the table or none;
* :func:`read_event_table` returns a cohort exactly when the report is clean, and otherwise
  raises :class:`CohortFormatError`; no other exception escapes;
* a cohort that is returned holds only numbers medsim can compute with (finite, within
  :data:`medsim.data.limits.MAX_MAGNITUDE`), so nothing wrong passes silently.

``max_examples`` is kept modest so the three tests take a few seconds each; the strategies
put their weight on the values that have broken readers before (see ``ODD_NUMBERS``).
"""

from __future__ import annotations

import gzip
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsim.data import Cohort, CohortFormatError, ValidationReport, read_event_table, validate_event_table
from medsim.data.limits import MAX_MAGNITUDE

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

COLUMNS = ["ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE", "ADDL", "II", "SS", "DUR", "BLQ", "C", "WT"]
ODD_NUMBERS = [
    "1e400", "-1e400", "1e308", "1e-320", "1e-300", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "-0",
    "0", "1", "2", "1.0", "02", "2.0", "1e3", "1000", "-1", "-2", "3", "4", "0.5", "1e15", "1e16",
    "99999999999999999999", "9007199254740993", ".", "", "NA", " 1 ", "0x10", "1_000", "1,5", "ａ",
    "٣", "C", "#", "é", "\u00a0", '"', "\t",
]  # fmt: skip


#: Finite in float64 but infinite, zero or subnormal in float32 (or beyond the documented limit).
EXTREME = ["1e308", "-1e308", "1e-320", "5e-324", "1e-300", "1e16", "3.5e38", "-1e39", "1e-40"]


def cell() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ODD_NUMBERS),
        st.integers(-5, 30).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=6),
    )


def csv_field(text: str) -> str:
    """Quote a field when CSV needs it (as a spreadsheet would)."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


@st.composite
def csv_tables(draw) -> bytes:
    header = draw(
        st.lists(st.one_of(st.sampled_from(COLUMNS), st.text(max_size=4)), min_size=0, max_size=9)
        | st.permutations(COLUMNS[:8])
    )
    width = len(header)
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        n = draw(st.sampled_from([width, width, width, max(width - 1, 0), width + 1, 0]))
        rows.append([draw(cell()) for _ in range(n)])
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    lines = [",".join(csv_field(h) for h in header)] + [",".join(csv_field(c) for c in r) for r in rows]
    text = newline.join(lines) + draw(st.sampled_from(["", newline, newline * 2]))
    data = text.encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data  # a byte-order mark, as Excel writes
    if draw(st.integers(0, 9)) == 0:
        data = data.replace(b"a", b"\xe9")  # Latin-1 bytes in a UTF-8 file
    return data


@st.composite
def nearly_valid_tables(draw) -> bytes:
    """A valid table (one dose then observations per subject) with at most three odd edits."""
    lines = []
    for sid in range(1, draw(st.integers(1, 3)) + 1):
        lines.append([str(sid), "0", ".", "100", "1", "1", "70"])
        for k in range(draw(st.integers(1, 3))):
            lines.append([str(sid), str(k + 1), draw(st.sampled_from(["3.5", "0", "-2", "1e-3"])), "0", "0", "2", "70"])
    for _ in range(draw(st.integers(0, 3))):
        row = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["cell", "cell", "short", "long"]))
        if edit == "cell":
            lines[row][draw(st.integers(0, len(lines[row]) - 1))] = draw(
                st.sampled_from(EXTREME) | st.sampled_from(ODD_NUMBERS) | cell()
            )
        elif edit == "short":
            lines[row] = lines[row][:-1]
        else:
            lines[row] = [*lines[row], draw(cell())]
    text = "\n".join(
        ",".join(csv_field(c) for c in r) for r in [["ID", "TIME", "DV", "AMT", "EVID", "CMT", "WT"], *lines]
    )
    return text.encode("utf-8")


def check(path: Path, content: bytes) -> None:
    """The properties of the module docstring for one file holding ``content`` (uncompressed)."""
    report = validate_event_table(path)
    assert isinstance(report, ValidationReport)
    json.dumps(report.to_dict(), default=str)
    n_lines = content.count(b"\n") + content.count(b"\r") + 1
    for problem in report.problems:
        assert problem.row is None or 1 <= problem.row <= n_lines, problem
        assert problem.message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cohort = read_event_table(path)
        except CohortFormatError as err:
            assert not report.ok
            assert err.report.problems == report.problems
            return
    assert report.ok, report.format()
    assert_usable(cohort)


def assert_usable(cohort: Cohort) -> None:
    for s in cohort.subjects:
        for values in (s.obs_time, s.obs_value, s.dose_time, s.dose_amount, s.dose_rate, list(s.covariates.values())):
            values = np.asarray(values, dtype=np.float64)
            single = values.astype(np.float32)  # what the simulator and the fit compute with
            assert np.all(np.isfinite(single)) and np.all((single != 0) == (values != 0)), s
            assert np.all(np.abs(values) <= MAX_MAGNITUDE), s
        assert np.all(s.dose_amount > 0) and np.all(s.obs_time >= 0) and np.all(s.dose_rate >= 0)
        assert np.all(np.isin(s.obs_cens, (0, 1, -1))), s  # a censoring code the likelihood knows


@SETTINGS
@given(data=csv_tables() | nearly_valid_tables(), name=st.sampled_from(["t.csv", "t.csv.gz"]))
def test_any_csv_table_gets_a_report_or_a_typed_error(data: bytes, name: str):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        check(path, data)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200) | st.binary(max_size=40).map(lambda b: b"ID,TIME,DV\n1,0," + b))
def test_random_bytes_get_a_report_or_a_typed_error(data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.csv"
        path.write_bytes(data)
        check(path, data)


def frame_column() -> st.SearchStrategy[list]:
    return st.one_of(
        st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=4, max_size=4),
        st.lists(st.integers(-(2**63), 2**63 - 1), min_size=4, max_size=4),
        st.lists(st.sampled_from([0, 1, 2]), min_size=4, max_size=4),
        st.lists(st.one_of(st.none(), st.sampled_from(ODD_NUMBERS)), min_size=4, max_size=4),
        st.lists(st.booleans(), min_size=4, max_size=4),
    )


@settings(max_examples=100, deadline=None)
@given(columns=st.dictionaries(st.sampled_from(COLUMNS), frame_column(), min_size=0, max_size=8))
def test_any_dataframe_gets_a_report_or_a_typed_error(columns):
    frame = pd.DataFrame(columns) if columns else pd.DataFrame()
    report = validate_event_table(frame)
    assert isinstance(report, ValidationReport)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cohort = read_event_table(frame)
        except CohortFormatError:
            assert not report.ok
            return
    assert report.ok, report.format()
    assert_usable(cohort)


@settings(max_examples=100, deadline=None)
@given(data=csv_tables() | nearly_valid_tables())
def test_fast_and_quote_aware_parsers_agree_on_quote_free_text(data: bytes):
    """Quote-free files take pandas' C parser; the csv module must read the same cells."""
    from medsim.data.csvtext import _quoted_records, parse_csv

    text = data.decode("utf-8-sig", errors="replace")
    if '"' in text or "\x00" in text:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.csv"
        path.write_text(text, encoding="utf-8")
        try:
            header, frame = parse_csv(path)
        except CohortFormatError:
            return
    records, _ = _quoted_records(text, "t.csv")
    assert header == tuple(h.strip() for h in records[0])
    expected = [r if any(c.strip() for c in r) else [""] * len(header) for r in records[1:]]
    assert frame.to_numpy().tolist() == expected
