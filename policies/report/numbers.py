"""Numbers as a report prints them: percent for probabilities and shares, positional notation
(``1250``, never ``1.25e+03``), durations in min below two hours and in h above, differences of
probabilities in percentage points; each with its interval, ``value [lower, upper]``.
"""

from __future__ import annotations

import math

from medsim.policies.risk.estimate import Estimate
from medsim.units import convert_time


def pct(x: float) -> str:
    """``0.0412`` -> ``"4.12%"`` (3 significant digits; ``"n/a"`` for nan)."""
    if not math.isfinite(x):
        return "n/a"
    if 0.0 < x < 1e-4:
        return "<0.01%"
    return f"{100 * x:.3g}%"


def pct_ci(e: Estimate | None) -> str:
    if e is None:
        return "n/a"
    if e.no_interval:
        return f"{pct(e.value)} (interval not estimable: {e.no_interval})"
    return f"{pct(e.value)} [{pct(e.lower)}, {pct(e.upper)}]"


def plain(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits in positional notation (``1250``, ``0.0000807``), never
    ``1.25e+03``."""
    short = f"{x:.{digits}g}"
    if "e" not in short or not math.isfinite(x):
        return short
    exponent = math.floor(math.log10(abs(x)))
    decimals = max(digits - 1 - exponent, 0)
    out = f"{round(x, decimals):.{decimals}f}"
    return out.rstrip("0").rstrip(".") if "." in out else out


def num(x: float, unit: str = "", *, inf: str = "∞") -> str:
    """Number with 3 significant digits; ``inf`` is the text for +infinity (e.g. "> horizon")."""
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return inf if x > 0 else "-∞"
    return f"{plain(x)}{(' ' + unit) if unit else ''}"


def num_ci(e: Estimate | None, unit: str = "", *, inf: str = "∞") -> str:
    if e is None or math.isnan(e.value):
        return "n/a"
    if e.no_interval:
        return f"{num(e.value, unit, inf=inf)} (interval not estimable: {e.no_interval})"
    return f"{num(e.value, unit, inf=inf)} [{num(e.lower, inf=inf)}, {num(e.upper, inf=inf)}]"


def _clock_unit(values: list[float], unit: str) -> tuple[float, str]:
    """Scale and unit a reader uses for durations like ``values`` (model ``unit``): min below 2 h, else h."""
    try:
        minutes = convert_time(1.0, unit, "min")
    except (KeyError, ValueError):
        return 1.0, unit
    finite = [abs(v) for v in values if math.isfinite(v)]
    top = max(finite, default=0.0) * minutes
    return (minutes, "min") if top < 120.0 else (minutes / 60.0, "h")


def duration(x: float, unit: str, *, inf: str = "∞") -> str:
    """``1250`` min -> ``"20.8 h"``; ``48.9`` min -> ``"48.9 min"``."""
    scale, shown = _clock_unit([x], unit)
    return num(x * scale, shown, inf=inf) if math.isfinite(x) else num(x, inf=inf)


def time_ci(e: Estimate | None, unit: str, *, inf: str = "> horizon") -> str:
    """A duration with its interval, all in one reader's unit; +infinity reads "> horizon"."""
    if e is None or math.isnan(e.value):
        return "n/a"
    ends = [e.value] if e.no_interval else [e.value, e.lower, e.upper]
    scale, shown = _clock_unit(ends, unit)

    def f(x: float, u: str = "") -> str:
        return num(x * scale if math.isfinite(x) else x, u, inf=inf)

    if e.no_interval:
        return f"{f(e.value, shown)} (interval not estimable: {e.no_interval})"
    return f"{f(e.value, shown)} [{f(e.lower)}, {f(e.upper)}]"


def pp(x: float, *, signed: bool = False) -> str:
    """A difference of probabilities in percentage points: 3 significant digits, fixed below 0.01 pp."""
    if math.isnan(x):
        return "n/a"
    v = 100.0 * x
    if abs(v) < 0.01:
        return f"{v:+.2f}" if signed else f"{v:.2f}"
    return f"{v:+.3g}" if signed else f"{v:.3g}"
