"""The one number type of the risk package: a value with its interval, sample size, method and seed."""

from __future__ import annotations

import math
from dataclasses import dataclass


def encode_float(x: float) -> float | str:
    """JSON has no inf/nan: non-finite floats travel as the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


def decode_float(x: float | int | str | None) -> float:
    """Inverse of :func:`encode_float` (``None`` reads as nan)."""
    return math.nan if x is None else float(x)


@dataclass(frozen=True)
class Estimate:
    """An estimate with its interval, never a bare number.

    Attributes
    ----------
    value : float
        Point estimate.
    lower, upper : float
        Interval ends (two-sided at ``level`` unless ``method`` says one-sided).
    n : int
        Sample size the estimate rests on (patients, unless ``method`` says otherwise).
    method : str
        How the value and interval were obtained (e.g. ``"clopper-pearson"``, ``"clt-cluster"``).
    seed : int or None
        Seed of the random numbers behind it (the rollout's seed, or a resampling seed).
    level : float
        Confidence level of the interval.
    se : float
        Standard error where one exists (nan otherwise).
    no_interval : str
        Why no interval could be estimated (empty when it was): e.g. one patient, all values
        equal, an undefined variance. ``lower`` and ``upper`` are then nan, and renderings print
        "interval not estimable: <reason>" instead of an interval.
    """

    value: float
    lower: float
    upper: float
    n: int
    method: str
    seed: int | None = None
    level: float = 0.95
    se: float = math.nan
    no_interval: str = ""

    def __post_init__(self) -> None:
        for name in ("value", "lower", "upper", "level", "se"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "no_interval", str(self.no_interval))
        if self.no_interval:
            object.__setattr__(self, "lower", math.nan)
            object.__setattr__(self, "upper", math.nan)
        object.__setattr__(self, "n", int(self.n))
        if self.seed is not None:
            object.__setattr__(self, "seed", int(self.seed))
        if self.lower > self.upper:
            raise ValueError(f"estimate ({self.method}): lower {self.lower} exceeds upper {self.upper}")

    @classmethod
    def without_interval(
        cls,
        value: float,
        n: int,
        method: str,
        reason: str,
        seed: int | None = None,
        level: float = 0.95,
        se: float = math.nan,
    ) -> Estimate:
        """A point estimate whose interval cannot be estimated, saying why (``reason``)."""
        return cls(value, math.nan, math.nan, n, method, seed, level, se, no_interval=reason)

    @property
    def has_interval(self) -> bool:
        return not self.no_interval

    @property
    def width(self) -> float:
        return self.upper - self.lower

    def contains(self, x: float) -> bool:
        """True when ``x`` lies in ``[lower, upper]``."""
        return self.lower <= x <= self.upper

    def to_dict(self) -> dict:
        return {
            "value": encode_float(self.value),
            "lower": encode_float(self.lower),
            "upper": encode_float(self.upper),
            "n": self.n,
            "method": self.method,
            "seed": self.seed,
            "level": self.level,
            "se": encode_float(self.se),
            "no_interval": self.no_interval or None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Estimate:
        return cls(
            value=decode_float(data["value"]),
            lower=decode_float(data["lower"]),
            upper=decode_float(data["upper"]),
            n=int(data["n"]),
            method=str(data["method"]),
            seed=None if data.get("seed") is None else int(data["seed"]),
            level=float(data.get("level", 0.95)),
            se=decode_float(data.get("se")),
            no_interval=data.get("no_interval") or "",
        )

    def format(self, scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
        """``"4.1% [3.5%, 4.7%]"``-style text (``scale=100, unit="%"``)."""

        def f(x: float) -> str:
            return f"{x * scale:.{digits}g}{unit}" if math.isfinite(x) else ("n/a" if math.isnan(x) else str(x))

        if self.no_interval:
            return f"{f(self.value)} (interval not estimable: {self.no_interval})"
        return f"{f(self.value)} [{f(self.lower)}, {f(self.upper)}]"

    def __str__(self) -> str:
        return f"{self.format()} (n={self.n}, {self.method})"
