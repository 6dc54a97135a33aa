"""Time units: the one table of the durations medsim reads and converts (``min``, ``h``, ``d``).

Model time units, spec horizons and policy intervals all go through :func:`convert_time`, so a
spelling such as ``hours`` or ``days`` means the same everywhere.
"""

from __future__ import annotations

#: Minutes per canonical unit.
MINUTES = {"min": 1.0, "h": 60.0, "d": 1440.0}
#: Spellings users write, mapped to the canonical unit.
ALIASES = {
    alias: unit
    for unit, aliases in {
        "min": ("min", "mins", "minute", "minutes", "m"),
        "h": ("h", "hr", "hrs", "hour", "hours"),
        "d": ("d", "day", "days"),
    }.items()
    for alias in aliases
}


class UnknownTimeUnitError(ValueError):
    """A time unit that is none of ``min``, ``h``, ``d`` (or their aliases)."""


def canonical_unit(unit: str) -> str:
    """``"hours"`` -> ``"h"``; raises :class:`UnknownTimeUnitError` naming the unit."""
    canon = ALIASES.get(str(unit).strip().lower())
    if canon is None:
        raise UnknownTimeUnitError(f"unknown time unit {unit!r}; expected one of min, h, d")
    return canon


def convert_time(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` (a duration in ``from_unit``) in ``to_unit``."""
    return float(value) * MINUTES[canonical_unit(from_unit)] / MINUTES[canonical_unit(to_unit)]


def units_per_hour(time_unit: str) -> float:
    """How many ``time_unit`` make one hour (``"min"`` -> 60, ``"h"`` -> 1, ``"d"`` -> 1/24)."""
    return convert_time(1.0, "h", time_unit)
