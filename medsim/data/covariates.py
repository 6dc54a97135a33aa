"""Which extra columns become subject covariates, and their per-subject values.

Rules
-----
* ``covariates=None`` (automatic): every extra column (not a reserved NONMEM column) that is
  numeric, complete and constant within each subject is a covariate. Any other extra column is
  ignored, and a notice says which and why (text, missing cells, or a value that changes within
  a subject), so nothing is dropped silently.
* ``covariates=[...]`` (explicit): exactly these columns; a missing column, a text cell, a
  missing or non-finite cell is a problem. The other extra columns are ignored with a notice.
* ``constant_covariates``: columns that must not change within a subject (a change is a
  problem naming the row). ``None`` means all explicitly listed covariates. A listed covariate
  that is not declared constant and does change is reduced to its baseline value (the
  subject's first record) and a notice names the subjects.
* Columns a model needs (``required``) are checked as if listed explicitly and constant.
* A value outside the range of :mod:`medsim.data.limits` is a problem in a checked covariate
  and a reason to ignore an automatic one (with a notice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsim.data.columns import RESERVED
from medsim.data.limits import RANGE_TEXT, beyond_limits
from medsim.data.parse import Parsed, parse_cells
from medsim.data.report import Notice, format_rows
from medsim.data.tablefile import column_cells


@dataclass(frozen=True)
class CovariateValues:
    """Covariates kept: names in file order and each subject's (baseline) value.

    Attributes
    ----------
    names : tuple of str
    per_subject : dict name -> (S,) float64
        Value on the first record of each subject (subjects in order of first appearance).
    """

    names: tuple[str, ...]
    per_subject: dict[str, np.ndarray]


def _first_per_subject(values: np.ndarray, subject: np.ndarray, n_subjects: int) -> np.ndarray:
    out = np.full(n_subjects, np.nan)
    keep = subject >= 0
    # Assigning in reverse record order leaves each subject's first record as the value.
    out[subject[keep][::-1]] = values[keep][::-1]
    return out


def select_covariates(
    p: Parsed,
    subject: np.ndarray,
    n_subjects: int,
    *,
    covariates: Sequence[str] | None = None,
    constant_covariates: Sequence[str] | None = None,
    required: Sequence[str] = (),
    required_by: str = "",
) -> CovariateValues:
    """Apply the covariate rules (module docstring) to ``p``; problems and notices go to ``p``.

    Parameters
    ----------
    p : Parsed
    subject : (n,) int64
        Subject index of each record (-1 for ignored lines).
    n_subjects : int
    covariates, constant_covariates : sequence of str, optional
    required : sequence of str
        Covariates a model needs; ``required_by`` names the model in messages.

    Raises
    ------
    ValueError
        If ``covariates`` or ``constant_covariates`` names a reserved column (e.g. AMT).
    """
    reserved = {c.lower() for c in RESERVED}
    misused = [c for c in (*(covariates or ()), *(constant_covariates or ())) if str(c).lower() in reserved]
    if misused:
        raise ValueError(
            f"covariates and constant_covariates name covariate columns; {misused} are reserved NONMEM columns "
            f"({', '.join(RESERVED)})"
        )
    extra = [p.columns.names[h] for h in p.raw.header if h in p.columns.names]
    extra = [name for name in dict.fromkeys(extra) if name not in RESERVED]
    explicit = list(covariates) if covariates is not None else None
    constant = set(constant_covariates) if constant_covariates is not None else set(explicit or ())
    constant |= set(required)
    base = list(explicit) if explicit is not None else list(extra)
    wanted = list(dict.fromkeys([*base, *required, *sorted(constant - set(base))]))
    strict = set(explicit or ()) | constant
    active = p.active & (subject >= 0)

    kept: list[str] = []
    per_subject: dict[str, np.ndarray] = {}
    for name in wanted:
        if not p.columns.has(name):
            who = f" (needed by model {required_by})" if name in required and required_by else ""
            p.flag_at_header(name, f"covariate column {name}{who} is missing; expected a column named {name}")
            continue
        cells = parse_cells(column_cells(p.raw, p.position(name)))
        values = cells.values
        bad = active & cells.bad
        missing = active & cells.missing
        infinite = active & ~cells.missing & ~cells.bad & ~np.isfinite(values)
        extreme = active & ~cells.missing & ~cells.bad & beyond_limits(values)
        baseline = _first_per_subject(
            np.where(active & ~extreme, values, np.nan), np.where(active, subject, -1), n_subjects
        )
        first = np.append(baseline, np.nan)[subject]  # subject -1 (ignored line) -> NaN
        changes = active & ~bad & ~missing & ~infinite & ~extreme & (values != first) & np.isfinite(first)
        if name in strict:
            p.flag(bad, name, f"not a number; expected a numeric value of covariate {name}")
            p.flag(missing, name, f"covariate {name} is missing; expected a value on every record")
            p.flag(infinite, name, f"not finite; expected a finite value of covariate {name}")
            p.flag(
                extreme,
                name,
                f"covariate {name} is outside the range medsim computes with (float32); expected {RANGE_TEXT}",
            )
            if name in constant:
                first_change = _first_in_group(changes, subject)
                p.flag(
                    first_change,
                    name,
                    lambda i, name=name, first=first: (
                        f"covariate {name} changes within subject {p.ids[i]} (first value {first[i]:g}); "
                        "expected one value per subject (declared constant)"
                    ),
                )
            elif changes.any():
                varying = sorted({p.ids[i] for i in np.flatnonzero(changes)})
                p.notices.append(
                    Notice(
                        f"covariate changes within subject{'s' if len(varying) > 1 else ''} "
                        f"{format_rows(varying)}; the baseline (first-record) value is used",
                        tuple(int(r) for r in p.rows[changes]),
                        p.columns.label(name),
                    )
                )
        else:
            reason = None
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                reason = f"it holds text (e.g. {p.text(name, i)!r} on row {p.rows[i]})"
            elif (missing | infinite).any():
                reason = f"it has missing or non-finite values (rows {format_rows(p.rows[missing | infinite])})"
            elif extreme.any():
                i = int(np.flatnonzero(extreme)[0])
                reason = f"it holds {p.text(name, i)!r} on row {p.rows[i]}, outside {RANGE_TEXT}"
            elif changes.any():
                reason = f"it changes within subjects (first on row {p.rows[np.flatnonzero(changes)[0]]})"
            if reason is not None:
                p.notices.append(
                    Notice(
                        f"column ignored: {reason}, so it is not a time-constant covariate; pass "
                        f"covariates=[..., {name!r}] to have it checked, or constant_covariates to require it",
                        (),
                        p.columns.label(name),
                    )
                )
                continue
        kept.append(name)
        per_subject[name] = baseline
    if explicit is not None:
        unused = [name for name in extra if name not in wanted]
        if unused:
            p.notices.append(Notice(f"columns not listed in covariates= are ignored: {', '.join(unused)}"))
    return CovariateValues(tuple(kept), per_subject)


def _first_in_group(mask: np.ndarray, group: np.ndarray) -> np.ndarray:
    """True on the first ``True`` of ``mask`` within each group."""
    out = np.zeros_like(mask)
    idx = np.flatnonzero(mask)
    if idx.size:
        _, first = np.unique(group[idx], return_index=True)
        out[idx[first]] = True
    return out
