"""Columns of a tidy T1D table and their units: what each column is, and in which unit.

A tidy (long) T1D table has one row per time point and subject, as written by simglucose
(``patient, time_min, bg_true, cgm, cho_g_per_min, insulin_U_per_min``) or exported from a pump
and CGM. Unit confusion (grams against grams per minute, U/min against U/h) is the most frequent
error with such tables, so every quantity needs an explicit unit: either in the column name as a
suffix (``cho_g_per_min``, ``basal_U_per_h``, ``bolus_U``, ``time_min``) or given for the
column (``units={"insulin": "U/min"}``, ``medsim import-t1d --unit insulin=U/min``). A column
whose unit is neither is an error naming it.

======== =============================================== =======================================
role     names (case-insensitive; ``<u>`` a unit suffix)  units
======== =============================================== =======================================
subject  ``patient``, ``id``, ``subject``                —
time     ``time<u>``, ``t<u>``                           min, h
cgm      ``cgm<u>``, ``glucose<u>``, ``sensor<u>``       mg/dL (default), mmol/L
carbs    ``cho<u>``, ``carbs<u>``, ``meal<u>``           g (per row), g/min (rate over the row)
insulin  ``insulin<u>`` (basal and boluses together)     U (per row), U/min, U/h
basal    ``basal<u>``                                    U/min, U/h
bolus    ``bolus<u>``                                    U
weight   ``weight<u>``, ``bw<u>``                        kg
BASAL    ``BASAL`` (covariate, U/h, checked against the recorded basal)
ignored  ``bg_true``, ``bg``, ``time`` stamps, anything else (listed in a notice)
======== =============================================== =======================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from medsim.data.report import Notice, Problem

#: Canonical units per role; the first is the default where a default is safe (only CGM glucose).
ROLE_UNITS: Mapping[str, tuple[str, ...]] = {
    "time": ("min", "h"),
    "cgm": ("mg/dL", "mmol/L"),
    "carbs": ("g", "g/min"),
    "insulin": ("U", "U/min", "U/h"),
    "basal": ("U/min", "U/h"),
    "bolus": ("U",),
    "weight": ("kg",),
}

_PREFIXES: Mapping[str, tuple[str, ...]] = {
    "time": ("time", "t"),
    "cgm": ("cgm", "glucose", "sensor"),
    "carbs": ("cho", "carbs", "carb", "meal"),
    "insulin": ("insulin",),
    "basal": ("basal",),
    "bolus": ("bolus",),
    "weight": ("weight", "bw"),
}
_SUBJECT = ("patient", "id", "subject")

#: Unit spellings (lower case, ``_`` or ``/`` separated) -> canonical unit.
_UNIT_SPELLINGS: Mapping[str, str] = {
    "min": "min",
    "minutes": "min",
    "h": "h",
    "hr": "h",
    "hours": "h",
    "mg_dl": "mg/dL",
    "mgdl": "mg/dL",
    "mmol_l": "mmol/L",
    "mmol": "mmol/L",
    "g": "g",
    "grams": "g",
    "g_per_min": "g/min",
    "g_min": "g/min",
    "u": "U",
    "units": "U",
    "u_per_min": "U/min",
    "u_min": "U/min",
    "u_per_h": "U/h",
    "u_per_hr": "U/h",
    "u_h": "U/h",
    "u_hr": "U/h",
    "kg": "kg",
}


def canonical_unit(text: str) -> str | None:
    """``"U/h"``, ``"u_per_hr"``, ``"g per min"`` -> canonical unit, or None if unknown."""
    key = re.sub(r"[\s/]+", "_", str(text).strip().lower()).replace("_per_", "_per_")
    key = key.replace("/", "_")
    if key in _UNIT_SPELLINGS:
        return _UNIT_SPELLINGS[key]
    return _UNIT_SPELLINGS.get(key.replace("_per_", "_"))


@dataclass(frozen=True)
class T1DColumn:
    """One recognised column: its role, its header in the file and its unit."""

    role: str
    header: str
    unit: str


@dataclass(frozen=True)
class T1DColumns:
    """The columns of a tidy T1D table, by role.

    Attributes
    ----------
    subject, time, cgm, carbs, insulin, basal, bolus, weight, basal_covariate : T1DColumn or None
    ignored : tuple of str
        Headers that play no role (reported as a notice).
    """

    subject: T1DColumn | None
    time: T1DColumn | None
    cgm: T1DColumn | None
    carbs: T1DColumn | None
    insulin: T1DColumn | None
    basal: T1DColumn | None
    bolus: T1DColumn | None
    weight: T1DColumn | None
    basal_covariate: T1DColumn | None
    ignored: tuple[str, ...]


def _split(header: str) -> tuple[str, str] | None:
    """``"insulin_U_per_min"`` -> ``("insulin", "u_per_min")``; ``"cgm"`` -> ``("cgm", "")``."""
    low = header.strip().lower()
    for role, prefixes in _PREFIXES.items():
        for prefix in prefixes:
            if low == prefix:
                return role, ""
            for sep in ("_", " ", "[", "("):
                if low.startswith(prefix + sep):
                    return role, low[len(prefix) + 1 :].strip(" _[]()")
    return None


def resolve_t1d_columns(
    header: Sequence[str], units: Mapping[str, str] | None = None
) -> tuple[T1DColumns, list[Problem], list[Notice]]:
    """Map the headers of a tidy T1D table to roles and units (rules in the module docstring).

    Parameters
    ----------
    header : sequence of str
    units : mapping column -> unit, optional
        Units of columns whose name carries none (keys match headers case-insensitively), or
        role names (``"insulin": "U/min"``).

    Returns
    -------
    columns, problems, notices
        Problems are on row 1 (the header), naming the column and the units allowed.
    """
    given = {str(k).strip().lower(): str(v) for k, v in (units or {}).items()}
    problems: list[Problem] = []
    notices: list[Notice] = []
    found: dict[str, T1DColumn] = {}
    ignored: list[str] = []
    used_keys: set[str] = set()
    for raw in header:
        h = str(raw).strip()
        low = h.lower()
        if low in _SUBJECT and "subject" not in found:
            found["subject"] = T1DColumn("subject", h, "")
            continue
        if h == "BASAL" or low in ("basal_covariate",):
            found["basal_covariate"] = T1DColumn("basal_covariate", h, "U/h")
            continue
        split = _split(h)
        if split is None or (split[0] == "cgm" and low in ("bg_true", "bg")):
            ignored.append(h)
            continue
        role, suffix = split
        allowed = ROLE_UNITS[role]
        option = given.get(low, given.get(role))
        if option is not None:
            used_keys.add(low if low in given else role)
        unit_text = option if option is not None else suffix
        if role == "time" and not unit_text:
            if low == "t":
                ignored.append(h)
                continue
        unit = canonical_unit(unit_text) if unit_text else None
        if unit is None and not unit_text and role == "cgm":
            unit = "mg/dL"  # CGM glucose is mg/dL unless said otherwise; magnitudes are checked
        if unit is None:
            what = f"unit {unit_text!r} is not understood" if unit_text else "the column name carries no unit"
            problems.append(
                Problem(
                    1,
                    h,
                    h,
                    f"{what}; expected the {role} in one of {', '.join(allowed)}, named in the column "
                    f"(e.g. {_example(role)}) or given as an option (units={{{h!r}: {allowed[-1]!r}}}, "
                    f"--unit {h}={allowed[-1]})",
                )
            )
            continue
        if unit not in allowed:
            problems.append(
                Problem(1, h, unit, f"unit {unit} does not fit a {role} column; expected one of {', '.join(allowed)}")
            )
            continue
        if role in found:
            problems.append(
                Problem(
                    1,
                    h,
                    h,
                    f"a second {role} column (the first is {found[role].header!r}); expected one per quantity",
                )
            )
            continue
        found[role] = T1DColumn(role, h, unit)
    for key in given.keys() - used_keys:
        notices.append(Notice(f"unit given for {key!r}, which is not a column of the table with a unit to set"))
    if "subject" not in found:
        problems.append(Problem(1, None, None, f"no subject column; expected one of {', '.join(_SUBJECT)}"))
    if "time" not in found and not any(p.column and _split(p.column) == ("time", "") for p in problems):
        problems.append(Problem(1, None, None, "no time column; expected time_min or time_h (or time with a unit)"))
    if "insulin" in found and ("basal" in found or "bolus" in found):
        problems.append(
            Problem(
                1,
                found["insulin"].header,
                None,
                "both a total insulin column and basal/bolus columns; expected either total insulin (basal and "
                "boluses together) or separate basal and bolus columns",
            )
        )
    if ignored:
        notices.append(Notice(f"columns not used: {', '.join(ignored)}"))
    roles = (
        "subject",
        "time",
        "cgm",
        "carbs",
        "insulin",
        "basal",
        "bolus",
        "weight",
        "basal_covariate",
    )
    return T1DColumns(*(found.get(r) for r in roles), tuple(ignored)), problems, notices


def _example(role: str) -> str:
    return {
        "time": "time_min",
        "cgm": "cgm_mg_dL",
        "carbs": "cho_g or cho_g_per_min",
        "insulin": "insulin_U_per_min",
        "basal": "basal_U_per_h",
        "bolus": "bolus_U",
        "weight": "weight_kg",
    }[role]
