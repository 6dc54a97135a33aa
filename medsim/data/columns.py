"""Event-table column names: the canonical (NONMEM) set, aliases, and how file headers map to it.

Canonical columns
-----------------
====== ======================================================================================
ID     subject identifier (numbers or text; whole numbers are compared as numbers, so ``01`` = ``1``,
       but each subject must be written one way: ``02`` and ``2`` in one table is an error)
TIME   time of the record, non-decreasing within a subject, in the cohort's time unit
DV     dependent variable (the measurement) on observation records
AMT    dose amount on dose records
EVID   0 observation, 1 dose, 2 other event (ignored), 3/4 reset (unsupported)
CMT    compartment number (dosed or observed); the model maps it to a state / observable
MDV    1 = missing dependent variable (an EVID 0 record with MDV 1 is ignored)
RATE   0 bolus, > 0 zero-order infusion rate (amount per time unit); -1/-2 unsupported
ADDL   number of additional doses, each ``II`` after the previous one
II     interdose interval for ``ADDL``
SS     steady-state flag (unsupported: any non-zero value is an error)
DUR    infusion duration (nlmixr2 ``dur``, Monolix ``tinf``); RATE = AMT / DUR
CENS   censoring flag (BLQ): 0 measured, 1 below the lower limit in DV, -1 above the upper limit in
       DV (M3 likelihood), see :mod:`medsim.data.validate`
LIMIT  second censoring limit (interval censoring); not supported, ignored with a notice
C      NONMEM comment column: records whose C is ``C`` or ``#`` are ignored
====== ======================================================================================

How headers are matched
-----------------------
1. ``column_map`` entries first: ``{"Subject": "ID", "conc": "DV", "weight": "WT"}``. Keys are
   matched to file headers case-insensitively; a value that is not a canonical name renames a
   covariate column.
2. Otherwise a header equal to a canonical name ignoring case is that column, which covers the
   lower-case nlmixr2 / Pumas / Monolix headers ``id, time, dv, amt, evid, cmt, mdv, rate, addl,
   ii, ss``.
3. Known aliases, ignoring case: ``dur``/``tinf`` → DUR, ``cens``/``blq`` → CENS,
   ``limit`` → LIMIT.
4. Every other column is a covariate candidate (see :func:`medsim.data.read_event_table`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from medsim.data.report import Notice, Problem

CANONICAL: tuple[str, ...] = ("ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE")
"""The columns :meth:`medsim.data.Cohort.to_event_table` writes, in order."""

RESERVED: tuple[str, ...] = (*CANONICAL, "ADDL", "II", "SS", "DUR", "CENS", "LIMIT", "C")
"""Every column with a fixed meaning; all others are covariate candidates."""

REQUIRED: tuple[str, ...] = ("ID", "TIME", "DV")

ALIASES: Mapping[str, str] = {"dur": "DUR", "tinf": "DUR", "cens": "CENS", "blq": "CENS", "limit": "LIMIT"}

_WHAT: Mapping[str, str] = {
    "ID": "the subject identifier",
    "TIME": "the time of each record",
    "DV": "the measured value on observation records",
}


@dataclass(frozen=True)
class ColumnResolution:
    """How the file's columns map to names.

    Attributes
    ----------
    names : dict
        File header -> name used by medsim (canonical name or covariate name).
    file_name : dict
        Canonical/covariate name -> header as written in the file (for messages).
    problems, notices : tuple
        Header problems (row 1) and notices about unused ``column_map`` entries.
    """

    names: dict[str, str]
    file_name: dict[str, str]
    problems: tuple[Problem, ...]
    notices: tuple[Notice, ...]

    def has(self, name: str) -> bool:
        return name in self.file_name

    def label(self, name: str) -> str:
        """The column as the user wrote it."""
        return self.file_name.get(name, name)


def resolve_columns(header: Sequence[str], column_map: Mapping[str, str] | None = None) -> ColumnResolution:
    """Map file headers to canonical / covariate names (rules in the module docstring).

    Parameters
    ----------
    header : sequence of str
        Column names as read from the file, in order.
    column_map : mapping, optional
        Extra header -> name entries (header matched case-insensitively).

    Returns
    -------
    ColumnResolution
    """
    user = {str(k).strip().lower(): str(v).strip() for k, v in (column_map or {}).items()}
    canonical = {c.lower(): c for c in RESERVED}
    problems: list[Problem] = []
    names: dict[str, str] = {}
    first_seen: dict[str, tuple[int, str]] = {}
    for position, raw in enumerate(header, start=1):
        text = str(raw).strip()
        if not text:
            problems.append(
                Problem(1, f"#{position}", "", f"column {position} has no name; expected a header on row 1")
            )
            continue
        key = text.lower()
        target = user.get(key) or ALIASES.get(key) or canonical.get(key) or text
        target = canonical.get(target.lower(), target)
        if target in first_seen:
            other_pos, other = first_seen[target]
            problems.append(
                Problem(
                    1,
                    text,
                    text,
                    f"columns {other!r} (column {other_pos}) and {text!r} (column {position}) both mean "
                    f"{target}; expected one column per name (drop one or rename it via column_map)",
                )
            )
            continue
        first_seen[target] = (position, text)
        names[text] = target
    file_name = {target: text for target, (_, text) in first_seen.items()}
    separator = next((sep for sep in (";", "\t", " ") if len(header) == 1 and sep in str(header[0])), None)
    for name in REQUIRED:
        if name not in file_name:
            hint = f" (found {', '.join(map(repr, header))}; map yours with column_map={{'yourname': '{name}'}})"
            if separator is not None:
                hint = f" (the header looks separated by {separator!r}; expected comma-separated values)"
            problems.append(Problem(1, name, None, f"required column {name} ({_WHAT[name]}) is missing{hint}"))
    headers_lower = {str(h).strip().lower() for h in header}
    notices = tuple(
        Notice(f"column_map entry {k!r} -> {v!r} matches no column of the table")
        for k, v in (column_map or {}).items()
        if str(k).strip().lower() not in headers_lower
    )
    return ColumnResolution(names, file_name, tuple(problems), notices)
