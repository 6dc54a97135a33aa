"""Cells to numbers: parse the reserved columns, fill NONMEM defaults, flag what cannot be parsed.

Defaults for missing columns follow NONMEM: without EVID a record is a dose when it has a
non-zero AMT, an other-type event (EVID 2) when MDV is 1, an observation otherwise; without MDV,
MDV = 0 on observations and 1 on other records; CMT defaults to 1; AMT, RATE, DUR, ADDL, II, SS
and CENS default to 0. A missing cell (``.``, empty, ``NA``) in AMT, RATE, DUR, ADDL, II, SS or
CENS means 0, as in NONMEM; a missing cell in EVID, MDV or CMT gets the column default and a
notice lists those rows.

Numbers outside the range medsim computes with are problems (limits and reasons in
:mod:`medsim.data.limits`). Subject IDs are compared as numbers when they are whole numbers
(``01`` and ``1`` are the same subject), but one subject written two ways (``02`` on one row,
``2.0`` on another) is a problem naming both rows: silently merging them could join two
patients a spreadsheet kept apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from medsim.data.columns import RESERVED, ColumnResolution
from medsim.data.limits import MAGNITUDE_CHECKED, beyond_limits, range_message
from medsim.data.report import Notice, Problem
from medsim.data.tablefile import MISSING_TOKENS, RawTable, column_cells

NUMERIC = ("TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE", "ADDL", "II", "SS", "DUR", "CENS")
ZERO_DEFAULT = ("AMT", "RATE", "DUR", "ADDL", "II", "SS", "CENS")


@dataclass(frozen=True)
class Cells:
    """One column parsed to float64."""

    values: np.ndarray  # (n,) float64; NaN where missing or not a number
    missing: np.ndarray  # (n,) bool: the cell is empty, '.', 'NA' or NaN
    bad: np.ndarray  # (n,) bool: the cell holds text that is not a number


def parse_cells(series: pd.Series) -> Cells:
    """Parse a column to float64, vectorised; text cells are stripped first."""
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(values)
        return Cells(values, missing, np.zeros(len(values), dtype=bool))
    text = series.astype("string").str.strip()
    missing = (text.isna() | text.isin(MISSING_TOKENS)).to_numpy(dtype=bool)
    masked = text.mask(missing)
    try:
        # Arrow's parser is ~10x faster than pd.to_numeric; it refuses the whole column when
        # any cell is not a number, and then pandas finds which cells.
        values = pc.cast(pa.array(masked.array), pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        values = pd.to_numeric(masked, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.asarray(values, dtype=np.float64)
    bad = ~missing & np.isnan(values)
    return Cells(values, missing, bad)


def missing_cells(series: pd.Series) -> np.ndarray:
    """(n,) bool: the cell is empty, ``.``, ``NA`` or NaN (no number parsing)."""
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        return series.isna().to_numpy(dtype=bool)
    text = series.astype("string").str.strip()
    return (text.isna() | text.isin(MISSING_TOKENS)).to_numpy(dtype=bool)


#: Whole-number IDs below this magnitude are compared as numbers; from 2**53 on (where float64
#: stops representing every integer) they are kept as written, so two long hospital numbers never merge.
MAX_NUMERIC_ID = 2.0**53


def canonical_ids(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Subject IDs as text, numeric IDs written as integers (``"01"``, ``1.0`` -> ``"1"``).

    Returns
    -------
    ids : (n,) object array of str ('' where missing)
    missing : (n,) bool
    """
    cells = parse_cells(series)
    text = series.astype("string").str.strip().fillna("")
    ids = text.to_numpy(dtype=object, na_value="")
    with np.errstate(invalid="ignore"):
        integral = (
            np.isfinite(cells.values)
            & (cells.values == np.round(cells.values))
            & (np.abs(cells.values) < MAX_NUMERIC_ID)
        )
    if integral.any():
        ids[integral] = pd.Series(cells.values[integral]).astype(np.int64).astype(str).to_numpy(dtype=object)
    missing = cells.missing
    ids[missing] = ""
    return ids, missing


def id_spellings(series: pd.Series, ids: np.ndarray, use: np.ndarray) -> list[tuple[int, int]]:
    """Records where a subject's ID is spelled differently from its first record.

    Returns
    -------
    list of (i, j)
        ``i``: first record of each further spelling; ``j``: first record of the first spelling
        of the same ID. Empty for a numeric column (one spelling per number).
    """
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        return []
    idx = np.flatnonzero(use)
    text = series.astype("string").str.strip().fillna("").to_numpy(dtype=object, na_value="")
    frame = pd.DataFrame({"id": ids[idx], "text": text[idx], "i": idx})
    firsts = frame.drop_duplicates(["id", "text"], keep="first")
    several = firsts[firsts.duplicated("id", keep=False)]
    out = []
    for _, group in several.groupby("id", sort=False):
        positions = group["i"].to_numpy()
        out += [(int(i), int(positions[0])) for i in positions[1:]]
    return sorted(out)


@dataclass
class Parsed:
    """An event table with its reserved columns as numbers (internal to :mod:`medsim.data`)."""

    raw: RawTable
    columns: ColumnResolution
    rows: np.ndarray  # (n,) int64 spreadsheet row numbers
    ids: np.ndarray  # (n,) object, canonical subject IDs ('' where missing)
    values: dict[str, np.ndarray]  # reserved column -> (n,) float64, defaults filled
    cells: dict[str, Cells]  # reserved column present in the file -> parsed cells
    active: np.ndarray  # (n,) bool: not a blank line, not a comment record
    problems: list[Problem] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.rows)

    def position(self, name: str) -> int:
        """Column position in the file of the (canonical or covariate) ``name``."""
        return self.raw.header.index(self.columns.label(name))

    def text(self, name: str, i: int) -> str:
        """The cell of column ``name`` on record ``i`` as written."""
        cell = self.raw.frame.iat[i, self.position(name)]
        return "" if not isinstance(cell, str) and pd.isna(cell) else str(cell).strip()

    def flag(self, mask: np.ndarray, name: str | None, message: str | Callable[[int], str]) -> None:
        """Add one problem per record in ``mask`` (only these records are looped over)."""
        label = None if name is None else self.columns.label(name)
        for i in np.flatnonzero(mask):
            text = message(i) if callable(message) else message
            value = None if name is None or not self.columns.has(name) else self.text(name, i)
            self.problems.append(Problem(int(self.rows[i]), label, value, text))

    def flag_at(self, i: int, name: str | None, message: str) -> None:
        """Add one problem on record ``i``."""
        label = None if name is None else self.columns.label(name)
        value = None if name is None or not self.columns.has(name) else self.text(name, i)
        self.problems.append(Problem(int(self.rows[i]), label, value, message))

    def flag_at_header(self, name: str, message: str) -> None:
        """Add a problem about the header (row 1), e.g. a missing column."""
        self.problems.append(Problem(1, name, None, message))

    def note(self, mask: np.ndarray, message: str, name: str | None = None) -> None:
        """Add one notice listing the rows in ``mask`` (nothing if none)."""
        if mask.any():
            label = None if name is None else self.columns.label(name)
            self.notices.append(Notice(message, tuple(int(r) for r in self.rows[mask]), label))


def parse_table(raw: RawTable, columns: ColumnResolution) -> Parsed:
    """Parse the reserved columns of ``raw`` and fill defaults (see module docstring)."""
    n = len(raw.frame)
    rows = raw.rows
    positions: dict[str, int] = {}
    for k, h in enumerate(raw.header):
        if h in columns.names:
            positions.setdefault(columns.names[h], k)
    cells = {name: parse_cells(column_cells(raw, positions[name])) for name in NUMERIC if name in positions}
    blank = np.ones(n, dtype=bool)
    for k in range(len(raw.header)):
        blank &= missing_cells(column_cells(raw, k))
    comment = np.zeros(n, dtype=bool)
    if "C" in positions:
        marks = column_cells(raw, positions["C"]).astype("string").str.strip()
        comment = marks.isin(["C", "#"]).to_numpy(dtype=bool) & ~blank
    active = ~blank & ~comment
    if "ID" in positions:
        ids, id_missing = canonical_ids(column_cells(raw, positions["ID"]))
    else:
        ids, id_missing = np.full(n, "", dtype=object), np.zeros(n, dtype=bool)
    parsed = Parsed(raw, columns, rows, ids, {}, cells, active)
    parsed.note(blank, "blank lines are ignored")
    parsed.note(comment, "comment records (C column is 'C' or '#') are ignored, as NONMEM's IGNORE=C does", "C")
    parsed.flag(active & id_missing, "ID", "ID is missing; expected the subject identifier on every record")
    if "ID" in positions:
        for i, j in id_spellings(column_cells(raw, positions["ID"]), ids, active & ~id_missing):
            parsed.flag_at(
                i,
                "ID",
                f"subject {ids[i]} is written {parsed.text('ID', i)!r} here but {parsed.text('ID', j)!r} on row "
                f"{rows[j]}; medsim compares whole-number IDs as numbers, so both would become one subject; "
                "expected one spelling per subject (write the ID the same way on every record)",
            )
    for name, c in cells.items():
        hint = " as elapsed time (clock times and dates are not supported)" if name == "TIME" else ""
        parsed.flag(
            active & c.bad, name, f"not a number; expected a numeric {name}{hint} (decimal point '.', no units)"
        )
        parsed.flag(
            active & ~c.missing & ~c.bad & ~np.isfinite(c.values), name, f"not finite; expected a finite {name}"
        )
        if name in MAGNITUDE_CHECKED:
            parsed.flag(active & ~c.missing & ~c.bad & beyond_limits(c.values), name, range_message(name))

    def column(name: str, default: float) -> tuple[np.ndarray, np.ndarray]:
        """Values with missing cells (or a missing column) set to ``default``; and the missing mask."""
        if name not in cells:
            return np.full(n, default), np.ones(n, dtype=bool)
        c = cells[name]
        return np.where(c.missing, default, c.values), c.missing

    values = {name: column(name, 0.0)[0] for name in ZERO_DEFAULT}
    values["TIME"] = cells["TIME"].values if "TIME" in cells else np.full(n, np.nan)
    values["DV"] = cells["DV"].values if "DV" in cells else np.full(n, np.nan)
    mdv_given, mdv_missing = column("MDV", np.nan)
    evid_given, evid_missing = column("EVID", np.nan)
    amt_missing = cells["AMT"].missing if "AMT" in cells else np.ones(n, dtype=bool)
    derived_evid = np.where(~amt_missing & (values["AMT"] != 0), 1.0, np.where(mdv_given == 1, 2.0, 0.0))
    values["EVID"] = np.where(evid_missing, derived_evid, evid_given)
    values["MDV"] = np.where(mdv_missing, (values["EVID"] != 0).astype(np.float64), mdv_given)
    values["CMT"], cmt_missing = column("CMT", 1.0)
    for name, missing, default in (
        ("EVID", evid_missing, "1 where AMT is non-zero, else 2 where MDV = 1, else 0"),
        ("MDV", mdv_missing, "0 on observation records (EVID 0), else 1"),
        ("CMT", cmt_missing, "1"),
    ):
        if name in cells:
            parsed.note(active & missing, f"{name} is missing; the NONMEM default was used ({default})", name)
    parsed.values.update(values)
    return parsed


__all__ = ["RESERVED", "Cells", "Parsed", "canonical_ids", "parse_cells", "parse_table"]
