"""Checking an event table: every problem with its row, column, value and what was expected.

:func:`validate_event_table` never raises for a problem in the table; it returns a
:class:`~medsim.data.ValidationReport`. :func:`medsim.data.read_event_table` runs the same
checks and raises :class:`~medsim.data.CohortFormatError` listing the problems.

Choices a NONMEM user should know
---------------------------------
* Censoring follows NONMEM's M3 convention: ``CENS`` (or ``BLQ``) = 1 on an observation says
  the value was below a lower limit (a limit of quantification, a CGM floor) and DV holds that
  limit; -1 says it was above an upper limit (a CGM ceiling) held in DV; 0 is a measurement.
  Fits use the probability of lying beyond the limit (Beal 2001, M3), never the limit as a
  value. Any other CENS value, or CENS on a record that is not a used observation, is an error.
  Dropping such records instead (M1) is an analysis decision to make explicitly (MDV = 1).
* Steady state (``SS``), reset events (EVID 3/4) and modelled rates (RATE -1/-2) are errors
  ("not supported"), never silently approximated.
* Ignored records (EVID 2, MDV = 1 observations, blank lines, ``C`` comment records) and
  ignored columns are listed in the report's notices, and :func:`read_event_table` issues each
  as a :class:`~medsim.data.CohortWarning`.
* Subjects without observations are kept (their doses can still be simulated) with a notice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medsim.data.build import build_cohort
from medsim.data.cohort import Cohort
from medsim.data.columns import RESERVED, resolve_columns
from medsim.data.covariates import CovariateValues, select_covariates
from medsim.data.parse import Parsed, parse_table
from medsim.data.records import RecordKinds, check_records
from medsim.data.report import CohortFormatError, Notice, Problem, ValidationReport, format_rows
from medsim.data.tablefile import RawTable, read_raw

if TYPE_CHECKING:
    from medsim.models.base import Covariate, PhysiologyModel


def _resolve_units(p: Parsed, given: Mapping[str, str] | None) -> dict[str, str]:
    """Sidecar units overridden by ``given``; keys mapped like the columns (case-insensitive)."""
    merged = {**p.raw.sidecar_units, **(given or {})}
    canonical = {c.lower(): c for c in RESERVED}
    by_header = {h.lower(): p.columns.names[h] for h in p.raw.header if h in p.columns.names}
    units = {}
    for key, unit in merged.items():
        name = canonical.get(key.lower()) or by_header.get(key.lower()) or key
        units[name] = str(unit)
    return units


def _check_model(p: Parsed, kinds: RecordKinds, model: PhysiologyModel, units: Mapping[str, str]) -> None:
    """Problems where the table does not fit ``model``: CMTs it cannot observe/dose, time unit."""
    cmt = p.values["CMT"]
    observed = ", ".join(f"CMT {c} ({o})" for c, o in sorted(model.obs_targets.items()))
    dosed = ", ".join(f"CMT {c} ({s})" for c, s in sorted(model.dose_targets.items()))
    p.flag(
        kinds.obs & ~np.isin(cmt, list(model.obs_targets)),
        "CMT",
        f"observation of a compartment model {model.name!r} does not observe; expected one of {observed}",
    )
    p.flag(
        kinds.dose & ~np.isin(cmt, list(model.dose_targets)),
        "CMT",
        f"dose into a compartment model {model.name!r} cannot dose; expected one of {dosed}",
    )
    time_unit = units.get("TIME", "")
    if time_unit and time_unit != model.time_unit:
        p.problems.append(
            Problem(
                None,
                p.columns.label("TIME"),
                time_unit,
                f"time unit differs from the {model.time_unit!r} model {model.name!r} works in; expected TIME "
                f"(and RATE, II, DUR) in {model.time_unit}",
            )
        )


def assumed_covariate_notice(model: PhysiologyModel, covariate: Covariate) -> Notice:
    """The notice for an optional ``covariate`` of ``model`` that a table lacks (set to its reference)."""
    c = covariate
    return Notice(
        f"no {c.name} column: model {model.name!r} takes every subject at its reference "
        f"{c.name} = {c.reference:g} {c.unit} ({c.description})",
        (),
        None,
    )


def check_table(
    raw: RawTable,
    *,
    model: PhysiologyModel | str | None = None,
    column_map: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
    constant_covariates: Sequence[str] | None = None,
    covariates: Sequence[str] | None = None,
) -> tuple[ValidationReport, Cohort | None]:
    """Run every check on a raw table; the cohort is built only when there is no problem."""
    if isinstance(model, str):
        from medsim.models import get

        model = get(model)
    columns = resolve_columns(raw.header, column_map)
    p = parse_table(raw, columns)
    p.problems[:0] = columns.problems
    p.notices[:0] = columns.notices
    if not p.active.any():
        p.problems.append(Problem(None, None, None, "the table has no records; expected one row per event"))
    cohort = None
    table_units = _resolve_units(p, units)
    kinds = check_records(p, table_units.get("TIME", ""))
    # an optional covariate the table lacks takes the model's reference value (noted); given, it is checked
    required = tuple(
        c.name for c in (model.covariates if model is not None else ()) if not c.optional or p.columns.has(c.name)
    )
    for c in model.covariates if model is not None else ():
        if c.name not in required:
            p.notices.append(assumed_covariate_notice(model, c))
    covs = select_covariates(
        p,
        kinds.subject,
        len(kinds.subject_ids),
        covariates=covariates,
        constant_covariates=constant_covariates,
        required=required,
        required_by=model.name if model is not None else "",
    )
    if model is not None:
        _check_model(p, kinds, model, table_units)
    _note_empty_subjects(p, kinds)
    table_units = _keep_known_units(p, table_units, covs)
    if not p.problems:
        cohort = build_cohort(p, kinds, covs, units=table_units, name=raw.name, source=raw.source)
    if cohort is not None:
        summary = cohort.summary() | {"rows": p.n, "ignored_rows": int((~(kinds.obs | kinds.dose)).sum())}
    else:
        ids = p.ids[p.active & (p.ids != "")]
        summary = {"rows": p.n, "subjects": int(pd.unique(ids).size), "columns": list(raw.header)}
    problems = tuple(sorted(p.problems, key=lambda pr: (pr.row is not None, pr.row or 0)))
    return ValidationReport(raw.source, problems, tuple(p.notices), summary), cohort


def _note_empty_subjects(p: Parsed, kinds: RecordKinds) -> None:
    n_obs = np.bincount(kinds.subject[kinds.obs & (kinds.subject >= 0)], minlength=len(kinds.subject_ids))
    empty = [kinds.subject_ids[s] for s in np.flatnonzero(n_obs == 0)]
    if empty:
        p.notices.append(
            Notice(
                f"subjects without observations: {format_rows(empty)}; they are kept (their doses can be "
                "simulated) but add nothing to a fit",
                tuple(int(r) for r in p.rows[np.isin(kinds.subject, np.flatnonzero(n_obs == 0))]),
            )
        )


def _keep_known_units(p: Parsed, units: dict[str, str], covs: CovariateValues) -> dict[str, str]:
    kept = {k: u for k, u in units.items() if k in RESERVED or k in covs.names}
    for key in units.keys() - kept.keys():
        p.notices.append(Notice(f"a unit is given for {key!r}, which is not a column or covariate of the cohort"))
    return kept


def validate_event_table(
    table: str | os.PathLike | pd.DataFrame,
    *,
    model: PhysiologyModel | str | None = None,
    column_map: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
    constant_covariates: Sequence[str] | None = None,
    covariates: Sequence[str] | None = None,
) -> ValidationReport:
    """Check an event table and report every problem; never raises for problems in the table.

    Parameters
    ----------
    table : path or DataFrame
        CSV (``.csv``, ``.csv.gz``; ``.`` = missing), Parquet (``.parquet``) or a DataFrame.
    model : PhysiologyModel or str, optional
        When given (an instance or a registered name), also check that every observation CMT
        is in ``model.obs_targets``, every dose CMT in ``model.dose_targets``, the model's
        covariates are present and constant, and the time unit (if known) matches.
    column_map, units, constant_covariates, covariates
        As in :func:`medsim.data.read_event_table`.

    Returns
    -------
    ValidationReport
        ``report.ok`` is True when the table can be read; ``report.problems`` lists each problem
        (row numbers: header = row 1), ``report.notices`` what would be ignored.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file name has no known table suffix.
    medsim.models.UnknownModelError
        If ``model`` is a name that is not registered.
    """
    try:
        raw = read_raw(table)
    except CohortFormatError as err:
        return err.report
    report, _ = check_table(
        raw,
        model=model,
        column_map=column_map,
        units=units,
        constant_covariates=constant_covariates,
        covariates=covariates,
    )
    return report
