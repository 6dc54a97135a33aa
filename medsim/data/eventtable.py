"""Reading and writing cohorts as NONMEM-style event tables (CSV, CSV.gz, Parquet).

Format
------
One record per row: ``ID, TIME, DV, AMT, EVID, CMT, MDV, RATE`` (+ ``ADDL, II, SS, DUR, CENS``)
and covariate columns; the meaning of each column, the header aliases and ``column_map`` are
described in :mod:`medsim.data.columns`, the defaults for missing columns in
:mod:`medsim.data.parse`, the rules in :mod:`medsim.data.records` and
:mod:`medsim.data.covariates`. Missing values are written ``.`` (NONMEM); ``.``, empty cells
and ``NA`` are read as missing.

Units are metadata: a ``units`` mapping (``{"TIME": "h", "DV": "mg/L", "AMT": "mg", "WGT": "kg"}``)
and/or a JSON sidecar ``<table file>.units.json`` holding the same object, read automatically when
present (``units`` entries override it). :func:`write_event_table` writes the sidecar.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medsim.data.cohort import Cohort
from medsim.data.parse import MAX_NUMERIC_ID, canonical_ids
from medsim.data.report import CohortFormatError, CohortWarning
from medsim.data.tablefile import atomic_write, read_raw, table_format, units_sidecar
from medsim.data.validate import check_table


def read_event_table(
    table: str | os.PathLike | pd.DataFrame,
    *,
    column_map: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
    constant_covariates: Sequence[str] | None = None,
    covariates: Sequence[str] | None = None,
) -> Cohort:
    """Read an event table into a :class:`~medsim.data.Cohort`.

    Parameters
    ----------
    table : path or DataFrame
        ``.csv``, ``.csv.gz``, ``.parquet``/``.pq`` file, or a DataFrame with the same columns.
    column_map : mapping, optional
        File column name -> canonical or covariate name, matched case-insensitively, e.g.
        ``{"Subject": "ID", "conc": "DV"}`` (see :mod:`medsim.data.columns`).
    units : mapping, optional
        Column -> unit; overrides ``<file>.units.json``.
    constant_covariates : sequence of str, optional
        Covariates that must be constant within each subject (a change is an error). Default:
        all of ``covariates`` when that is given.
    covariates : sequence of str, optional
        Columns to keep as covariates. Default: every extra numeric column that is complete and
        constant within subjects (others are ignored with a warning); see
        :mod:`medsim.data.covariates`.

    Returns
    -------
    Cohort
        Subjects in order of first appearance; ``name`` is the file name without suffix and
        ``source`` the path (``"<DataFrame>"`` for a DataFrame).

    Raises
    ------
    CohortFormatError
        Listing every problem (file, row with the header as row 1, column, value, what was
        expected); ``err.report`` holds the full :class:`~medsim.data.ValidationReport`.
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file name has no known table suffix.

    Warns
    -----
    CohortWarning
        Once per group of ignored records or columns and per assumed default (also in the
        report of :func:`~medsim.data.validate_event_table`).
    """
    raw = read_raw(table)
    report, cohort = check_table(
        raw, column_map=column_map, units=units, constant_covariates=constant_covariates, covariates=covariates
    )
    if cohort is None:
        raise CohortFormatError(report)
    for line in report.warnings:
        warnings.warn(line, CohortWarning, stacklevel=2)
    return cohort


def _for_file(frame: pd.DataFrame) -> pd.DataFrame:
    """Whole-number IDs as integers so NONMEM-style tools read them as such.

    Raises
    ------
    ValueError
        If two subject IDs are the same number written two ways (``"1"`` and ``"01"``): the
        file would be read back as one subject, or refused.
    """
    out = frame.copy()
    ids = out["ID"].astype(str)
    unique = pd.unique(ids)
    canonical, _ = canonical_ids(pd.Series(unique, dtype=object))
    seen: dict[str, str] = {}
    for sid, number in zip(unique, canonical, strict=True):
        if seen.setdefault(number, sid) != sid:
            raise ValueError(
                f"subject IDs {seen[number]!r} and {sid!r} are the same number; an event table compares "
                "whole-number IDs as numbers, so they would be read back as one subject; expected distinct IDs"
            )
    whole = [
        c == s and re.fullmatch(r"-?\d+", s) is not None and abs(int(s)) < MAX_NUMERIC_ID
        for s, c in zip(unique, canonical, strict=True)
    ]
    if len(ids) and all(whole):
        out["ID"] = ids.astype(np.int64)  # whole numbers below 2**53, written as the reader writes them
    return out


def write_event_table(cohort: Cohort, path: str | os.PathLike) -> Path:
    """Write ``cohort`` as a canonical event table, atomically, plus its units sidecar.

    The format follows the suffix: ``.csv`` / ``.csv.gz`` (missing values as ``.``, floats
    written with enough digits to read back exactly) or ``.parquet`` / ``.pq``. When the cohort
    has units, ``<path>.units.json`` is written too (also atomically). Reading the file back
    gives an equal cohort with the same :meth:`~medsim.data.Cohort.data_hash`.

    Parameters
    ----------
    cohort : Cohort
    path : path
        Destination; its folder is created if needed.

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    ValueError
        If the suffix is not a known table format, or two subject IDs are the same number
        written two ways (``"1"`` and ``"01"``).
    """
    path = Path(path)
    kind = table_format(path)
    frame = _for_file(cohort.to_event_table())
    if kind == "csv":
        compression = "gzip" if path.name.lower().endswith(".gz") else None
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, na_rep=".", compression=compression))
    else:
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    sidecar = units_sidecar(path)
    if cohort.units:
        text = json.dumps(dict(cohort.units), indent=2, sort_keys=True) + "\n"
        atomic_write(sidecar, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    elif sidecar.exists():
        # A stale sidecar would attach another table's units to this one.
        sidecar.unlink()
    return path
