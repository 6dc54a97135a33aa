"""Reading an event table's cells as they are, and writing files atomically.

Reading keeps every CSV cell as text (so a message can quote exactly what the user wrote) and
keeps blank lines as records (so row numbers equal the lines an editor shows). Parquet files
and DataFrames keep their column types. Nothing here interprets the cells; that is
:mod:`medsim.data.validate`'s job.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medsim.data.report import CohortFormatError, Problem, ValidationReport

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
UNITS_SIDECAR_SUFFIX = ".units.json"

#: Cell texts read as "missing": NONMEM writes ``.``, R writes ``NA``.
MISSING_TOKENS = ("", ".", "NA", "NaN", "nan")


@dataclass(frozen=True)
class RawTable:
    """An event table as read, before interpretation.

    Attributes
    ----------
    frame : DataFrame
        One column per file column (text for CSV; native types for Parquet/DataFrame), with a
        default RangeIndex; header names as in the file.
    header : tuple of str
        Column names as in the file (duplicates kept).
    source : str
        File path or ``"<DataFrame>"``.
    name : str
        File name without its table suffix (empty for a DataFrame).
    sidecar_units : dict
        Contents of ``<file>.units.json`` when present.
    """

    frame: pd.DataFrame
    header: tuple[str, ...]
    source: str
    name: str
    sidecar_units: Mapping[str, str]

    @property
    def rows(self) -> np.ndarray:
        """(n_records,) int64 row numbers: header = row 1, first record = row 2."""
        return np.arange(2, len(self.frame) + 2, dtype=np.int64)


def table_format(path: Path) -> str:
    """``"csv"`` or ``"parquet"`` from the file name; ValueError naming the suffix otherwise."""
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise ValueError(
        f"{path}: cannot tell the table format from the name; expected a name ending in "
        f"{', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}"
    )


def table_stem(path: Path) -> str:
    """File name without ``.csv``, ``.csv.gz``, ``.parquet`` or ``.pq``."""
    name = path.name
    for suffix in sorted(CSV_SUFFIXES + PARQUET_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def units_sidecar(path: Path) -> Path:
    """``theoph.csv`` -> ``theoph.csv.units.json``."""
    return path.with_name(path.name + UNITS_SIDECAR_SUFFIX)


def _fail(source: str, message: str, row: int | None = None) -> CohortFormatError:
    return CohortFormatError(ValidationReport(source, problems=(Problem(row, None, None, message),)))


def read_units_sidecar(path: Path) -> dict[str, str]:
    """Units from ``<file>.units.json`` (a JSON object of column name -> unit), or ``{}``.

    Raises
    ------
    CohortFormatError
        If the sidecar exists but is not a JSON object of strings.
    """
    sidecar = units_sidecar(path)
    if not sidecar.exists():
        return {}
    try:
        units = json.loads(sidecar.read_text(encoding="utf-8"))
    except OSError as err:
        raise _fail(str(sidecar), f"cannot be read ({err.strerror or err}); expected a JSON file of units") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _fail(str(sidecar), f'not valid JSON ({err}); expected an object such as {{"TIME": "h"}}') from None
    if not isinstance(units, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in units.items()):
        raise _fail(str(sidecar), 'expected a JSON object of column name -> unit text, such as {"TIME": "h"}')
    return units


#: Leading bytes of files that are not CSV text, and what to tell the user.
_NOT_CSV = (
    (b"PK\x03\x04", "a ZIP archive or an Excel workbook (.xlsx), not CSV text; export the sheet as 'CSV UTF-8'"),
    (b"PAR1", "a Parquet file, not CSV text; give it a .parquet name"),
    (b"\xff\xfe", "UTF-16 text, not UTF-8; save the table as UTF-8 CSV"),
    (b"\xfe\xff", "UTF-16 text, not UTF-8; save the table as UTF-8 CSV"),
)
GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped for ``.gz`` names; a problem for anything that is not CSV text."""
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _fail(source, f"cannot be read ({err.strerror or err}); expected a readable event table file") from None
    if path.name.lower().endswith(".gz"):
        if not data.startswith(GZIP_MAGIC):
            raise _fail(source, "the name ends in .gz but the file is not gzip-compressed; rename it to end in .csv")
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise _fail(source, f"a damaged gzip file ({err}); expected a complete .csv.gz") from None
    elif data.startswith(GZIP_MAGIC):
        raise _fail(
            source,
            "the file is gzip-compressed although its name ends in .csv; rename it to end in .csv.gz "
            "(read transparently) or decompress it (gunzip)",
        )
    for magic, what in _NOT_CSV:
        if data.startswith(magic):
            raise _fail(source, f"the file looks like {what}")
    return data


def _decode(data: bytes, source: str) -> str:
    """UTF-8 text (a leading BOM dropped); a problem naming the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        byte = data[err.start : err.start + 1]
        legacy = byte.decode("cp1252", errors="replace")
        text = data[data.rfind(b"\n", 0, err.start) + 1 :].split(b"\n", 1)[0].rstrip(b"\r")
        problem = Problem(
            line,
            None,
            text.decode("cp1252", errors="replace"),
            f"line {line} is not UTF-8 text (byte 0x{byte.hex()} at character {column}, {legacy!r} in "
            "Latin-1/Windows-1252); the file looks saved in a legacy encoding such as Latin-1 (ISO-8859-1) or "
            "Windows-1252; expected UTF-8: save it as 'CSV UTF-8' or convert it, e.g. iconv -f latin1 -t utf-8",
        )
        raise CohortFormatError(ValidationReport(source, problems=(problem,))) from None


def _records(text: str, source: str) -> tuple[list[list[str]], list[tuple[int, int]]]:
    """CSV records (quotes, CRLF and embedded newlines handled) and the lines each spans."""
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[list[str]] = []
    spans: list[tuple[int, int]] = []
    previous = 0
    try:
        for record in reader:
            records.append(record)
            spans.append((previous + 1, reader.line_num))
            previous = reader.line_num
    except csv.Error as err:
        line = max(reader.line_num, 1)  # the reader has counted the line it failed on
        raise _fail(source, f"line {line} cannot be parsed as CSV ({err})", row=line) from None
    return records, spans


def _is_blank(record: list[str]) -> bool:
    return all(not cell.strip() for cell in record)


def _parse_csv(path: Path) -> tuple[tuple[str, ...], pd.DataFrame]:
    """Header and text cells of a CSV file; every record must have as many fields as the header.

    A record with fewer fields is a problem like one with more: filling the missing cells with
    NONMEM defaults would silently move an observation to CMT 1 or drop a covariate.
    """
    source = str(path)
    text = _decode(_read_bytes(path), source)
    records, spans = _records(text, source)
    if not records or all(_is_blank(r) for r in records):
        raise _fail(source, "the file is empty; expected a header row (ID,TIME,DV,...) and records", row=1)
    if _is_blank(records[0]):
        raise _fail(source, "the first line is blank; expected the header (ID,TIME,DV,...) on line 1", row=1)
    header = tuple(h.strip() for h in records[0])
    width = len(header)
    lines: list[str] | None = None
    problems = []
    for k, record in enumerate(records[1:], start=1):
        if len(record) == width:
            continue
        if _is_blank(record):
            records[k] = [""] * width  # a blank line: kept as a record so rows equal lines
            continue
        if lines is None:
            lines = re.split(r"\r\n|\r|\n", text)
        first, last = spans[k]
        quoted = "\n".join(lines[first - 1 : last])
        hint = " (a short line is not filled with defaults; write each missing value as '.')"
        if len(record) > width:
            hint = ""
        if quoted.count('"') % 2:
            hint = f" (a quote '\"' is never closed, so it swallows the rest of the file from line {first})"
        elif last > first:
            hint = f" (a quote '\"' opened on line {first} is closed only on line {last}, joining the lines)"
        fields = f"{len(record)} field{'s' if len(record) != 1 else ''}"
        problems.append(
            Problem(
                k + 1,
                None,
                quoted,
                f"this line has {fields}; expected {width}, as many as the header has columns{hint}",
            )
        )
    if problems:
        raise CohortFormatError(ValidationReport(source, problems=tuple(problems)))
    frame = pd.DataFrame(records[1:], columns=range(width), dtype=object) if len(records) > 1 else None
    if frame is None:
        frame = pd.DataFrame({k: pd.Series([], dtype=object) for k in range(width)})
    return header, frame


def read_raw(table: str | os.PathLike | pd.DataFrame) -> RawTable:
    """Read a CSV (``.csv``, ``.csv.gz``), a Parquet file or a DataFrame without interpreting it.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file name has no known table suffix.
    CohortFormatError
        If the path is a folder or not a regular file, cannot be read, is not UTF-8 CSV text (a
        gzip file named ``.csv``, a workbook, another encoding: the problem says which and on
        which line), or a record has more or fewer fields than the header (each such row named).
    """
    if isinstance(table, pd.DataFrame):
        frame = table.reset_index(drop=True)
        header = tuple(str(c).strip() for c in frame.columns)
        frame.columns = list(header)
        return RawTable(frame, header, "<DataFrame>", "", {})
    path = Path(table)
    if path.is_dir():
        raise _fail(str(path), "is a folder, not a file; expected the path of an event table (.csv, .csv.gz, .parquet)")
    kind = table_format(path)
    if not path.exists():
        raise FileNotFoundError(f"event table not found: {path}")
    if not path.is_file():
        raise _fail(str(path), "is not a regular file (a device, pipe or socket); expected an event table file")
    source = str(path)
    if kind == "parquet":
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError) on bad files
            raise _fail(source, f"not a readable Parquet file ({err})") from None
        header = tuple(str(c).strip() for c in frame.columns)
        frame = frame.reset_index(drop=True)
        frame.columns = list(header)
    else:
        header, frame = _parse_csv(path)
        frame.columns = list(header) if len(set(header)) == len(header) else list(range(len(header)))
    return RawTable(frame, header, source, table_stem(path), read_units_sidecar(path))


def column_cells(raw: RawTable, position: int) -> pd.Series:
    """The cells of the column at ``position`` (robust to duplicate header names)."""
    return raw.frame.iloc[:, position]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then rename it to ``path``.

    A reader never sees a half-written file: the rename is atomic on POSIX and Windows file
    systems (``os.replace``). The temporary file is removed if ``write`` fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
