"""Reading one safety bound of a spec: ``"conc<=20"`` or a table/object, and the spec's error type.

Split from :mod:`medsim.policies.spec` (which re-exports :class:`SpecError` and
:func:`parse_bound`); ``medsim simulate --bound`` and ``medsim fit --bound`` use the same parser.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from medsim.simulate.types import Bound

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOUND_RE = re.compile(rf"^\s*([A-Za-z_]\w*)\s*(<=|>=|<|>)\s*({_NUMBER})\s*$")
_BOUND_KEYS = ("observable", "upper", "lower", "value", "side", "name")
_OBSERVABLE_RE = re.compile(r"^[A-Za-z_]\w*$")


class SpecError(ValueError):
    """A safety specification could not be read or does not fit the model.

    The message names the source (file or ``inline``), the offending key and its value.
    """


def parse_bound(text: str, *, where: str = "inline") -> Bound:
    """Parse ``"conc<=20"`` / ``"glucose_mg_dL>=70"`` into a :class:`Bound`.

    ``<`` and ``>`` are read as ``<=`` and ``>=``: for a continuous trajectory the event of
    touching the bound has probability zero, so the two are the same constraint.
    """
    m = _BOUND_RE.match(text)
    if m is None:
        raise SpecError(
            f"{where}: key 'bounds' value {text!r} is not a bound; expected OBSERVABLE<=VALUE or OBSERVABLE>=VALUE"
        )
    name, op, value = m.groups()
    if not math.isfinite(float(value)):
        raise SpecError(f"{where}: key 'bounds' value {text!r}: the bound must be a finite number, got {value}")
    return Bound(name, float(value), "upper" if op.startswith("<") else "lower")


def _bound_from_entry(entry: Any, *, where: str) -> Bound:
    if isinstance(entry, str):
        return parse_bound(entry, where=where)
    if not isinstance(entry, Mapping):
        raise SpecError(f"{where}: key 'bounds' entry {entry!r} must be a string or a table/object")
    unknown = sorted(str(k) for k in entry if k not in _BOUND_KEYS)
    if unknown:
        raise SpecError(
            f"{where}: key 'bounds' entry {dict(entry)!r} has unknown key(s) {unknown}; valid keys are "
            f"{list(_BOUND_KEYS)}"
        )
    obs = entry.get("observable")
    if not (isinstance(obs, str) and _OBSERVABLE_RE.match(obs)):
        raise SpecError(f"{where}: key 'bounds' entry {dict(entry)!r} needs an 'observable' name")
    given = [k for k in ("upper", "lower", "value") if k in entry]
    if len(given) != 1:
        raise SpecError(
            f"{where}: key 'bounds' entry {dict(entry)!r} needs exactly one of 'upper', 'lower' or 'value' (+ 'side')"
        )
    key = given[0]
    if key != "value" and "side" in entry:
        raise SpecError(f"{where}: key 'bounds' entry {dict(entry)!r}: 'side' goes with 'value', not with {key!r}")
    side = entry.get("side", "upper") if key == "value" else key
    if side not in ("upper", "lower"):
        raise SpecError(f"{where}: key 'bounds' entry {dict(entry)!r}: 'side' must be 'upper' or 'lower'")
    value = _number(entry[key], where=where, key=f"bounds.{obs}.{key}")
    bound = Bound(obs, value, side)
    if "name" in entry:
        # The name is what reports show; one that disagrees with the bound would mislabel every
        # figure and verdict, so it must describe the same bound (e.g. "conc >= 5" for conc>=5).
        given_name = entry["name"]
        same = False
        if isinstance(given_name, str) and _BOUND_RE.match(given_name):
            try:
                same = parse_bound(given_name, where=where) == bound
            except SpecError:
                same = False
        if not same:
            raise SpecError(
                f"{where}: key 'bounds' entry {dict(entry)!r}: 'name' {given_name!r} does not describe the bound "
                f"{bound.name!r}; leave 'name' out, it is derived from the bound"
            )
    return bound


def _number(value: Any, *, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SpecError(f"{where}: key {key!r} must be a number, got {value!r}")
    try:
        out = float(value)
    except (ValueError, OverflowError):
        raise SpecError(f"{where}: key {key!r} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise SpecError(f"{where}: key {key!r} must be finite, got {value!r}")
    return out
