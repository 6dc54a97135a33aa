"""How bad violations are: depth, duration, and the expected cumulative cost.

Chance-constrained control has two ways to say "unsafe": the probability that the trajectory
ever leaves the safe set (a joint chance constraint), and an expected cumulative cost such as
the expected time spent outside. They are not interchangeable — optimal policies under the
first may randomise, and the second is a conservative stand-in (flipping-based policies,
NeurIPS 2024, arXiv 2410.06474) — so reports give both side by side.

Per patient and bound (grid quantities, from the simulator's interval statistics):
``time_outside`` = total time outside over the horizon (trapezoid rule on the sub-step grid),
``depth`` = largest exceedance beyond the bound (observable's unit). The joint expected time
outside sums the tightest bound per (observable, side): exact for one observable's two-sided
window (upper and lower excursions are disjoint in time), an upper bound across observables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsim.policies.result import RolloutResult
from medsim.policies.risk import intervals
from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.events import PatientEvents, bound_indices, tightest_groups
from medsim.policies.spec import SafetySpec


@dataclass(frozen=True)
class Severity:
    """Depth and duration of violations of one bound.

    Attributes
    ----------
    bound : str
    expected_time_outside : Estimate
        Mean over all patients of the time spent outside (model time unit): the expected
        cumulative cost.
    expected_depth : Estimate
        Mean over all patients of the largest exceedance (0 for patients who stayed inside).
    time_outside_if_violated, depth_if_violated : Estimate
        Means among patients with a grid violation (n = those patients).
    depth_q95_if_violated : Estimate
        95th percentile of the depth among them (order-statistic interval).
    """

    bound: str
    expected_time_outside: Estimate
    expected_depth: Estimate
    time_outside_if_violated: Estimate
    depth_if_violated: Estimate
    depth_q95_if_violated: Estimate


@dataclass(frozen=True)
class JointCost:
    """Expected cumulative cost next to the joint violation probability.

    Attributes
    ----------
    expected_time_outside : Estimate
        Mean time outside the safe set per patient (model time unit).
    expected_fraction_outside : Estimate
        The same as a fraction of each patient's simulated time.
    """

    expected_time_outside: Estimate
    expected_fraction_outside: Estimate


def _per_patient(result: RolloutResult, spec: SafetySpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, J) time outside and depth per patient and bound, and (N,) simulated time."""
    idx = bound_indices(result, spec)
    mask = np.asarray(result.mask, bool)[:, :, None]
    outside = np.where(mask, np.nan_to_num(np.asarray(result.time_outside, float)[:, :, idx]), 0.0).sum(axis=1)
    depth = np.where(mask, np.nan_to_num(np.asarray(result.depth, float)[:, :, idx]), 0.0).max(axis=1, initial=0.0)
    length = np.where(mask[:, :, 0], np.asarray(result.t_end, float) - np.asarray(result.t_start, float), 0.0)
    return outside, depth, length.sum(axis=1)


def severities(
    result: RolloutResult,
    spec: SafetySpec,
    events: PatientEvents,
    *,
    level: float,
    seed: int | None,
    per_patient: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[tuple[Severity, ...], JointCost]:
    """Per-bound severities and the joint expected cost of ``result`` under ``spec``.

    Patients that could not be simulated are left out (their time outside and depth past the
    failure are unknown, and no value of them is conservative; :mod:`medsim.policies.risk.failed`).
    ``per_patient``: the (N, J) time outside and depth per spec bound and (N,) simulated time,
    when known without the recorded interactions (a streamed rollout's sums); ``result`` then
    needs only ``failed``.
    """
    outside, depth, length = _per_patient(result, spec) if per_patient is None else per_patient
    keep = ~result.failed
    outside, depth, length = outside[keep], depth[keep], length[keep]
    cl = events.draw[keep]
    grid = events.grid[keep]
    kw = {"level": level, "seed": seed}
    if not keep.any():
        none = Estimate.without_interval(np.nan, 0, "none", "no patient could be simulated", seed, level)
        sev = tuple(Severity(b.name, none, none, none, none, none) for b in spec.bounds)
        return sev, JointCost(none, none)
    nn = {"nonnegative": True, **kw}
    out = []
    for j, b in enumerate(spec.bounds):
        hit = grid[:, j]
        cl_hit = cl[hit]
        if hit.any():
            t_if = intervals.mean(outside[hit, j], cl_hit, **nn)
            d_if = intervals.mean(depth[hit, j], cl_hit, **nn)
        else:
            t_if = d_if = Estimate.without_interval(np.nan, 0, "none violated", "no patient violated", seed, level)
        out.append(
            Severity(
                bound=b.name,
                expected_time_outside=intervals.mean(outside[:, j], cl, **nn),
                expected_depth=intervals.mean(depth[:, j], cl, **nn),
                time_outside_if_violated=t_if,
                depth_if_violated=d_if,
                depth_q95_if_violated=intervals.quantile(depth[hit, j], 0.95, **kw),
            )
        )
    joint = outside[:, tightest_groups(spec)].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(length > 0, joint / length, 0.0)
    cost = JointCost(
        expected_time_outside=intervals.mean(joint, cl, **nn),
        expected_fraction_outside=intervals.mean(np.clip(frac, 0.0, 1.0), cl, unit_interval=True, **kw),
    )
    return tuple(out), cost
