"""Glucose in the international consensus metrics, per patient and over the virtual population.

The metrics of the international consensus on time in range (Battelino T et al. 2019, *Diabetes
Care* 42(8):1593-1603, Table 1 and Fig. 1): time in range 70-180 mg/dL, below 70 and below 54,
above 180 and above 250, mean glucose, the glucose management indicator (GMI, Bergenstal RM et
al. 2018, *Diabetes Care* 41:2275: ``GMI (%) = 3.31 + 0.02392 x mean glucose (mg/dL)``), the
coefficient of variation, and the low / high blood glucose indices (Kovatchev BP et al. 1997,
*Diabetes Care* 20:1655; 1998, *Diabetes Care* 21:1870): ``f(G) = 1.509 (ln(G)^1.084 - 5.381)``,
``LBGI = mean(10 f^2 [f < 0])``, ``HBGI = mean(10 f^2 [f > 0])``.

Each patient's metrics are computed from its CGM-like trace (noise-free glucose every few
minutes, :mod:`medsim.policies.traces`); the report gives their mean over virtual patients with a
cluster-robust interval over posterior draws, and the share of patients that meet each consensus
target (for most adults with type 1 or type 2 diabetes). Percent-of-readings metrics on a regular
grid equal the time-weighted shares that the consensus defines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from medsim.policies.risk import intervals
from medsim.policies.risk.estimate import Estimate

GLUCOSE = "glucose_mg_dL"
Kind = Literal["share", "value"]


@dataclass(frozen=True)
class MetricDefinition:
    """One consensus metric: its name, how a reader calls it, its unit and its target.

    ``kind`` ``"share"`` values are fractions (shown in percent); ``target`` is
    ``(operator, value)`` in the metric's own scale, e.g. ``(">", 0.70)``, or None.
    """

    name: str
    label: str
    unit: str
    kind: Kind
    target: tuple[str, float] | None


#: The consensus targets for most adults with type 1 or type 2 diabetes (Battelino et al. 2019,
#: Table 1; CV <= 36 % from the same consensus, after Monnier L et al. 2017). GMI, mean glucose
#: and the risk indices have no consensus target.
DEFINITIONS = (
    MetricDefinition("time_in_range", "time in range 70-180 mg/dL", "%", "share", (">", 0.70)),
    MetricDefinition("time_below_70", "time below 70 mg/dL", "%", "share", ("<", 0.04)),
    MetricDefinition("time_below_54", "time below 54 mg/dL", "%", "share", ("<", 0.01)),
    MetricDefinition("time_above_180", "time above 180 mg/dL", "%", "share", ("<", 0.25)),
    MetricDefinition("time_above_250", "time above 250 mg/dL", "%", "share", ("<", 0.05)),
    MetricDefinition("mean_glucose", "mean glucose", "mg/dL", "value", None),
    MetricDefinition("gmi", "glucose management indicator (GMI)", "%", "value", None),
    MetricDefinition("cv", "coefficient of variation (CV)", "%", "share", ("<=", 0.36)),
    MetricDefinition("lbgi", "low blood glucose index (LBGI)", "", "value", None),
    MetricDefinition("hbgi", "high blood glucose index (HBGI)", "", "value", None),
)


@dataclass(frozen=True)
class ConsensusMetric:
    """A consensus metric over the virtual population.

    Attributes
    ----------
    definition : MetricDefinition
    mean : Estimate
        Mean over patients of the per-patient metric (cluster-robust interval over draws).
    meets_target : Estimate or None
        Share of patients whose own metric meets the consensus target (None without a target).
    """

    definition: MetricDefinition
    mean: Estimate
    meets_target: Estimate | None


@dataclass(frozen=True)
class GlucoseMetrics:
    """Consensus metrics of one policy.

    Attributes
    ----------
    metrics : tuple of ConsensusMetric
        In the order of :data:`DEFINITIONS`.
    n_patients : int
    n_readings : int
        Trace readings per patient (the CGM grid inside the monitoring window).
    reading_interval_min : float
        Spacing of the readings (min).
    source : str
        What the traces are (noise-free plasma glucose, no sensor error).
    """

    metrics: tuple[ConsensusMetric, ...]
    n_patients: int
    n_readings: int
    reading_interval_min: float
    source: str

    def metric(self, name: str) -> ConsensusMetric:
        for m in self.metrics:
            if m.definition.name == name:
                return m
        raise KeyError(f"no glucose metric {name!r}; there are {[m.definition.name for m in self.metrics]}")


def risk_function(glucose: np.ndarray) -> np.ndarray:
    """Kovatchev's symmetrised scale ``f(G) = 1.509 (ln(G)^1.084 - 5.381)`` (G in mg/dL)."""
    return 1.509 * (np.log(np.maximum(glucose, 1e-9)) ** 1.084 - 5.381)


def per_patient(trace: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric of :data:`DEFINITIONS` for each row of ``trace`` ((N, T) mg/dL; NaN = no reading).

    Shares are fractions of the patient's readings; the CV uses the sample SD (``ddof = 1``).
    """
    g = np.asarray(trace, np.float64)
    ok = np.isfinite(g)
    count = ok.sum(axis=1)
    n = np.where(count > 0, count, 1)

    def share(hit: np.ndarray) -> np.ndarray:
        return np.where(count > 0, (hit & ok).sum(axis=1) / n, np.nan)

    gz = np.where(ok, g, 0.0)
    mean = np.where(count > 0, gz.sum(axis=1) / n, np.nan)
    dev = np.where(ok, g - mean[:, None], 0.0)
    sd = np.sqrt((dev**2).sum(axis=1) / np.where(count > 1, count - 1, 1))
    f = np.where(ok, risk_function(np.where(ok, g, 1.0)), 0.0)
    return {
        "time_in_range": share((g >= 70.0) & (g <= 180.0)),
        "time_below_70": share(g < 70.0),
        "time_below_54": share(g < 54.0),
        "time_above_180": share(g > 180.0),
        "time_above_250": share(g > 250.0),
        "mean_glucose": mean,
        "gmi": 3.31 + 0.02392 * mean,
        "cv": np.where(count > 1, sd / mean, np.nan),
        "lbgi": np.where(count > 0, (10.0 * np.where(f < 0, f, 0.0) ** 2).sum(axis=1) / n, np.nan),
        "hbgi": np.where(count > 0, (10.0 * np.where(f > 0, f, 0.0) ** 2).sum(axis=1) / n, np.nan),
    }


def meets(values: np.ndarray, target: tuple[str, float]) -> np.ndarray:
    """Whether each value meets ``target`` = (operator, threshold)."""
    op, x = target
    return {"<": values < x, "<=": values <= x, ">": values > x, ">=": values >= x}[op]


def glucose_metrics(
    trace: np.ndarray,
    draw: np.ndarray,
    *,
    step_min: float,
    level: float,
    seed: int | None,
    source: str = "noise-free plasma glucose of the model on a CGM-like grid (no sensor error)",
) -> GlucoseMetrics | None:
    """Consensus metrics of a population's traces; None when no patient has a reading.

    Parameters
    ----------
    trace : (N, T) float
        Glucose (mg/dL) on a regular grid; NaN where nothing was recorded.
    draw : (N,) int
        Posterior draw of each patient (clusters of the interval; negative = none).
    step_min : float
        Grid spacing in minutes.
    level : float
        Two-sided confidence level of the intervals.
    seed : int or None
        The rollout's seed, recorded with each estimate.
    """
    values = per_patient(trace)
    keep = np.isfinite(values["mean_glucose"])
    if not keep.any():
        return None
    draw = np.asarray(draw)[keep]
    out = []
    for d in DEFINITIONS:
        v = values[d.name][keep]
        ok = np.isfinite(v)
        est = intervals.mean(v[ok], draw[ok], level=level, seed=seed, unit_interval=d.kind == "share", nonnegative=True)
        hit = None
        if d.target is not None:
            hit = intervals.proportion(meets(v[ok], d.target).astype(float), draw[ok], level=level, seed=seed)
        out.append(ConsensusMetric(d, est, hit))
    readings = int(np.isfinite(np.asarray(trace)).sum(axis=1).max(initial=0))
    return GlucoseMetrics(tuple(out), int(keep.sum()), readings, float(step_min), source)
