"""Reading an event table's cells as they are, and writing files atomically.

Reading keeps every CSV cell as text (so a message can quote exactly what the user wrote) and
keeps blank lines as records (so row numbers equal the lines an editor shows); how bytes become
CSV cells, and what is refused on the way, is :mod:`medsim.data.csvtext`. Parquet files and
DataFrames keep their column types. Nothing here interprets the cells; that is
:mod:`medsim.data.validate`'s job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medsim.data.csvtext import parse_csv
from medsim.data.report import CohortFormatError, Problem, ValidationReport
from medsim.io import atomic_write  # noqa: F401  (re-exported for the table writers)

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
        header, frame = parse_csv(path)
        frame.columns = list(header) if len(set(header)) == len(header) else list(range(len(header)))
    return RawTable(frame, header, source, table_stem(path), read_units_sidecar(path))


def column_cells(raw: RawTable, position: int) -> pd.Series:
    """The cells of the column at ``position`` (robust to duplicate header names)."""
    return raw.frame.iloc[:, position]
