"""Patients a rollout could not simulate, as a risk report records and announces them.

With ``on_failure="count"`` (:mod:`medsim.policies.failures`) a patient the simulator refuses is
frozen where its refused interval started. Unknown is never safe: every risk estimate counts it as
violating every bound from that time on (the joint and per-bound probabilities, the verdict, the
sequential test, the epistemic split and the paired comparisons through
:func:`~medsim.policies.risk.events.patient_events`; the risk curves and time to first violation
through :func:`~medsim.policies.risk.curve.first_grid_time`; the out-of-support share counts its
remaining time as outside). Summaries that have no conservative value (time outside and depth,
glucose metrics and the AGP, efficacy means) exclude it; :func:`failed_patients` says how many.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medsim.policies.result import FAILURE_REASONS, RolloutResult

#: Failed patients listed by index in a report (the count is always complete).
MAX_LISTED = 20


@dataclass(frozen=True)
class FailedPatients:
    """The patients of one policy's rollout that could not be simulated.

    Attributes
    ----------
    count, n_patients : int
        Failed patients, and all patients.
    indices : tuple of int
        Patient indices in the population (the first :data:`MAX_LISTED`).
    times : tuple of float
        Simulated time at which each listed patient was frozen (model time unit).
    reasons : tuple of str
        Why, per listed patient (:data:`medsim.policies.result.FAILURE_REASONS`).
    by_reason : dict str -> int
        Failed patients per reason (all of them).
    message : str
        The report's warning.
    """

    count: int
    n_patients: int
    indices: tuple[int, ...]
    times: tuple[float, ...]
    reasons: tuple[str, ...]
    by_reason: dict[str, int] = field(default_factory=dict)
    message: str = ""


def failed_patients(result: RolloutResult, time_unit: str) -> FailedPatients | None:
    """The failed patients of ``result`` (None when none failed, or failures were not counted)."""
    failed = result.failed
    if not failed.any():
        return None
    where = np.flatnonzero(failed)
    codes = np.asarray(result.failure_reason, int)
    times = np.asarray(result.failed_time, float)
    listed = where[:MAX_LISTED]
    names = [FAILURE_REASONS.get(int(c), f"code {int(c)}") for c in codes[where]]
    by_reason = {name: names.count(name) for name in dict.fromkeys(names)}
    k, n = int(where.size), int(failed.size)
    first = ", ".join(f"{int(i)} at t={times[i]:g} {time_unit}" for i in listed[:5])
    more = f", ... ({k - 5} more)" if k > 5 else ""
    why = ", ".join(f"{name}: {c}" for name, c in by_reason.items())
    message = (
        f"{k} of {n} patients could not be simulated (first indices {first}{more}; reasons {why}); they are "
        "counted as violating every bound from the time they failed, so a PASS verdict holds with them counted "
        f"as violations (conservative). Time outside, depth, glucose metrics and efficacy exclude them ({k} excluded)"
    )
    return FailedPatients(
        count=k,
        n_patients=n,
        indices=tuple(int(i) for i in listed),
        times=tuple(float(times[i]) for i in listed),
        reasons=tuple(names[:MAX_LISTED]),
        by_reason=by_reason,
        message=message,
    )
