"""P(any violation over the horizon): three estimators side by side, and the between-measurement split.

For each bound and for the joint event (see :mod:`medsim.policies.risk.events`):

* ``seen`` and ``grid`` are shares of 0/1 outcomes: exact Clopper–Pearson and Wilson intervals at
  the design-effect sample size (patients sharing a posterior draw are correlated);
* ``bridge`` is a mean of per-patient probabilities in [0, 1]: a t interval from its own
  cluster-robust standard error (draws = clusters), floored by the zero-event bound (see
  :func:`medsim.policies.risk.intervals.mean_bounds`). Both the naive and the cluster SE are kept; the
  interval uses the larger.
* ``between_*`` are the violations a check at measurement times misses, and ``share_between``
  the fraction of all (bridge) violation probability that is only between measurements, a ratio
  of means with a delta-method interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsim.policies.risk import intervals
from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.events import PatientEvents
from medsim.policies.risk.quantiles import t_ppf


@dataclass(frozen=True)
class ViolationProbability:
    """P(violation over the horizon) for one bound, or for any bound (``bound == "any"``).

    Attributes
    ----------
    bound : str
    seen, seen_wilson : Estimate
        Violation seen at a checkpoint (Clopper–Pearson / Wilson).
    grid, grid_wilson : Estimate
        Some sub-step grid point outside.
    bridge : Estimate
        Bridge-corrected continuous-time estimate (the one verdicts use).
    bridge_se_naive, bridge_se_cluster : float
        Standard error of ``bridge`` with patients independent / draws as clusters.
    design_effect : float
        ``(SE used / naive SE)^2`` of the bridge estimate.
    between_grid, between_bridge : Estimate
        Violation only between checkpoints (0/1 grid version; bridge version).
    share_between : Estimate
        Fraction of the bridge violation probability that is only between checkpoints.
    detected : Estimate or None
        A noisy measurement the policy saw was outside (None if the observable is never measured).
    detected_true : Estimate or None
        Some measurement was outside while the noise-free value was outside too (a true alarm).
    false_alarm : Estimate or None
        Measurements were outside but never while the noise-free value was (only false alarms);
        ``detected = detected_true + false_alarm``.
    """

    bound: str
    seen: Estimate
    seen_wilson: Estimate
    grid: Estimate
    grid_wilson: Estimate
    bridge: Estimate
    bridge_se_naive: float
    bridge_se_cluster: float
    design_effect: float
    between_grid: Estimate
    between_bridge: Estimate
    share_between: Estimate
    detected: Estimate | None = None
    detected_true: Estimate | None = None
    false_alarm: Estimate | None = None


def ratio_of_means(
    num: np.ndarray, den: np.ndarray, cluster: np.ndarray | None, *, level: float, seed: int | None
) -> Estimate:
    """``mean(num) / mean(den)`` with a delta-method (linearisation) interval, clipped to [0, 1].

    The linearised values ``(num_n - R den_n) / mean(den)`` have the ratio's sampling variance to
    first order (e.g. Cochran, *Sampling Techniques*, 3rd ed., §6.4); their cluster-robust SE
    gives the interval.
    """
    num = np.asarray(num, float)
    den = np.asarray(den, float)
    d = den.mean()
    if not d > 0:
        return Estimate.without_interval(
            np.nan, num.size, "ratio-delta", "no violation probability to share", seed, level
        )
    r = num.mean() / d
    se = intervals.standard_errors((num - r * den) / d, cluster)
    t = t_ppf(0.5 + level / 2.0, se.df)
    half = float(t * se.honest)
    if not (half > 0 and np.isfinite(half)):
        why = "one patient" if num.size < 2 else "every patient has the same share"
        return Estimate.without_interval(
            r, num.size, "ratio-delta", f"{why}: no spread to estimate a standard error from", seed, level
        )
    lo, hi = max(0.0, r - half), min(1.0, r + half)
    return Estimate(r, min(lo, r), max(hi, r), num.size, "ratio-delta", seed, level, float(se.honest))


def _one(
    name: str,
    seen: np.ndarray,
    grid: np.ndarray,
    bridge: np.ndarray,
    detected: np.ndarray | None,
    detected_true: np.ndarray | None,
    cluster: np.ndarray,
    *,
    level: float,
    seed: int | None,
) -> ViolationProbability:
    se, lo, hi = intervals.mean_bounds(bridge, cluster, level=level, unit_interval=True)
    method = "clt-cluster" if 2 <= se.n_clusters < se.n else "clt"
    bridge_est = Estimate(float(se.mean), float(lo), float(hi), se.n, method, seed, level, float(se.honest))
    between = np.where(seen, 0.0, bridge)
    true_alarm = None if detected is None or detected_true is None else detected_true & detected
    kw = {"level": level, "seed": seed}
    return ViolationProbability(
        bound=name,
        seen=intervals.proportion(seen, cluster, **kw),
        seen_wilson=intervals.proportion(seen, cluster, method="wilson", **kw),
        grid=intervals.proportion(grid, cluster, **kw),
        grid_wilson=intervals.proportion(grid, cluster, method="wilson", **kw),
        bridge=bridge_est,
        bridge_se_naive=float(se.naive),
        bridge_se_cluster=float(se.cluster),
        design_effect=float(se.design_effect),
        between_grid=intervals.proportion(grid & ~seen, cluster, **kw),
        between_bridge=intervals.mean(between, cluster, unit_interval=True, **kw),
        share_between=ratio_of_means(between, bridge, cluster, **kw),
        detected=None if detected is None else intervals.proportion(detected, cluster, **kw),
        detected_true=None if true_alarm is None else intervals.proportion(true_alarm, cluster, **kw),
        false_alarm=None if true_alarm is None else intervals.proportion(detected & ~true_alarm, cluster, **kw),
    )


def violation_probabilities(
    events: PatientEvents, *, level: float, seed: int | None
) -> tuple[ViolationProbability, tuple[ViolationProbability, ...]]:
    """Joint (any bound) and per-bound violation probabilities.

    Parameters
    ----------
    events : PatientEvents
    level : float
        Two-sided confidence level of the intervals.
    seed : int or None
        Seed of the rollout the events come from (recorded in each estimate).

    Returns
    -------
    joint : ViolationProbability
    per_bound : tuple of ViolationProbability (spec order)
    """
    cl = events.draw
    per_bound = tuple(
        _one(
            name,
            events.seen[:, j],
            events.grid[:, j],
            events.bridge[:, j],
            events.detected[:, j] if events.measured_observable[j] else None,
            None if events.detected_true is None else events.detected_true[:, j],
            cl,
            level=level,
            seed=seed,
        )
        for j, name in enumerate(events.bound_names)
    )
    joint = _one(
        "any",
        events.joint_seen,
        events.joint_grid,
        events.joint_bridge,
        events.joint_detected if events.measured_observable.any() else None,
        events.joint_detected_true,
        cl,
        level=level,
        seed=seed,
    )
    return joint, per_bound
