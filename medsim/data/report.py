"""What validation finds: problems (the table cannot be used), notices (rows or columns ignored).

Row numbers follow one convention everywhere, stated in :data:`ROW_CONVENTION`: rows are
numbered as a spreadsheet or a text editor shows them, so the header is row 1 and the first
record is row 2. For Parquet files and DataFrames the record at position ``k`` (0-based) is
row ``k + 2``, so a table read from CSV and the same table as a DataFrame report the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

ROW_CONVENTION = "rows are numbered as in a spreadsheet or text editor: the header is row 1, the first record row 2"

#: At most this many problems are spelled out in a :class:`CohortFormatError` message; the
#: exception's ``report`` holds all of them.
MAX_LISTED_PROBLEMS = 200


class CohortWarning(UserWarning):
    """Category of the warnings issued when records or columns of an event table are ignored."""


@dataclass(frozen=True)
class Problem:
    """One reason an event table cannot be used.

    Attributes
    ----------
    row : int or None
        Row in :data:`ROW_CONVENTION` numbering (1 = header); ``None`` for problems that concern
        no single row (e.g. a units mismatch with a model).
    column : str or None
        The column as named in the file (before any mapping), or ``None``.
    value : str or None
        The offending cell as text, or ``None`` when there is no single offending cell.
    message : str
        What is wrong and what was expected.
    """

    row: int | None
    column: str | None
    value: str | None
    message: str

    def format(self, source: str = "") -> str:
        """One line naming the file, row, column and value, then the message."""
        parts = [source] if source else []
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"column {self.column}")
        where = ", ".join(parts)
        value = "" if self.value is None else f"value {self.value!r}: "
        return f"{where}: {value}{self.message}" if where else f"{value}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "value": self.value, "message": self.message}


@dataclass(frozen=True)
class Notice:
    """Something the reader ignored or assumed, with the rows concerned (a warning, not an error).

    Attributes
    ----------
    message : str
        What was ignored or assumed, and what to do if that is not intended.
    rows : tuple of int
        Rows concerned (:data:`ROW_CONVENTION` numbering); empty when it concerns a column.
    column : str or None
        The column concerned, as named in the file.
    """

    message: str
    rows: tuple[int, ...] = ()
    column: str | None = None

    def format(self, source: str = "") -> str:
        parts = [source] if source else []
        if self.column is not None:
            parts.append(f"column {self.column}")
        if self.rows:
            parts.append(f"{'row' if len(self.rows) == 1 else 'rows'} {format_rows(self.rows)}")
        where = ", ".join(parts)
        return f"{where}: {self.message}" if where else self.message

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "rows": list(self.rows), "column": self.column}


def format_rows(rows: Sequence[int], limit: int = 20) -> str:
    """``"4, 9, 17"``; long lists are cut after ``limit`` entries with the total count."""
    rows = list(rows)
    text = ", ".join(str(r) for r in rows[:limit])
    if len(rows) > limit:
        text += f", … ({len(rows)} rows in all)"
    return text


@dataclass(frozen=True)
class ValidationReport:
    """Result of checking an event table; never raised, always returned.

    Attributes
    ----------
    source : str
        File path, or ``"<DataFrame>"``.
    problems : tuple of Problem
        Everything that makes the table unusable; empty when the table is valid.
    notices : tuple of Notice
        Rows or columns ignored and defaults assumed.
    summary : mapping
        :meth:`medsim.data.Cohort.summary` when valid; otherwise what could be counted
        (``rows``, ``subjects``, ``columns``).
    """

    source: str
    problems: tuple[Problem, ...] = ()
    notices: tuple[Notice, ...] = ()
    summary: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def ok(self) -> bool:
        """True when the table has no problems (notices are allowed)."""
        return not self.problems

    @property
    def warnings(self) -> tuple[str, ...]:
        """The notices as formatted lines."""
        return tuple(n.format(self.source) for n in self.notices)

    def format(self, limit: int | None = None) -> str:
        """Numbered problems (at most ``limit``), then the notices, as plain text."""
        lines = []
        if self.problems:
            count = len(self.problems)
            lines.append(f"{self.source}: {count} problem{'s' if count != 1 else ''} ({ROW_CONVENTION})")
            shown = self.problems if limit is None else self.problems[:limit]
            lines += [f"  {i}. {p.format(self.source)}" for i, p in enumerate(shown, start=1)]
            if len(shown) < count:
                lines.append(
                    f"  … and {count - len(shown)} more; validate_event_table(...).problems or "
                    "`medsim validate --json` lists them all"
                )
        else:
            lines.append(f"{self.source}: valid")
        if self.notices:
            lines.append("warnings:")
            lines += [f"  - {n.format(self.source)}" for n in self.notices]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for ``medsim validate --json``)."""
        return {
            "source": self.source,
            "ok": self.ok,
            "row_numbering": ROW_CONVENTION,
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [n.to_dict() | {"text": n.format(self.source)} for n in self.notices],
            "summary": dict(self.summary),
        }


class CohortFormatError(ValueError):
    """An event table cannot be read as a cohort.

    The message lists the problems one per line, each naming the file, the row
    (:data:`ROW_CONVENTION`), the column, the offending value and what was expected; the full
    :class:`ValidationReport` is available as ``err.report``.
    """

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(report.format(limit=MAX_LISTED_PROBLEMS))

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.report.problems
