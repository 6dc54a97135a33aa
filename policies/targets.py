"""Efficacy target ranges and cohort-support ranges, expressed as extra simulator bounds.

The rollout measures time in the target range and time outside the fitted cohort's support with
the simulator's exact trapezoid time-outside on the sub-step grid: a range ``lo <= y <= hi``
becomes the bounds ``y >= lo`` and ``y <= hi``. These bounds are not part of a result's safety
``bounds``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from medsim.models.base import PhysiologyModel
from medsim.simulate.types import Bound


def target_range(
    model: PhysiologyModel, bounds: Sequence[Bound], target: Any = None
) -> tuple[str, float, float] | None:
    """The efficacy range ``(observable, lo, hi)``.

    ``target`` may be a tuple or an object with ``observable``/``low``/``high`` (a spec's
    ``TargetRange``). Default: the range the model declares (``model.target_range``, e.g. the
    consensus 70-180 mg/dL of the glucose models); otherwise the tightest bounds on the first
    bounded observable (one side may be open).
    """
    if target is not None:
        if hasattr(target, "observable"):
            target = (target.observable, target.low, target.high)
        name, lo, hi = target
        if name not in model.observable_names:
            raise ValueError(f"target range on {name!r}: model {model.name!r} has observables {model.observable_names}")
        if not float(lo) < float(hi):
            raise ValueError(f"target range on {name!r}: need low < high, got {lo}, {hi}")
        return str(name), float(lo), float(hi)
    declared = model.target_range
    if declared is not None:
        return declared.observable, float(declared.low), float(declared.high)
    if not bounds:
        return None
    name = bounds[0].observable
    lo = max([b.value for b in bounds if b.observable == name and b.side == "lower"], default=-math.inf)
    hi = min([b.value for b in bounds if b.observable == name and b.side == "upper"], default=math.inf)
    return name, lo, hi


def range_bounds(model: PhysiologyModel, name: str, lo: float, hi: float, tag: str) -> tuple[Bound, ...]:
    """``lo <= y <= hi`` as simulator bounds; a side that cannot be crossed is left out (an infinite
    one, or a lower one <= 0 on a positive, log-scale observable)."""
    out = []
    positive = model.observable(name).bridge_scale == "log"
    if math.isfinite(lo) and not (positive and lo <= 0):
        out.append(Bound(name, lo, "lower", name=f"{tag}:{name}>={lo:g}"))
    if math.isfinite(hi):
        out.append(Bound(name, hi, "upper", name=f"{tag}:{name}<={hi:g}"))
    return tuple(out)


def check_support(model: PhysiologyModel, support: Mapping[str, tuple[float, float]]) -> None:
    valid = list(model.observable_names) + [
        f"{w}_cmt{c}" for c in sorted(model.dose_targets) for w in ("bolus", "rate")
    ]
    for key, rng in support.items():
        if key not in valid:
            raise ValueError(f"support key {key!r} is neither an observable nor a treatment; valid: {', '.join(valid)}")
        lo, hi = rng
        if not float(lo) <= float(hi):
            raise ValueError(f"support range of {key!r} must have low <= high, got {rng}")
