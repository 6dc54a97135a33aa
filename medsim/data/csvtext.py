"""From the bytes of a CSV file to its text cells: compression, encoding, one record per row.

Every failure says what the file is instead of what it is not: a folder, a gzip file named
``.csv``, a ZIP/Excel workbook, a Parquet or UTF-16 file, Latin-1 text (naming the line and the
byte), an unclosed quote. A record with more *or fewer* fields than the header is a problem
naming the row and both counts: filling a short row with NONMEM defaults would silently move
an observation to CMT 1 or drop a covariate for every subject.

Blank lines are kept as records (all cells empty), so row numbers equal the line numbers an
editor shows (header = row 1) when no quoted cell spans lines.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from pathlib import Path

import pandas as pd

from medsim.data.report import CohortFormatError, Problem, ValidationReport

#: Leading bytes of files that are not CSV text, and what to tell the user.
_NOT_CSV = (
    (b"PK\x03\x04", "a ZIP archive or an Excel workbook (.xlsx), not CSV text; export the sheet as 'CSV UTF-8'"),
    (b"PAR1", "a Parquet file, not CSV text; give it a .parquet name"),
    (b"\xff\xfe", "UTF-16 text, not UTF-8; save the table as UTF-8 CSV"),
    (b"\xfe\xff", "UTF-16 text, not UTF-8; save the table as UTF-8 CSV"),
)
GZIP_MAGIC = b"\x1f\x8b"
_LINE_END = re.compile(r"\r\n|\r|\n")


def _fail(source: str, message: str, row: int | None = None, value: str | None = None) -> CohortFormatError:
    return CohortFormatError(ValidationReport(source, problems=(Problem(row, None, value, message),)))


def read_bytes(path: Path) -> bytes:
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


def decode(data: bytes, source: str) -> str:
    """UTF-8 text (a leading BOM dropped); a problem naming the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = data.rfind(b"\n", 0, err.start) + 1
        line = data.count(b"\n", 0, err.start) + 1
        byte = data[err.start : err.start + 1]
        text = data[start:].split(b"\n", 1)[0].rstrip(b"\r").decode("cp1252", errors="replace")
        message = (
            f"line {line} is not UTF-8 text (byte 0x{byte.hex()} at character {err.start - start + 1}, "
            f"{byte.decode('cp1252', errors='replace')!r} in Latin-1/Windows-1252); the file looks saved in a "
            "legacy encoding such as Latin-1 (ISO-8859-1) or Windows-1252; expected UTF-8: save it as "
            "'CSV UTF-8' or convert it, e.g. iconv -f latin1 -t utf-8"
        )
        raise _fail(source, message, row=line, value=text) from None


def _quoted_records(text: str, source: str) -> tuple[list[list[str]], list[tuple[int, int]]]:
    """CSV records (quotes, embedded newlines) and the first and last line each spans."""
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


def _ragged(source: str, text: str, rows: list[tuple[int, int, int]], width: int) -> CohortFormatError:
    """One problem per record (row, first line, last line) whose field count differs from ``width``."""
    lines = _LINE_END.split(text)
    problems = []
    for row, first, last, count in rows:
        quoted = "\n".join(lines[first - 1 : last])
        hint = "" if count > width else " (a short line is not filled with defaults; write each missing value as '.')"
        if quoted.count('"') % 2:
            hint = f" (a quote '\"' is never closed, so it swallows the rest of the file from line {first})"
        elif last > first:
            hint = f" (a quote '\"' opened on line {first} is closed only on line {last}, joining the lines)"
        fields = f"{count} field{'s' if count != 1 else ''}"
        message = f"this line has {fields}; expected {width}, as many as the header has columns{hint}"
        problems.append(Problem(row, None, quoted, message))
    return CohortFormatError(ValidationReport(source, problems=tuple(problems)))


def _text_frame(lines: list[str], blank: list[bool], width: int) -> pd.DataFrame | None:
    """Cells of quote-free records through pandas' C parser (None if its rows would not match)."""
    body = "\n".join("" if b else line for line, b in zip(lines, blank, strict=True)) + "\n"
    try:
        frame = pd.read_csv(
            io.StringIO(body), header=None, names=range(width), dtype=str, na_filter=False, skip_blank_lines=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    return frame if len(frame) == len(lines) else None


def parse_csv(path: Path) -> tuple[tuple[str, ...], pd.DataFrame]:
    """Header and text cells of a CSV file (``.csv`` or ``.csv.gz``), cells as written.

    Returns
    -------
    header : tuple of str
        Column names, stripped.
    frame : DataFrame
        One text column per header entry (positions ``0..n-1``), one row per record.

    Raises
    ------
    CohortFormatError
        Naming what the file is when it is not UTF-8 CSV text, the line of a parser error, or
        every record with more or fewer fields than the header.
    """
    source = str(path)
    text = decode(read_bytes(path), source)
    if not text.strip(" \t\r\n,"):
        raise _fail(source, "the file is empty; expected a header row (ID,TIME,DV,...) and records", row=1)
    quoted = '"' in text or "\x00" in text
    if quoted:
        # Quotes can hold commas and newlines: the csv module splits records exactly.
        records, spans = _quoted_records(text, source)
        widths = [len(r) for r in records]
        blank = [all(not cell.strip() for cell in r) for r in records]
    else:
        # No quotes: a record is a line and its fields are its commas plus one (fast path).
        lines = _LINE_END.split(text)
        if lines[-1] == "":
            lines.pop()
        spans = [(k, k) for k in range(1, len(lines) + 1)]
        widths = [line.count(",") + 1 for line in lines]
        blank = [not line.replace(",", "").strip() for line in lines]
    if blank[0]:
        raise _fail(source, "the first line is blank; expected the header (ID,TIME,DV,...) on line 1", row=1)
    width = widths[0]
    ragged = [(k + 1, *spans[k], widths[k]) for k in range(1, len(widths)) if widths[k] != width and not blank[k]]
    if ragged:
        raise _ragged(source, text, ragged, width)
    frame = None
    if not quoted:
        header = tuple(h.strip() for h in lines[0].split(","))
        frame = _text_frame(lines[1:], blank[1:], width)
        if frame is None:
            records = [line.split(",") for line in lines]
    else:
        header = tuple(h.strip() for h in records[0])
    if frame is None:
        body = [[""] * width if b else r for r, b in zip(records[1:], blank[1:], strict=True)]
        frame = pd.DataFrame(body, columns=range(width), dtype=object)
    return header, frame
