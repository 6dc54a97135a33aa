"""Safety specifications: which bounds must hold, over which horizon, with which chance level.

A :class:`SafetySpec` is what a chance-constraint verdict is judged against: named bounds on a
model's observables, the evaluation horizon, the chance level ``epsilon`` (the largest
acceptable probability that a patient leaves the safe set at any time over the horizon) and the
confidence ``1 - delta`` with which that claim must be supported. An optional efficacy target
range is carried along for the reports.

It is written in one of three ways::

    conc<=20,conc>=5;horizon=72h;epsilon=0.05;delta=0.05;target=10<=conc<=15     (inline)

    # spec.toml                                      // spec.json
    horizon = "72h"                                  {"horizon": "72h",
    epsilon = 0.05                                    "epsilon": 0.05, "delta": 0.05,
    delta = 0.05                                      "bounds": ["conc<=20",
    bounds = ["conc<=20", {observable = "conc",                 {"observable": "conc",
              lower = 5}]                                         "lower": 5}],
    target = "10<=conc<=15"                           "target": {"observable": "conc",
                                                                 "low": 10, "high": 15}}

Bound values are in the observable's unit; the horizon takes a unit suffix (``min``, ``h``,
``d``) or, without one, the model's time unit. :meth:`SafetySpec.validate` checks the spec
against a model and converts the horizon to the model's time unit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from medsim import units
from medsim.policies.spec_bounds import _NUMBER, _OBSERVABLE_RE, SpecError, _bound_from_entry, _number
from medsim.policies.spec_bounds import parse_bound as parse_bound  # re-exported: the spec's bound parser
from medsim.simulate.types import Bound
from medsim.units import UnknownTimeUnitError, canonical_unit

_TARGET_RE = re.compile(rf"^\s*({_NUMBER})\s*<=?\s*([A-Za-z_]\w*)\s*<=?\s*({_NUMBER})\s*$")
_HORIZON_RE = re.compile(rf"^\s*({_NUMBER})\s*([A-Za-z]*)\s*$")
_KEYS = ("bounds", "horizon", "from", "epsilon", "delta", "target", "time_unit", "rare", "rare_budget")
RARE_CHOICES = ("auto", "off", "ams", "subset", "is")
# Rare-event estimators that can run on medsim's closed loop (hashed per-interaction noise):
# splitting only (docs/rare_events.md).
CLOSED_LOOP_RARE = ("auto", "off", "ams")


@dataclass(frozen=True)
class TargetRange:
    """Efficacy target range ``low <= observable <= high`` (observable's unit)."""

    observable: str
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.low:g}<={self.observable}<={self.high:g}"


@dataclass(frozen=True)
class SafetySpec:
    """Bounds, horizon, chance level and confidence of a chance constraint.

    The constraint reads: P(a patient's trajectory leaves the safe set at any time in
    ``[0, horizon]``) <= ``epsilon``, to be shown with confidence ``1 - delta``.

    Attributes
    ----------
    bounds : tuple of Bound
        Safe set = intersection of the bounds (``J`` of them, in this order).
    horizon : float
        Evaluation horizon in ``time_unit``.
    time_unit : str or None
        ``"min"``, ``"h"`` or ``"d"``; ``None`` means the model's time unit (set by
        :meth:`validate`).
    epsilon : float
        Chance level in (0, 1).
    delta : float
        One minus the confidence, in (0, 1).
    target : TargetRange or None
        Optional efficacy target range.
    monitor_from : float
        Start of monitoring in ``time_unit`` (key ``from``, default 0): the bounds apply on
        ``[monitor_from, horizon]``, e.g. a therapeutic window that applies once a regimen has
        reached steady state. Monitoring starts at each patient's first interaction at or after
        ``monitor_from``; choose it on the policies' interaction grid (e.g. a dosing time).
    rare : str
        Rare-event follow-up (key ``rare``): ``"auto"`` (default: closed-loop splitting for a
        policy whose plain estimate saw fewer than
        :data:`medsim.policies.risk.rare.followup.MIN_VIOLATIONS` patients with a crossing), ``"off"``,
        or a method that is always used: ``"ams"`` (splitting), ``"subset"``, ``"is"`` (these two
        apply only to path problems written in JAX; :meth:`validate` rejects them for a model's
        closed loop).
    rare_budget : float or None
        Path-equivalents the rare-event follow-up may spend per policy (key ``rare_budget``;
        ``None``: :data:`medsim.policies.risk.rare.followup.DEFAULT_BUDGET`).
    source : str
        Where the spec came from (file path or ``"inline"``), for error messages and reports.
    """

    bounds: tuple[Bound, ...]
    horizon: float
    time_unit: str | None = None
    epsilon: float = 0.05
    delta: float = 0.05
    target: TargetRange | None = None
    source: str = "inline"
    monitor_from: float = 0.0
    rare: str = "auto"
    rare_budget: float | None = None

    def __post_init__(self) -> None:
        src = self.source
        if self.rare not in RARE_CHOICES:
            raise SpecError(f"{src}: key 'rare' must be one of {list(RARE_CHOICES)}, got {self.rare!r}")
        if self.rare_budget is not None and not (_finite(self.rare_budget) and self.rare_budget >= 100):
            raise SpecError(
                f"{src}: key 'rare_budget' must be a number of path-equivalents >= 100, got {self.rare_budget!r}"
            )
        if not self.bounds:
            raise SpecError(f"{src}: key 'bounds' is empty; give at least one bound such as 'conc<=20'")
        _check_open_unit(src, "epsilon", self.epsilon)
        _check_open_unit(src, "delta", self.delta)
        if not (math.isfinite(self.horizon) and self.horizon > 0):
            raise SpecError(f"{src}: key 'horizon' must be a positive, finite time, got {self.horizon!r}")
        if self.time_unit is not None and self.time_unit not in units.MINUTES:
            raise SpecError(f"{src}: key 'time_unit' must be one of {sorted(units.MINUTES)}, got {self.time_unit!r}")
        if not (math.isfinite(self.monitor_from) and 0.0 <= self.monitor_from < self.horizon):
            raise SpecError(
                f"{src}: key 'from' must be a time in [0, horizon), got {self.monitor_from!r}"
                f" (horizon {self.horizon!r})"
            )
        for b in self.bounds:
            if not isinstance(b, Bound):
                raise SpecError(f"{src}: key 'bounds' entry {b!r} is not a Bound")
            if b.name != derived_name(b):
                raise SpecError(
                    f"{src}: key 'bounds' entry named {b.name!r} is the bound {derived_name(b)!r}; a bound's "
                    "name is derived from its observable, side and value"
                )
        names = [b.name for b in self.bounds]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SpecError(f"{src}: key 'bounds' lists {dup} more than once")
        for obs in self.observables:
            low, high = _safe_interval(self.bounds, obs)
            if low[0] >= high[0]:
                raise SpecError(
                    f"{src}: key 'bounds' leaves no safe value of {obs!r}: {low[1]} and {high[1]} cannot both "
                    "hold (every patient would violate them)"
                )
        if self.target is not None:
            _check_target(src, self.target, self.bounds)

    @property
    def confidence(self) -> float:
        """``1 - delta``."""
        return 1.0 - self.delta

    @property
    def observables(self) -> tuple[str, ...]:
        """Observables the bounds refer to, in first-appearance order."""
        return tuple(dict.fromkeys(b.observable for b in self.bounds))

    def horizon_in(self, unit: str) -> float:
        """The horizon converted to ``unit`` (``"min"``, ``"h"``, ``"d"``).

        Raises
        ------
        SpecError
            If the spec has no time unit yet or ``unit`` is not a known time unit.
        """
        if self.time_unit is None:
            raise SpecError(f"{self.source}: key 'horizon' has no unit; validate the spec against a model first")
        return convert_time(self.horizon, self.time_unit, unit, where=f"{self.source}: key 'horizon'")

    def validate(self, model: Any) -> SafetySpec:
        """Check the spec against a physiology model and express the horizon in its time unit.

        Parameters
        ----------
        model : PhysiologyModel
            Any object with ``name``, ``observable_names`` and ``time_unit``.

        Returns
        -------
        SafetySpec
            A copy whose ``time_unit`` is the model's and whose ``horizon`` is converted to it.

        Raises
        ------
        SpecError
            Unknown observable (the message lists the model's observables), a target range on
            an unknown observable, or a horizon unit the model's unit cannot be converted to.
        """
        known = tuple(model.observable_names)
        if self.rare not in CLOSED_LOOP_RARE:
            raise SpecError(
                f"{self.source}: key 'rare' value {self.rare!r} cannot run on model {model.name!r}'s closed loop: "
                "the loop draws its noise from hashed per-interaction streams, which only splitting can use; "
                "use rare=ams or rare=auto (subset simulation and importance sampling apply to path problems "
                "written in JAX, see docs/rare_events.md)"
            )
        for b in self.bounds:
            if b.observable not in known:
                raise SpecError(
                    f"{self.source}: key 'bounds' value {b.name!r}: model {model.name!r} has no observable "
                    f"{b.observable!r}; its observables are {list(known)}"
                )
        if self.target is not None and self.target.observable not in known:
            raise SpecError(
                f"{self.source}: key 'target' value {str(self.target)!r}: model {model.name!r} has no observable "
                f"{self.target.observable!r}; its observables are {list(known)}"
            )
        model_unit = _canonical_unit(model.time_unit, where=f"model {model.name!r} time_unit")
        unit = model_unit if self.time_unit is None else self.time_unit
        horizon = convert_time(self.horizon, unit, model_unit, where=f"{self.source}: key 'horizon'")
        start = convert_time(self.monitor_from, unit, model_unit, where=f"{self.source}: key 'from'")
        return replace(self, horizon=horizon, monitor_from=start, time_unit=model_unit)

    def to_dict(self) -> dict:
        """JSON-serialisable form (bounds as strings; round-trips through :func:`spec_from_mapping`)."""
        out: dict[str, Any] = {
            "bounds": [_bound_text(b) for b in self.bounds],
            "horizon": self.horizon if self.time_unit is None else f"{_exact(self.horizon)}{self.time_unit}",
            "epsilon": self.epsilon,
            "delta": self.delta,
            "source": self.source,
        }
        if self.target is not None:
            t = self.target
            out["target"] = f"{_exact(t.low)}<={t.observable}<={_exact(t.high)}"
        if self.monitor_from > 0:
            start = self.monitor_from
            out["from"] = start if self.time_unit is None else f"{_exact(start)}{self.time_unit}"
        if self.rare != "auto":
            out["rare"] = self.rare
        if self.rare_budget is not None:
            out["rare_budget"] = self.rare_budget
        return out

    def __str__(self) -> str:
        parts = [",".join(b.name for b in self.bounds)]
        parts.append(f"horizon={self.horizon:g}{self.time_unit or ''}")
        if self.monitor_from > 0:
            parts.append(f"from={self.monitor_from:g}{self.time_unit or ''}")
        parts.append(f"epsilon={self.epsilon:g}")
        parts.append(f"delta={self.delta:g}")
        if self.target is not None:
            parts.append(f"target={self.target}")
        if self.rare != "auto":
            parts.append(f"rare={self.rare}")
        if self.rare_budget is not None:
            parts.append(f"rare_budget={_exact(self.rare_budget)}")
        return ";".join(parts)


def _exact(value: float) -> str:
    """``f"{value:g}"`` where that reads back as ``value``, else the shortest exact form."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def _bound_text(bound: Bound) -> str:
    """The bound as text that parses back to the same value (its name, unless ``:g`` rounds it)."""
    return f"{bound.observable}{'<=' if bound.side == 'upper' else '>='}{_exact(bound.value)}"


def derived_name(bound: Bound) -> str:
    """The name a bound is shown under: ``observable<=value`` or ``observable>=value``."""
    return Bound(bound.observable, bound.value, bound.side).name


def _safe_interval(bounds: tuple[Bound, ...], observable: str) -> tuple[tuple[float, str], tuple[float, str]]:
    """Tightest ``(value, name)`` lower and upper bounds on ``observable`` (``-inf``/``inf`` if none)."""
    lows = [(b.value, b.name) for b in bounds if b.observable == observable and b.side == "lower"]
    highs = [(b.value, b.name) for b in bounds if b.observable == observable and b.side == "upper"]
    return max(lows, default=(-math.inf, "")), min(highs, default=(math.inf, ""))


def _check_target(src: str, target: TargetRange, bounds: tuple[Bound, ...]) -> None:
    if not (_OBSERVABLE_RE.match(str(target.observable)) and _finite(target.low) and _finite(target.high)):
        raise SpecError(f"{src}: key 'target' needs an observable name and finite low and high, got {target!r}")
    if not target.low < target.high:
        raise SpecError(f"{src}: key 'target' needs low < high, got {target}")
    (low, low_name), (high, high_name) = _safe_interval(bounds, target.observable)
    if target.high <= low or target.low >= high:
        limit = low_name if target.high <= low else high_name
        raise SpecError(f"{src}: key 'target' {str(target)!r} lies outside the safe set ({limit})")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------- units
def _canonical_unit(unit: str, *, where: str) -> str:
    try:
        return canonical_unit(unit)
    except UnknownTimeUnitError as err:
        raise SpecError(f"{where}: {err}") from None


def convert_time(value: float, from_unit: str, to_unit: str, *, where: str = "time") -> float:
    """Convert a duration between ``min``, ``h`` and ``d`` (aliases such as ``hours`` accepted)."""
    try:
        return units.convert_time(value, from_unit, to_unit)
    except UnknownTimeUnitError as err:
        raise SpecError(f"{where}: {err}") from None


def _check_open_unit(src: str, key: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise SpecError(f"{src}: key {key!r} must lie strictly between 0 and 1, got {value!r}")


# ---------------------------------------------------------------------------------------- parsing
def _horizon(value: Any, *, where: str, key: str = "horizon") -> tuple[float, str | None]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number(value, where=where, key=key), None
    m = _HORIZON_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise SpecError(f"{where}: key {key!r} value {value!r} is not a duration such as '72h', '3d' or '90min'")
    number, unit = m.groups()
    return float(number), (_canonical_unit(unit, where=f"{where}: key {key!r}") if unit else None)


def _target(value: Any, *, where: str) -> TargetRange:
    if isinstance(value, str):
        m = _TARGET_RE.match(value)
        if m is None:
            raise SpecError(f"{where}: key 'target' value {value!r} is not a range such as '10<=conc<=15'")
        low, obs, high = m.groups()
        return TargetRange(obs, float(low), float(high))
    if isinstance(value, Mapping) and set(value) == {"observable", "low", "high"}:
        if not (isinstance(value["observable"], str) and _OBSERVABLE_RE.match(value["observable"])):
            raise SpecError(f"{where}: key 'target' value {value!r} needs an observable name")
        return TargetRange(
            value["observable"],
            _number(value["low"], where=where, key="target.low"),
            _number(value["high"], where=where, key="target.high"),
        )
    raise SpecError(f"{where}: key 'target' value {value!r} must be '10<=conc<=15' or {{observable, low, high}}")


def spec_from_mapping(data: Mapping[str, Any], *, source: str = "inline") -> SafetySpec:
    """Build a :class:`SafetySpec` from a parsed JSON/TOML document.

    Raises
    ------
    SpecError
        Unknown or missing keys and malformed values, naming ``source``, the key and the value.
    """
    unknown = sorted(set(data) - set(_KEYS) - {"source"})
    if unknown:
        raise SpecError(f"{source}: unknown key(s) {unknown}; valid keys are {list(_KEYS)}")
    for key in ("bounds", "horizon"):
        if key not in data:
            raise SpecError(f"{source}: missing key {key!r}")
    raw_bounds = data["bounds"]
    if isinstance(raw_bounds, str | Mapping):
        raw_bounds = [raw_bounds]
    if not isinstance(raw_bounds, list | tuple):
        raise SpecError(f"{source}: key 'bounds' must be a list of bounds, got {raw_bounds!r}")
    bounds = tuple(_bound_from_entry(b, where=source) for b in raw_bounds)
    horizon, unit = _horizon(data["horizon"], where=source)
    if "time_unit" in data:
        if unit is not None:
            raise SpecError(f"{source}: key 'time_unit' given although 'horizon' {data['horizon']!r} carries a unit")
        unit = _canonical_unit(str(data["time_unit"]), where=f"{source}: key 'time_unit'")
    target = None if data.get("target") is None else _target(data["target"], where=source)
    start = 0.0
    if data.get("from") is not None:
        start, start_unit = _horizon(data["from"], where=source, key="from")
        if start_unit is not None and unit is None:
            raise SpecError(f"{source}: key 'from' {data['from']!r} carries a unit but 'horizon' does not; give both")
        if start_unit is not None and start_unit != unit:  # a same-unit round trip through minutes rounds
            start = convert_time(start, start_unit, unit, where=f"{source}: key 'from'")
    return SafetySpec(
        bounds=bounds,
        horizon=horizon,
        time_unit=unit,
        epsilon=_number(data.get("epsilon", 0.05), where=source, key="epsilon"),
        delta=_number(data.get("delta", 0.05), where=source, key="delta"),
        target=target,
        source=source,
        monitor_from=start,
        rare=str(data.get("rare", "auto")).strip(),
        rare_budget=None
        if data.get("rare_budget") is None
        else _number(data["rare_budget"], where=source, key="rare_budget"),
    )


def parse_inline_spec(text: str) -> SafetySpec:
    """Parse ``"conc<=20,conc>=5;horizon=72h;epsilon=0.05;delta=0.05"``.

    Segments are separated by ``;``. A segment without ``=`` (or ``bounds=...``) is a
    comma-separated list of bounds; the others are ``key=value`` pairs.
    """
    data: dict[str, Any] = {}
    bounds: list[str] = []
    for segment in (s.strip() for s in text.split(";")):
        if not segment:
            continue
        key, sep, value = segment.partition("=")
        key = key.strip()
        looks_like_bounds = key not in ("target", "bounds") and ("<" in segment or ">" in segment)
        if not sep or looks_like_bounds:
            bounds.extend(b for b in (p.strip() for p in segment.split(",")) if b)
            continue
        if key == "bounds":
            bounds.extend(b for b in (p.strip() for p in value.split(",")) if b)
            continue
        if key in data:
            raise SpecError(f"inline: key {key!r} given twice")
        data[key] = value.strip()
    if bounds:
        data["bounds"] = bounds
    return spec_from_mapping(data, source="inline")
