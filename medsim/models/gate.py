"""The calibration gate of every model: are its predictive intervals honest *and* useful?

A model earns trust by predicting measurements it was not fitted to. The held-out check
(:func:`medsim.inference.checks.calibration_gate.heldout_check` for mechanistic posteriors,
:func:`medsim.inference.neural.calibrate` for neural checkpoints) measures figures; :func:`judge` turns
them into a :class:`CalibrationGate`, a typed record stored with the posterior (or checkpoint)
and read by ``medsim risk``, which gives no PASS verdict from a model that failed it.

The rule (thresholds below; ``docs/calibration.md`` explains them):

* **coverage** of the central 90 % and 50 % predictive intervals within ``tolerance`` of nominal,
  ``tolerance = max(0.05, z_0.995 sqrt(L (1 - L) deff / n))``: 0.05 is the practical band (a
  90 % interval covering 85–95 % is acceptable), the second term the binomial noise of ``n``
  held-out points at 99 % confidence, inflated by the design effect ``deff`` of points within a
  subject (their misses are correlated). When the binomial term alone exceeds 0.15 there are
  too few points to confirm a coverage: *not checked*, unless the coverage lies outside the
  central 99 % range of an exact binomial count of ``n / deff`` effective points (few points
  cannot confirm a coverage, but they can refute one; the normal approximation above fails at
  such counts).
* **sharpness**: the mean width of the 90 % intervals divided by the 5–95 % range of the
  held-out measurements at most 0.8. A ratio of 1 is the interval anyone gets from the
  cohort's spread alone (no skill); an interval wide enough to cover everything fails here
  even though its coverage is high.
* **CRPS skill** over the cohort's own held-out distribution (climatology) above 0. Sharpness
  and CRPS skill need at least 20 held-out points (else *not checked*).
* **coverage where the risk is decided**: with event bounds, the 90 % intervals of the held-out
  measurements outside the safe range must cover at least ``0.9 - tolerance`` of them (the same
  tolerance, from their own count and design effect; one-sided, since an interval too wide there
  errs on the safe side). A model can cover the bulk of the data and miss exactly the excursions
  a risk counts. Too few such points (binomial half-width above 0.15) to confirm it: *not
  checked*, unless the coverage falls below the exact binomial range as above (few points can
  still show a gross shortfall).
* **events** (leaving the safe range in the held-out window): Brier skill over the constant
  forecast at the cohort's event rate above 0, checked only when at least two subjects had
  an event and two had none.

Status: ``failed`` when any checked criterion fails; ``passed`` when none fails and the 90 %
coverage was checked; ``not_checked`` otherwise. Nothing passes by default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from statistics import NormalDist
from typing import Any, Literal

GateStatus = Literal["passed", "failed", "not_checked"]

PRACTICAL_TOLERANCE = 0.05
"""Coverage band accepted whatever ``n``: 90 % intervals covering 85–95 %."""
CONFIDENCE = 0.99
"""Confidence of the binomial part of the coverage tolerance: a calibrated model with
independent held-out points fails a coverage criterion by chance at most 1 % of the time."""
MAX_BINOMIAL_TOLERANCE = 0.15
"""Beyond this binomial half-width (about 27 independent points for 90 % intervals) the check
cannot tell a calibrated model from one covering 75 %: the criterion is *not checked*."""
RELATIVE_WIDTH_LIMIT = 0.8
"""Largest mean 90 % width as a share of the held-out measurements' 5–95 % range (1: no skill)."""
MIN_SPREAD_POINTS = 20
"""Held-out points needed to judge sharpness and CRPS skill: with fewer, the empirical 5 % and
95 % quantiles of the held-out measurements are (interpolated) extremes, not a spread."""
MIN_EVENT_CLASS = 2
"""Subjects with and without an event needed before event forecasts are judged."""
HEADLINES = {"passed": "CALIBRATED", "failed": "MISCALIBRATED", "not_checked": "CALIBRATION NOT CHECKED"}
LEVELS = (0.5, 0.8, 0.9, 0.95)
"""Central interval levels whose coverage and width the held-out check reports (0.9 and 0.5 are judged)."""


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability curve: forecasts in ``[lower, upper)`` (the last bin includes 1).

    ``mean_forecast`` and ``observed_rate`` are None for an empty bin.
    """

    lower: float
    upper: float
    mean_forecast: float | None
    observed_rate: float | None
    n: int


@dataclass(frozen=True)
class Criterion:
    """One rule of the gate and its outcome.

    Attributes
    ----------
    name : str
        ``coverage_0.9``, ``coverage_0.5``, ``relative_width_0.9``, ``crps_skill``, ``brier_skill``,
        and with event bounds ``coverage_0.9_unsafe``.
    value : float or None
        The measured figure (None when it could not be measured).
    lower, upper : float or None
        Accepted range (None: open on that side).
    status : {"passed", "failed", "not_checked"}
    why : str
        The rule in words, or why it could not be checked.
    """

    name: str
    value: float | None
    lower: float | None
    upper: float | None
    status: GateStatus
    why: str


@dataclass(frozen=True)
class CalibrationGate:
    """Outcome of a held-out calibration check (see the module docstring).

    Attributes
    ----------
    status : {"passed", "failed", "not_checked"}
    criteria : tuple of Criterion
    figures : dict str -> float or None
        Everything measured: ``coverage_<level>``, ``width_<level>``, ``relative_width_0.9``,
        ``spread_5_95``, ``interval_score_0.9`` (and ``_climatology``), ``crps``,
        ``crps_climatology``, ``crps_skill``, ``log_score`` (mean log predictive density per
        held-out point), ``rmse``, ``n_events`` and ``n_no_events`` (subjects with and without
        an event), ``event_rate``, ``brier``, ``brier_constant``, ``brier_skill``, ``auc``; with
        event bounds ``n_unsafe``, ``coverage_0.9_unsafe``, ``below_0.9_unsafe``, ``above_0.9_unsafe``
        and ``design_effect_0.9_unsafe`` (held-out measurements outside the safe range).
    reliability : tuple of ReliabilityBin
        Event forecasts (empty when no events were defined).
    pit_counts : tuple of int
        Histogram of PIT values in ten equal bins on [0, 1].
    n_points, n_subjects : int
        Held-out measurements and the subjects they belong to.
    heldout, method, events, unit, data_hash, created : str
        What was held out, how the predictions were made, the event definition, the observable
        unit of widths and scores, the full cohort's hash, when (ISO 8601 UTC).
    """

    status: GateStatus
    criteria: tuple[Criterion, ...] = ()
    figures: dict[str, float | None] = field(default_factory=dict)
    reliability: tuple[ReliabilityBin, ...] = ()
    pit_counts: tuple[int, ...] = ()
    n_points: int = 0
    n_subjects: int = 0
    heldout: str = ""
    method: str = ""
    events: str = ""
    unit: str = ""
    data_hash: str = ""
    created: str = ""

    @classmethod
    def unchecked(cls, why: str) -> CalibrationGate:
        """The record of a model whose calibration was never checked."""
        return cls(status="not_checked", criteria=(Criterion("coverage_0.9", None, None, None, "not_checked", why),))

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def figure(self, name: str) -> float | None:
        value = self.figures.get(name)
        return None if value is None or not math.isfinite(value) else float(value)

    def summary(self) -> str:
        """One sentence: status, then every criterion with its figure and accepted range."""
        head = HEADLINES[self.status]
        parts = [c.why for c in self.criteria if c.status == "failed"] or [c.why for c in self.criteria]
        where = f" on {self.n_points} held-out measurements of {self.n_subjects} subjects" if self.n_points else ""
        return f"{head}{where}: " + "; ".join(parts)

    def to_json(self) -> str:
        return json.dumps(_finite(asdict(self)), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CalibrationGate:
        """Rebuild a record from :meth:`to_json` output (ValueError if it is not one)."""
        try:
            data = json.loads(text)
            data["criteria"] = tuple(Criterion(**c) for c in data.get("criteria", ()))
            data["reliability"] = tuple(ReliabilityBin(**b) for b in data.get("reliability", ()))
            data["pit_counts"] = tuple(int(c) for c in data.get("pit_counts", ()))
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"not a calibration gate record: {err}") from None


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def coverage_tolerance(level: float, n: int, design_effect: float = 1.0) -> tuple[float, float]:
    """(binomial half-width, tolerance) of the coverage of ``n`` held-out points at ``level``."""
    z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
    binomial = z * math.sqrt(level * (1 - level) * max(1.0, design_effect) / max(n, 1))
    return binomial, max(PRACTICAL_TOLERANCE, binomial)


def exact_coverage_range(level: float, n: int, design_effect: float = 1.0) -> tuple[float, float]:
    """Central ``CONFIDENCE`` range of the coverage of ``n`` points by calibrated ``level`` intervals.

    The count of covered points is Binomial(``n_eff``, ``level``) with ``n_eff = n / deff`` effective
    points (misses clustered within subjects carry less information), continued to non-integer
    counts through the regularized incomplete beta function, ``P(X <= k) = I_{1-p}(n - k, k + 1)``.
    Returns the coverages ``k / n_eff`` below and above which each tail holds ``(1 - CONFIDENCE) / 2``;
    a side that no count reaches (e.g. the upper side of 90 % intervals with few points) is 0 or 1.
    This is the rule for few points, where the normal half-width of :func:`coverage_tolerance`
    is wrong: for one point it puts the 90 % floor at 0.9 - 0.77 = 0.13, so a single miss would
    fail, though a calibrated interval misses one time in ten; six points of which only one was
    covered is a 1-in-18,000 event.
    """
    from scipy.optimize import brentq
    from scipy.special import betainc

    n_eff = max(n, 1) / max(1.0, design_effect)
    tail = (1.0 - CONFIDENCE) / 2

    def cdf(k: float) -> float:  # P(X <= k), continuous in k on [0, n_eff)
        return 1.0 if k >= n_eff else float(betainc(n_eff - k, k + 1.0, 1.0 - level))

    def sf(k: float) -> float:  # P(X >= k), continuous in k on (0, n_eff]
        return 1.0 if k <= 0 else float(betainc(k, n_eff - k + 1.0, level))

    lo = 0.0 if cdf(0.0) >= tail else brentq(lambda k: cdf(k) - tail, 0.0, n_eff) / n_eff
    hi = 1.0 if sf(n_eff) >= tail else brentq(lambda k: sf(k) - tail, 0.0, n_eff) / n_eff
    return lo, hi


def _coverage(figures: Mapping[str, float | None], level: float, n: int, floor: float | None) -> Criterion:
    name = f"coverage_{level:g}"
    value = figures.get(name)
    if value is None:
        return Criterion(name, None, None, None, "not_checked", f"{level:.0%} coverage not measured")
    if floor is not None:
        ok = value >= floor
        why = f"{level:.0%} intervals covered {value:.3f} of {n} held-out points (floor {floor:.2f})"
        return Criterion(name, value, floor, None, "passed" if ok else "failed", why)
    deff = figures.get(f"design_effect_{level:g}") or 1.0
    binomial, tol = coverage_tolerance(level, n, deff)
    if binomial > MAX_BINOMIAL_TOLERANCE:
        lo, hi = exact_coverage_range(level, n, deff)
        if lo <= value <= hi:
            why = (
                f"{level:.0%} intervals covered {value:.3f}, but {n} held-out points (design effect {deff:.2g}) "
                f"give a binomial tolerance of +-{binomial:.2f}, too wide to judge"
            )
            return Criterion(name, value, None, None, "not_checked", why)
        why = (
            f"{level:.0%} intervals covered {value:.3f} of {n} held-out points (design effect {deff:.2g}): too few "
            f"to confirm a coverage, but outside even their exact binomial range {lo:.2f}-{hi:.2f}"
        )
        return Criterion(name, value, lo, hi, "failed", why)
    lo, hi = level - tol, min(1.0, level + tol)
    ok = lo <= value <= hi
    why = f"{level:.0%} intervals covered {value:.3f} (accepted {lo:.2f}-{hi:.2f})"
    return Criterion(name, value, lo, hi, "passed" if ok else "failed", why)


def _unsafe_coverage(figures: Mapping[str, float | None]) -> Criterion:
    name, value, n = "coverage_0.9_unsafe", figures.get("coverage_0.9_unsafe"), figures.get("n_unsafe")
    if value is None:
        why = "no held-out measurement fell outside the safe range: coverage there not measured"
        return Criterion(name, None, None, None, "not_checked", why)
    n = int(n or 0)
    deff = figures.get("design_effect_0.9_unsafe") or 1.0
    binomial, tol = coverage_tolerance(0.9, n, deff)
    below = figures.get("below_0.9_unsafe")
    missed = (
        ""
        if below is None
        else f"; {below:.3f} fell below the interval, {figures.get('above_0.9_unsafe') or 0.0:.3f} above"
    )
    floor = 0.9 - tol
    if binomial > MAX_BINOMIAL_TOLERANCE:
        # too few points to confirm the coverage; a shortfall beyond their exact binomial range still fails
        floor = exact_coverage_range(0.9, n, deff)[0]
    if binomial > MAX_BINOMIAL_TOLERANCE and value >= floor:
        why = (
            f"90% intervals covered {value:.3f} of the {n} held-out measurements outside the safe range{missed}, "
            f"too few to judge (design effect {deff:.2g}, binomial tolerance +-{binomial:.2f})"
        )
        return Criterion(name, value, None, None, "not_checked", why)
    why = (
        f"90% intervals covered {value:.3f} of the {n} held-out measurements outside the safe range "
        f"(floor {floor:.2f}){missed}"
    )
    return Criterion(name, value, floor, None, "passed" if value >= floor else "failed", why)


def _width(figures: Mapping[str, float | None], unit: str, n: int) -> Criterion:
    ratio, width, spread = (figures.get(k) for k in ("relative_width_0.9", "width_0.9", "spread_5_95"))
    if ratio is not None and n < MIN_SPREAD_POINTS:
        why = f"{n} held-out points are too few for a 5-95% range (need {MIN_SPREAD_POINTS}): sharpness not judged"
        return Criterion("relative_width_0.9", ratio, None, RELATIVE_WIDTH_LIMIT, "not_checked", why)
    if ratio is None or not math.isfinite(ratio):
        why = "sharpness not measured"
        return Criterion("relative_width_0.9", None, None, RELATIVE_WIDTH_LIMIT, "not_checked", why)
    why = (
        f"mean 90% width {width:.3g} {unit} = {ratio:.2f} x the held-out 5-95% range {spread:.3g} {unit} "
        f"(limit {RELATIVE_WIDTH_LIMIT:.2f}; 1 = no better than the cohort's spread)"
    )
    ok = ratio <= RELATIVE_WIDTH_LIMIT
    return Criterion("relative_width_0.9", ratio, None, RELATIVE_WIDTH_LIMIT, "passed" if ok else "failed", why)


def _skill(figures: Mapping[str, float | None], name: str, text: str, enough: bool, short: str) -> Criterion:
    value = figures.get(name)
    if value is None or not math.isfinite(value) or not enough:
        why = short if not enough else f"{text} not measured"
        shown = None if value is None or not math.isfinite(value) else value
        return Criterion(name, shown, 0.0, None, "not_checked", why)
    ok = value > 0
    return Criterion(name, value, 0.0, None, "passed" if ok else "failed", f"{text} {value:+.2f} (must be > 0)")


def judge(
    figures: Mapping[str, float | None],
    *,
    n_points: int,
    n_subjects: int,
    unit: str = "",
    coverage_floor: float | None = None,
    **record: Any,
) -> CalibrationGate:
    """Apply the gate's rule (module docstring) to measured ``figures``.

    Parameters
    ----------
    figures : mapping
        See :attr:`CalibrationGate.figures`; ``design_effect_<level>`` widens the coverage
        tolerance; absent figures make their criterion *not checked*.
    n_points, n_subjects : int
    unit : str
        Observable unit of widths and scores.
    coverage_floor : float, optional
        A one-sided floor for the 90 % coverage instead of the two-sided tolerance (the neural
        gate's ``--coverage-floor``).
    **record
        Other :class:`CalibrationGate` fields (``reliability``, ``pit_counts``, ``heldout``, ...).

    Returns
    -------
    CalibrationGate
    """
    with_event, without = figures.get("n_events"), figures.get("n_no_events")
    enough = with_event is not None and without is not None and min(with_event, without) >= MIN_EVENT_CLASS
    events_short = (
        "no event forecasts (no bounds given)"
        if with_event is None or without is None
        else f"{int(with_event)} subjects with and {int(without)} without an event in the held-out window: "
        "too few to judge event forecasts"
    )
    criteria = (
        _coverage(figures, 0.9, n_points, coverage_floor),
        _coverage(figures, 0.5, n_points, None),
        _width(figures, unit, n_points),
        _skill(
            figures,
            "crps_skill",
            "CRPS skill over the cohort's held-out distribution",
            n_points >= MIN_SPREAD_POINTS,
            f"{n_points} held-out points are too few for a climatological reference (need {MIN_SPREAD_POINTS})",
        ),
        _skill(figures, "brier_skill", "Brier skill over the constant forecast", enough, events_short),
    )
    if "n_unsafe" in figures:  # event bounds were given: judge the coverage where the risk is decided
        criteria = (*criteria, _unsafe_coverage(figures))
    if coverage_floor is not None:
        # The floor replaces the two-sided rule for the 90 % intervals only; the 50 % figure is
        # reported, not judged, as the neural gate always did.
        c50 = criteria[1]
        criteria = (criteria[0], replace(c50, status="not_checked", why=f"{c50.why} (reported only)"), *criteria[2:])
    if any(c.status == "failed" for c in criteria):
        status: GateStatus = "failed"
    elif criteria[0].status == "passed":
        status = "passed"
    else:
        status = "not_checked"
    return CalibrationGate(
        status=status,
        criteria=criteria,
        figures={k: (None if v is None else float(v)) for k, v in figures.items()},
        n_points=int(n_points),
        n_subjects=int(n_subjects),
        unit=unit,
        **record,
    )


class MiscalibratedModelError(RuntimeError):
    """A model failed its calibration gate (or was never checked) where a pass is required.

    Attributes
    ----------
    gate : CalibrationGate
    coverage : float or None
        Held-out coverage of the 90 % intervals (None if never measured).
    floor : float or None
        The coverage floor applied, if any.
    calibration : dict
        The raw calibration record the gate was built from (empty if none).
    """

    def __init__(
        self,
        message: str,
        *,
        gate: CalibrationGate | None = None,
        coverage: float | None = None,
        floor: float | None = None,
        calibration: Mapping[str, Any] | None = None,
    ):
        super().__init__(message)
        self.gate = gate if gate is not None else CalibrationGate.unchecked(message)
        self.coverage = coverage
        self.floor = floor
        self.calibration = dict(calibration or {})
