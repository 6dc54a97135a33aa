"""Tidy type-1 diabetes tables (CGM, insulin, carbohydrate) -> a validated cohort for the glucose models.

The table has one row per subject and time point (columns and units in
:mod:`medsim.data.t1d_columns`); simglucose's result shape ``patient, time_min, bg_true, cgm,
cho_g_per_min, insulin_U_per_min`` (3-minute rows) is read as it is. Each row's rates act over
the interval to the subject's next row (the last row over the subject's median spacing).

What becomes of each quantity (the glucose models' compartments, ``medsim models``):

* CGM glucose (mg/dL; mmol/L converted with 18.016 mg/dL per mmol/L) -> observations on the
  model's glucose CMT, at every row or, with ``cgm_every``, at times that are multiples of it;
  with ``cgm_limits``, readings at the sensor's floor or ceiling are censored observations;
* carbohydrate -> grams per row (a rate in g/min times the row's interval) -> a meal into the
  model's carbohydrate CMT;
* insulin -> a rate per row (U/min). A total-insulin column is split into a basal part (the
  row's rate without single-row spikes: the smaller of the rate and the median of it and its
  two neighbours) and boluses (what the spike adds, in U). Runs of constant basal rate become
  zero-order infusions, so the insulin delivered is the table's to rounding;
* the ``BASAL`` covariate (U/h) the models' initial steady state needs is the time-weighted
  median basal rate; a ``BASAL`` column is kept but checked against it;
* body weight (kg) becomes the covariate ``WT`` when the model declares a covariate in kg.

Magnitudes are checked per compartment (limits below, each a generous bound on physiology and
pump hardware), because a plausible-looking table in the wrong unit is the most common error:
a basal rate above :data:`MAX_BASAL_U_PER_H` is what a U/min column read as U/h looks like,
and a total daily carbohydrate above :data:`MAX_CARBS_G_PER_DAY` is what grams read as g/min
look like. The event table built is then checked by :func:`medsim.data.validate_event_table`
against the model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from medsim.data.cohort import Cohort
from medsim.data.report import CohortFormatError, CohortWarning, Notice, Problem, ValidationReport
from medsim.data.t1d_columns import T1DColumns, resolve_t1d_columns
from medsim.data.t1d_rows import (
    MAX_ROWS_PER_CHECK,
    flag,
    flag_subject,
    infusions,
    numeric,
    row_intervals,
    split_insulin,
    weighted_median,
)
from medsim.data.tablefile import RawTable, read_raw
from medsim.data.validate import assumed_covariate_notice, check_table

MG_DL_PER_MMOL_L = 18.016
#: CGM readings outside this range (mg/dL) are not glucose concentrations (sensors report 40-400).
CGM_RANGE_MG_DL = (10.0, 1000.0)
#: Basal rates above this (U/h) are an error: adult needs are 0.3-3 U/h and pumps stop at 15-35.
MAX_BASAL_U_PER_H = 10.0
#: A median basal rate below this (U/h), under pumps' smallest increment (0.025-0.05 U/h), is an
#: error: it is what a U/min column read as U/h looks like.
MIN_BASAL_U_PER_H = 0.02
#: A bolus above this (U) in one row is an error (pumps cap single boluses at 25-35 U).
MAX_BOLUS_U = 50.0
#: Carbohydrate above this (g) in one row, or on average per day, is an error.
MAX_MEAL_G = 300.0
MAX_CARBS_G_PER_DAY = 800.0
WEIGHT_RANGE_KG = (2.0, 250.0)


class T1DTableWarning(CohortWarning):
    """Something in a tidy T1D table that is suspicious but usable (units, basal covariate)."""


def check_t1d_table(
    table: str | os.PathLike | pd.DataFrame,
    *,
    units: Mapping[str, str] | None = None,
    cgm_every: float | None = None,
    model: object = "glucose_insulin",
    cgm_limits: tuple[float, float] | None = None,
) -> tuple[ValidationReport, Cohort | None]:
    """Check a tidy T1D table and build the cohort; never raises for problems in the table.

    Parameters
    ----------
    table : path or DataFrame
        CSV (``.csv``, ``.csv.gz``), Parquet or a DataFrame (columns in :mod:`medsim.data.t1d_columns`).
    units : mapping column (or role) -> unit, optional
        For columns whose name carries no unit, e.g. ``{"insulin": "U/min", "cho": "g"}``.
    cgm_every : float, optional
        Keep CGM readings only at times (min) that are multiples of this (e.g. 15 of
        simglucose's 3-minute rows); default every reading.
    model : PhysiologyModel or str
        The glucose model the cohort is for (its CMTs and covariates).
    cgm_limits : (floor, ceiling), optional
        The sensor's reporting range in mg/dL (e.g. ``(39, 400)`` for simglucose's Dexcom and
        many real sensors, ``(40, 400)`` for others). A reading at or below the floor is a
        censored observation (the true value is somewhere below, ``CENS`` 1 with DV = floor), at
        or above the ceiling censored above (``CENS`` -1); fits then use the probability of
        being beyond the limit (M3), not the limit as a value. Default: every reading exact.

    Returns
    -------
    report, cohort
        ``cohort`` is None when ``report.problems`` is not empty.
    """
    if isinstance(model, str):
        from medsim.models import get

        model = get(model)
    raw = read_raw(table)
    columns, problems, notices = resolve_t1d_columns(raw.header, units)
    if cgm_every is not None and not cgm_every > 0:
        problems.append(Problem(None, None, str(cgm_every), "cgm_every must be > 0 minutes"))
    if cgm_limits is not None and not (
        len(cgm_limits) == 2 and not np.isnan(cgm_limits).any() and 0 <= cgm_limits[0] < cgm_limits[1]
    ):
        problems.append(
            Problem(
                None,
                None,
                str(cgm_limits),
                "cgm_limits must be (floor, ceiling) in mg/dL with 0 <= floor < ceiling (inf: no ceiling)",
            )
        )
    if problems:
        return ValidationReport(raw.source, tuple(problems), tuple(notices)), None
    frame = _event_frame(raw, columns, cgm_every, model, problems, notices, cgm_limits)
    if problems or frame is None:
        problems.sort(key=lambda pr: (pr.row is not None, pr.row or 0))
        return ValidationReport(raw.source, tuple(problems), tuple(notices)), None
    covariates = [
        c for c in frame.columns if c not in ("ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE", "CENS")
    ]
    event_units = {"TIME": "min", "DV": "mg/dL", "AMT": "U insulin / g carbohydrate", "RATE": "U/min", "BASAL": "U/h"}
    event_units.update({c: "kg" for c in covariates if c != "BASAL"})
    report, cohort = check_table(read_raw(frame), model=model, units=event_units, covariates=covariates)
    # the event table's notice of a missing weight repeats the one above, in the event table's terms
    repeated = {assumed_covariate_notice(model, c) for c in model.covariates if c.optional and c.unit == "kg"}
    notices += [n for n in report.notices if n not in repeated]
    if cohort is not None:
        name = raw.name or "t1d"
        cohort = Cohort(cohort.subjects, name, cohort.units, cohort.covariate_names, raw.source)
    return ValidationReport(raw.source, report.problems, tuple(notices), report.summary), cohort


def read_t1d_table(
    table: str | os.PathLike | pd.DataFrame,
    *,
    units: Mapping[str, str] | None = None,
    cgm_every: float | None = None,
    model: object = "glucose_insulin",
    cgm_limits: tuple[float, float] | None = None,
) -> Cohort:
    """Read a tidy T1D table into a :class:`~medsim.data.Cohort` (arguments as :func:`check_t1d_table`).

    Raises
    ------
    CohortFormatError
        Listing every problem with its row (header = row 1), column, value and what was expected.

    Warns
    -----
    T1DTableWarning
        Once per notice (unused columns, suspicious units, basal covariate disagreements).
    """
    report, cohort = check_t1d_table(table, units=units, cgm_every=cgm_every, model=model, cgm_limits=cgm_limits)
    if cohort is None:
        raise CohortFormatError(report)
    for line in report.warnings:
        warnings.warn(line, T1DTableWarning, stacklevel=2)
    return cohort


def _cmt(targets: Mapping[int, str], wanted: tuple[str, ...], model: object) -> int:
    """The compartment of the first name in ``wanted`` (in that order of preference) the model has."""
    for name in wanted:
        for cmt, target in sorted(targets.items()):
            if target == name:
                return int(cmt)
    raise ValueError(f"model {getattr(model, 'name', model)!r} has no compartment among {wanted}")


def _event_frame(
    raw: RawTable,
    cols: T1DColumns,
    cgm_every: float | None,
    model: object,
    problems: list[Problem],
    notices: list[Notice],
    cgm_limits: tuple[float, float] | None = None,
) -> pd.DataFrame | None:
    rows = raw.rows
    ids = raw.frame[cols.subject.header].astype("string").str.strip()
    flag(problems, rows, (ids.isna() | (ids == "")).to_numpy(), cols.subject.header, ids.to_numpy(), "missing ID")
    time = numeric(raw, cols.time.header, problems, required=True) * (60.0 if cols.time.unit == "h" else 1.0)
    flag(problems, rows, time < 0, cols.time.header, time, "negative time; expected time >= 0")

    def column(c, required=False):
        return None if c is None else numeric(raw, c.header, problems, required=required)

    cgm, carbs, insulin = column(cols.cgm), column(cols.carbs), column(cols.insulin)
    basal_col, bolus_col, weight = column(cols.basal), column(cols.bolus), column(cols.weight)
    basal_cov = column(cols.basal_covariate)
    if problems:
        return None
    if cgm is not None and cols.cgm.unit == "mmol/L":
        cgm = cgm * MG_DL_PER_MMOL_L
    if cgm is not None:
        out = np.isfinite(cgm) & ((cgm < CGM_RANGE_MG_DL[0]) | (cgm > CGM_RANGE_MG_DL[1]))
        hint = " (values like these are mmol/L: name the column cgm_mmol_L)" if np.nanmax(cgm, initial=0) < 35 else ""
        flag(problems, rows, out, cols.cgm.header, cgm, f"CGM glucose outside {CGM_RANGE_MG_DL} mg/dL{hint}")
    for c, values in ((cols.carbs, carbs), (cols.insulin, insulin), (cols.basal, basal_col), (cols.bolus, bolus_col)):
        if values is not None:
            flag(problems, rows, values < 0, c.header, values, "negative; expected >= 0")
    if weight is not None:
        bad = np.isfinite(weight) & ((weight < WEIGHT_RANGE_KG[0]) | (weight > WEIGHT_RANGE_KG[1]))
        flag(problems, rows, bad, cols.weight.header, weight, f"body weight outside {WEIGHT_RANGE_KG} kg")
    if problems:
        return None

    insulin_cmt = _cmt(model.dose_targets, ("insulin_sc",), model)
    meal_cmt = _cmt(model.dose_targets, ("gut1", "meal", "stomach"), model)
    # A model with a sensor observable reads CGM there; otherwise CGM stands for plasma glucose.
    glucose_cmt = _cmt(model.obs_targets, ("cgm_mg_dL", "glucose_mg_dL"), model)
    cov_names = {c.name for c in model.covariates}
    weight_cov = next((c for c in model.covariates if c.unit == "kg"), None)
    if weight is not None and weight_cov is None:
        notices.append(
            Notice(f"body weight not used: model {model.name!r} has no covariate in kg", (), cols.weight.header)
        )
    if weight is None and weight_cov is not None and weight_cov.optional:
        notices.append(
            Notice(
                f"no body weight column: model {model.name!r} takes every subject at its reference "
                f"{weight_cov.name} = {weight_cov.reference:g} kg (give a weight_kg column to scale by size)",
                (),
                None,
            )
        )
        weight_cov = None
    records: list[dict] = []
    codes, uniques = pd.factorize(ids, sort=False)
    for s, sid in enumerate(uniques):
        idx = np.flatnonzero(codes == s)
        t = time[idx]
        back = np.flatnonzero(np.diff(t) <= 0)
        for j in back[:MAX_ROWS_PER_CHECK]:
            problems.append(
                Problem(
                    int(rows[idx[j + 1]]),
                    cols.time.header,
                    str(t[j + 1]),
                    f"time does not increase within subject {sid} (row {rows[idx[j]]} has {t[j]}); expected one "
                    "row per time point, sorted by time",
                )
            )
        if back.size:
            continue
        dt = row_intervals(t)
        days = max(float(t[-1] + dt[-1] - t[0]), 1.0) / 1440.0
        sub_rows = rows[idx]
        # insulin: a basal rate per row (U/min) and boluses (U)
        if insulin is not None:
            u = np.nan_to_num(insulin[idx])
            rate = u / np.where(dt > 0, dt, np.inf) if cols.insulin.unit == "U" else u
            rate = rate / 60.0 if cols.insulin.unit == "U/h" else rate
            basal, bolus = split_insulin(rate, dt)
            source_col = cols.insulin.header
        else:
            basal = np.zeros(idx.size)
            if basal_col is not None:
                basal = pd.Series(basal_col[idx]).ffill().fillna(0.0).to_numpy()
                basal = basal / 60.0 if cols.basal.unit == "U/h" else basal
            bolus = np.zeros(idx.size) if bolus_col is None else np.nan_to_num(bolus_col[idx])
            source_col = cols.basal.header if cols.basal is not None else (cols.bolus.header if cols.bolus else "")
        per_hour = getattr(cols.insulin or cols.basal, "unit", "") == "U/h"
        unit_hint = (
            "" if per_hour else f"; if {source_col!r} is in U/h rather than U/min, name it so (e.g. insulin_U_per_h)"
        )
        flag_subject(
            problems,
            sub_rows,
            basal * 60.0 > MAX_BASAL_U_PER_H,
            source_col,
            basal * 60.0,
            sid,
            f"basal rate above {MAX_BASAL_U_PER_H:g} U/h (value shown in U/h){unit_hint}",
        )
        flag_subject(
            problems, sub_rows, bolus > MAX_BOLUS_U, source_col, bolus, sid, f"bolus above {MAX_BOLUS_U:g} U in one row"
        )
        # carbohydrate (g per row)
        grams = np.zeros(idx.size)
        if carbs is not None:
            c = np.nan_to_num(carbs[idx])
            grams = c * dt if cols.carbs.unit == "g/min" else c
            hint = "; if the column is grams per row, name it cho_g" if cols.carbs.unit == "g/min" else ""
            flag_subject(
                problems,
                sub_rows,
                grams > MAX_MEAL_G,
                cols.carbs.header,
                grams,
                sid,
                f"above {MAX_MEAL_G:g} g in one row{hint}",
            )
            if grams.sum() / days > MAX_CARBS_G_PER_DAY:
                problems.append(
                    Problem(
                        None,
                        cols.carbs.header,
                        f"{grams.sum() / days:.0f} g/day",
                        f"subject {sid}: carbohydrate above {MAX_CARBS_G_PER_DAY:g} g per day on average{hint}",
                    )
                )
        # covariates
        cov: dict[str, float] = {}
        recorded = weighted_median(basal * 60.0, dt) if dt.sum() > 0 else 0.0
        if 0 < recorded < MIN_BASAL_U_PER_H:
            problems.append(
                Problem(
                    int(sub_rows[0]),
                    source_col,
                    f"{recorded:.4g} U/h",
                    f"subject {sid}: median basal rate below {MIN_BASAL_U_PER_H:g} U/h, under the smallest rate pumps "
                    "deliver; a rate in U/min read as U/h looks like this (name the column insulin_U_per_min)",
                )
            )
            continue
        if "BASAL" in cov_names:
            if basal_cov is not None:
                given = basal_cov[idx][np.isfinite(basal_cov[idx])]
                if given.size == 0 or np.ptp(given) > 0:
                    problems.append(
                        Problem(
                            int(sub_rows[0]),
                            cols.basal_covariate.header,
                            None,
                            f"subject {sid}: BASAL must be given and constant",
                        )
                    )
                    continue
                cov["BASAL"] = float(given[0])
                if not (basal > 0).any():
                    problems.append(
                        Problem(
                            int(sub_rows[0]),
                            cols.basal_covariate.header,
                            str(given[0]),
                            f"subject {sid}: a BASAL covariate without a basal infusion in the table; the model starts "
                            "from the steady state under BASAL and needs that insulin delivered (give the basal "
                            "insulin, e.g. a basal_U_per_h column)",
                        )
                    )
                elif recorded > 0 and not 0.67 <= given[0] / recorded <= 1.5:
                    notices.append(
                        Notice(
                            f"subject {sid}: BASAL {given[0]:g} U/h differs from the recorded median basal rate "
                            f"{recorded:.3g} U/h",
                            (int(sub_rows[0]),),
                            cols.basal_covariate.header,
                        )
                    )
            elif recorded <= 0:
                problems.append(
                    Problem(
                        None,
                        source_col or None,
                        None,
                        f"subject {sid}: no basal insulin recorded; model {model.name!r} needs the basal rate "
                        "(covariate BASAL, U/h) and its infusion; give a basal or total-insulin column",
                    )
                )
                continue
            else:
                cov["BASAL"] = round(recorded, 6)
        if weight_cov is not None:
            w = weight[idx][np.isfinite(weight[idx])] if weight is not None else np.zeros(0)
            if w.size == 0 or np.ptp(w) > 0:
                problems.append(
                    Problem(
                        None,
                        cols.weight.header if cols.weight else None,
                        None,
                        f"subject {sid}: body weight (kg) must be given and constant",
                    )
                )
                continue
            cov[weight_cov.name] = float(w[0])
        base = {"ID": sid, **cov}
        for start, amount, r in infusions(t, dt, basal):
            records.append(base | {"TIME": start, "AMT": amount, "EVID": 1, "CMT": insulin_cmt, "RATE": r})
        for j in np.flatnonzero(bolus > 1e-9):
            records.append(
                base | {"TIME": t[j], "AMT": round(float(bolus[j]), 6), "EVID": 1, "CMT": insulin_cmt, "RATE": 0.0}
            )
        for j in np.flatnonzero(grams > 1e-9):
            records.append(
                base | {"TIME": t[j], "AMT": round(float(grams[j]), 6), "EVID": 1, "CMT": meal_cmt, "RATE": 0.0}
            )
        if cgm is not None:
            keep = np.isfinite(cgm[idx])
            if cgm_every is not None:
                keep &= np.isclose(np.remainder(t + 1e-6, cgm_every), 0.0, atol=1e-4)
            low, high = (-np.inf, np.inf) if cgm_limits is None else cgm_limits
            for j in np.flatnonzero(keep):
                value = float(cgm[idx][j])
                cens = 1 if value <= low else (-1 if value >= high else 0)  # beyond the sensor's range: M3
                value = low if cens == 1 else (high if cens == -1 else value)
                records.append(base | {"TIME": t[j], "DV": value, "EVID": 0, "CMT": glucose_cmt, "CENS": cens})
    if problems:
        return None
    frame = pd.DataFrame.from_records(records)
    for name, default in (("DV", np.nan), ("AMT", 0.0), ("RATE", 0.0), ("CENS", 0)):
        frame[name] = frame[name].fillna(default) if name in frame else default
    frame["MDV"] = frame["EVID"]
    frame["_id"] = pd.Categorical(frame["ID"], categories=list(uniques), ordered=True)
    frame = frame.sort_values(["_id", "TIME", "EVID"], kind="stable").drop(columns=["_id"])
    frame["CENS"] = frame["CENS"].astype(int)
    if not frame["CENS"].any():
        frame = frame.drop(columns=["CENS"])
    lead = ["ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE"]
    return frame[lead + [c for c in frame.columns if c not in lead]].reset_index(drop=True)
