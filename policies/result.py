"""The record of a closed-loop rollout: what the risk estimators and reports consume.

A rollout simulates ``N`` virtual patients under one policy over a horizon; patient ``n``
has up to ``K`` interactions (padded, ``mask``). Interaction ``k`` starts at ``t_start[n, k]``
(a measurement is taken there and the policy chooses an option) and ends at ``t_end[n, k]``
(the next interaction). Everything is numpy; shapes are given per field. ``J`` is the number of
bounds of the safety specification, in its order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from medsim.simulate.types import Bound

#: The per-bound interval statistics a rollout copies from the simulator's
#: :class:`~medsim.simulate.types.IntervalStats` into :class:`RolloutResult` (``(N, K, J)`` arrays,
#: in this order), each with the value that means "nothing happened": what entries past a
#: patient's horizon hold and what :meth:`RolloutResult.merge` pads with. The one list of these
#: names: the host loop, the compiled loop and the result's assembly and merge read it.
PER_BOUND_FILL: Mapping[str, Any] = MappingProxyType(
    {
        "log_survival": 0.0,
        "grid_violation": False,
        "end_violation": False,
        "time_outside": 0.0,
        "first_outside": np.inf,
        "depth": 0.0,
    }
)

#: Names of the per-bound statistics (the keys of :data:`PER_BOUND_FILL`).
PER_BOUND: tuple[str, ...] = tuple(PER_BOUND_FILL)

#: What a rollout does with a patient it cannot simulate (``on_failure``): ``"stop"`` raises the
#: error naming the patient; ``"count"`` freezes the patient from the refused interval on and
#: records it as failed (:attr:`RolloutResult.failed_time`), and risk estimates count it as
#: violating every bound from then on.
ON_FAILURE: tuple[str, ...] = ("stop", "count")

#: Why a patient could not be simulated, by the code stored in :attr:`RolloutResult.failure_reason`
#: (0: simulated to the horizon). The one list of these codes: both option loops write them.
FAILURE_REASONS: Mapping[int, str] = MappingProxyType(
    {1: "non-finite state", 2: "runaway state", 3: "step budget", 4: "unusable option"}
)
NON_FINITE, RUNAWAY, STEP_BUDGET, UNUSABLE_OPTION = 1, 2, 3, 4


def check_on_failure(on_failure: str) -> str:
    """``on_failure`` if it is one of :data:`ON_FAILURE` (ValueError naming the choices otherwise)."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure: expected one of {ON_FAILURE}, got {on_failure!r}")
    return on_failure


@dataclass(frozen=True)
class RolloutResult:
    """Per-interaction statistics of a batch of virtual patients under one policy.

    Attributes
    ----------
    policy : str
        Policy name with its parameters (as given on the command line).
    bounds : tuple of Bound
        The monitored bounds (``J`` of them).
    horizon : float
        Simulated horizon in ``time_unit``.
    time_unit : str
    draw : (N,) int
        Posterior draw index of each virtual patient (same index = same epistemic parameters;
        used to split epistemic from aleatoric uncertainty). ``-1`` where not applicable.
    subject : (N,) str
        Fitted subject a personalized patient twins, or ``""`` for population patients.
    t_start, t_end : (N, K) float
        Interaction interval ends; padded entries have ``mask`` False.
    mask : (N, K) bool
    measured : Mapping observable -> (N, K) float
        The noisy measurement the policy saw at ``t_start`` (NaN where nothing was measured).
    true_start : Mapping observable -> (N, K) float
        The noise-free observable at ``t_start``.
    obs_min, obs_max : Mapping observable -> (N, K) float
        Running extremes over each interval's sub-step grid.
    log_survival : (N, K, J) float
        Bridge-corrected log probability of *not* crossing bound ``j`` within the interval.
    grid_violation, end_violation : (N, K, J) bool
        A sub-step grid point / the interval's end point lies outside the bound.
    time_outside, first_outside, depth : (N, K, J) float
        As in :class:`medsim.simulate.types.IntervalStats`.
    treatment : Mapping str -> (N, K) float
        What the policy gave at each interaction, named e.g. ``"bolus_cmt1"``, ``"rate_cmt1"``.
    efficacy : Mapping str -> (N,) float
        Per-patient efficacy metrics, e.g. ``"time_in_range"`` (fraction of the horizon).
    out_of_support : (N, K) float
        Fraction of each interval during which state or treatment lay outside what the fitted
        cohort supported; None when no support ranges were given (nothing was checked).
    path_time : (M, T) float, optional
        Save-grid times for the first ``M`` patients (fan charts); ``None`` if not saved.
    path : Mapping observable -> (M, T) float
        Observables on that grid.
    trace : Mapping observable -> (N, T) float
        Noise-free observables of every patient on the regular grid ``0, trace_step, ...`` before
        the horizon (CGM-like, :mod:`medsim.policies.traces`); empty when the model records none.
    trace_step : float
        Spacing of that grid in ``time_unit`` (nan without traces).
    clock_start_h : float
        Clock time (h after midnight) at time 0, for time-of-day profiles.
    seed : int
    provenance : Mapping
        Model name/version, data hash, posterior file, package versions, simulator settings.
    failed_time : (N,) float, optional
        Simulated time at which a patient that could not be simulated was frozen (the start of
        the refused interval; its intervals from there on are masked), ``+inf`` for patients
        simulated to the horizon; None when the rollout stopped on failures (``on_failure="stop"``).
    failure_reason : (N,) int8, optional
        :data:`FAILURE_REASONS` code of each failed patient (0 for the others).
    """

    policy: str
    bounds: tuple[Bound, ...]
    horizon: float
    time_unit: str
    draw: np.ndarray
    subject: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    mask: np.ndarray
    measured: Mapping[str, np.ndarray]
    true_start: Mapping[str, np.ndarray]
    obs_min: Mapping[str, np.ndarray]
    obs_max: Mapping[str, np.ndarray]
    log_survival: np.ndarray
    grid_violation: np.ndarray
    end_violation: np.ndarray
    time_outside: np.ndarray
    first_outside: np.ndarray
    depth: np.ndarray
    treatment: Mapping[str, np.ndarray] = field(default_factory=dict)
    efficacy: Mapping[str, np.ndarray] = field(default_factory=dict)
    out_of_support: np.ndarray | None = None
    path_time: np.ndarray | None = None
    path: Mapping[str, np.ndarray] = field(default_factory=dict)
    trace: Mapping[str, np.ndarray] = field(default_factory=dict)
    trace_step: float = float("nan")
    clock_start_h: float = 0.0
    seed: int = 0
    provenance: Mapping = field(default_factory=dict)
    failed_time: np.ndarray | None = None
    failure_reason: np.ndarray | None = None

    @property
    def n_patients(self) -> int:
        return int(self.mask.shape[0])

    @property
    def failed(self) -> np.ndarray:
        """(N,) bool: patients that could not be simulated to the horizon."""
        if self.failed_time is None:
            return np.zeros(self.n_patients, bool)
        return np.isfinite(np.asarray(self.failed_time, float))

    def merge(self, other: RolloutResult) -> RolloutResult:
        """Concatenate two rollouts of the same policy over disjoint patients (chunks).

        Interaction axes are padded to the longer of the two, so chunks computed independently
        (or on other machines) merge exactly.
        """
        if self.policy != other.policy or self.bounds != other.bounds:
            raise ValueError("can only merge rollouts of the same policy and bounds")
        k = max(self.mask.shape[1], other.mask.shape[1])

        def pad(a: np.ndarray, fill) -> np.ndarray:
            if a.ndim < 2 or a.shape[1] == k:
                return a
            widths = [(0, 0), (0, k - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
            return np.pad(a, widths, constant_values=fill)

        def cat(a, b, fill=0):
            return np.concatenate([pad(np.asarray(a), fill), pad(np.asarray(b), fill)], axis=0)

        def catd(a, b, fill=0):
            return {key: cat(a[key], b[key], fill) for key in a}

        path_time = None
        path = {}
        if self.path_time is not None:
            path_time, path = self.path_time, dict(self.path)
        return RolloutResult(
            policy=self.policy,
            bounds=self.bounds,
            horizon=self.horizon,
            time_unit=self.time_unit,
            draw=np.concatenate([self.draw, other.draw]),
            subject=np.concatenate([self.subject, other.subject]),
            t_start=cat(self.t_start, other.t_start, np.nan),
            t_end=cat(self.t_end, other.t_end, np.nan),
            mask=cat(self.mask, other.mask, False),
            measured=catd(self.measured, other.measured, np.nan),
            true_start=catd(self.true_start, other.true_start, np.nan),
            obs_min=catd(self.obs_min, other.obs_min, np.nan),
            obs_max=catd(self.obs_max, other.obs_max, np.nan),
            **{name: cat(getattr(self, name), getattr(other, name), fill) for name, fill in PER_BOUND_FILL.items()},
            treatment=catd(self.treatment, other.treatment, 0.0),
            efficacy={key: np.concatenate([self.efficacy[key], other.efficacy[key]]) for key in self.efficacy},
            out_of_support=None
            if self.out_of_support is None or other.out_of_support is None
            else cat(self.out_of_support, other.out_of_support, 0.0),
            path_time=path_time,
            path=path,
            trace={key: np.concatenate([self.trace[key], other.trace[key]]) for key in self.trace},
            trace_step=self.trace_step,
            clock_start_h=self.clock_start_h,
            seed=self.seed,
            provenance=self.provenance,
            **_merged_failures(self, other),
        )


def _merged_failures(a: RolloutResult, b: RolloutResult) -> dict:
    """``failed_time`` and ``failure_reason`` of ``a`` then ``b`` (None when neither counted failures)."""
    if a.failed_time is None and b.failed_time is None:
        return {}

    def part(r: RolloutResult) -> tuple[np.ndarray, np.ndarray]:
        if r.failed_time is None:
            return np.full(r.n_patients, np.inf), np.zeros(r.n_patients, np.int8)
        return np.asarray(r.failed_time, float), np.asarray(r.failure_reason, np.int8)

    (ta, ra), (tb, rb) = part(a), part(b)
    return {"failed_time": np.concatenate([ta, tb]), "failure_reason": np.concatenate([ra, rb])}
