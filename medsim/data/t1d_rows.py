"""Row-level arithmetic of tidy T1D tables: numbers from cells, insulin split into basal and boluses.

Helpers of :mod:`medsim.data.t1d`; every function is pure and vectorised over the rows of one
subject (or of the table, for cell parsing).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medsim.data.report import Problem
from medsim.data.tablefile import RawTable

#: At most this many rows are listed per check (the count of the rest follows).
MAX_ROWS_PER_CHECK = 20


def numeric(raw: RawTable, header: str, problems: list[Problem], *, required: bool) -> np.ndarray:
    """The column as float64 (NaN where missing); a problem per non-numeric (or missing required) cell."""
    cells = raw.frame[header]
    text = cells.astype("string").str.strip()
    missing = text.isna() | text.isin(["", ".", "NA", "NaN", "nan"])
    values = pd.to_numeric(text.where(~missing), errors="coerce").to_numpy(np.float64)
    bad = (~missing.to_numpy()) & ~np.isfinite(values)
    flag(problems, raw.rows, bad, header, text.to_numpy(), "expected a number")
    if required:
        flag(problems, raw.rows, missing.to_numpy(), header, text.to_numpy(), "missing; expected a number")
    return values


def flag(problems: list[Problem], rows: np.ndarray, mask: np.ndarray, column: str, values, message: str) -> None:
    where = np.flatnonzero(mask)
    for i in where[:MAX_ROWS_PER_CHECK]:
        problems.append(Problem(int(rows[i]), column, str(values[i]), message))
    if where.size > MAX_ROWS_PER_CHECK:
        problems.append(Problem(None, column, None, f"… and {where.size - MAX_ROWS_PER_CHECK} more rows: {message}"))


def flag_subject(
    problems: list[Problem], rows: np.ndarray, mask: np.ndarray, column: str, values, sid: str, message: str
) -> None:
    """One problem per subject and check: the first offending row, with the count of the others."""
    where = np.flatnonzero(mask)
    if where.size:
        more = f" ({where.size} rows of subject {sid}; the first is shown)" if where.size > 1 else f" (subject {sid})"
        problems.append(Problem(int(rows[where[0]]), column, f"{values[where[0]]:.6g}", message + more))


def split_insulin(rate: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Total insulin rate per row (U/min) -> (basal rate per row in U/min, bolus per row in U)."""
    padded = np.concatenate([rate[:1], rate, rate[-1:]])
    median3 = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    basal = np.minimum(rate, median3)
    return basal, (rate - basal) * dt


def infusions(time: np.ndarray, dt: np.ndarray, basal: np.ndarray) -> list[tuple[float, float, float]]:
    """Runs of constant basal rate -> (start, amount U, rate U/min), zero runs skipped."""
    rounded = np.round(basal, 10)
    change = np.concatenate([[True], rounded[1:] != rounded[:-1]])
    starts = np.flatnonzero(change)
    ends = np.concatenate([starts[1:], [rounded.size]])
    out = []
    for a, b in zip(starts, ends, strict=True):
        if rounded[a] > 0:
            duration = float(dt[a:b].sum())
            if duration > 0:
                out.append((float(time[a]), float(rounded[a]) * duration, float(rounded[a])))
    return out


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def row_intervals(time: np.ndarray) -> np.ndarray:
    """Minutes from each row to the next of the same subject; the last row gets the median spacing."""
    if time.size < 2:
        return np.zeros_like(time)
    gaps = np.diff(time)
    return np.concatenate([gaps, [np.median(gaps)]])
