"""Rollout results from per-interaction rows: the support fraction of each interval, the stacking
of a chunk's rows into a :class:`~medsim.policies.result.RolloutResult`, and the merge of chunks.

Split from :mod:`medsim.policies.rollout`, which owns the option loop; this module only reshapes what the
loop recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from medsim.policies.interaction import Interaction
from medsim.policies.paths import compress_segments
from medsim.policies.protocol import Policy
from medsim.policies.result import PER_BOUND_FILL, RolloutResult
from medsim.population.virtual import VirtualPopulation
from medsim.simulate.types import DoseEvents

if TYPE_CHECKING:
    from medsim.policies.rollout_setup import _Setup


def support_fraction(
    setup: _Setup, outside: np.ndarray, treatment: Mapping[str, np.ndarray], length: np.ndarray, active: np.ndarray
) -> np.ndarray:
    """Fraction of each interval outside the cohort's support (see :func:`rollout`)."""
    per_obs: dict[str, np.ndarray] = {}
    for i, b in enumerate(setup.support_bounds):  # a lower and an upper excursion cannot overlap in time
        per_obs[b.observable] = per_obs.get(b.observable, 0.0) + outside[:, i]
    safe_length = np.where(length > 0, length, 1.0)
    frac = np.zeros(length.shape)
    for total in per_obs.values():
        frac = np.maximum(frac, np.clip(total / safe_length, 0.0, 1.0))
    for key, (lo, hi) in setup.support.items():
        if key in treatment:
            value = treatment[key]
            given = value > 0 if key.startswith("bolus") else np.ones(value.shape, bool)
            frac = np.where(given & ((value < lo) | (value > hi)), 1.0, frac)
    return np.where(active & (length > 0), frac, 0.0)


def scenario_totals(events: DoseEvents | None, horizon: float, n_real: int) -> dict[int, np.ndarray]:
    """Amount each patient received from scenario events before ``horizon``, per compartment.

    A bolus counts when given before the horizon; an infusion counts for its overlap with
    ``[0, horizon)``.
    """
    if events is None:
        return {}
    time = np.asarray(events.time, np.float64)[:n_real]
    cmt = np.asarray(events.cmt)[:n_real]
    amount = np.asarray(events.amount, np.float64)[:n_real]
    rate = np.asarray(events.rate, np.float64)[:n_real]
    given = np.isfinite(time) & (time < horizon)
    infused = rate > 0
    duration = np.where(infused, amount / np.where(infused, rate, 1.0), 0.0)
    overlap = np.clip(np.minimum(time + duration, horizon) - time, 0.0, None)
    delivered = np.where(given, np.where(infused, rate * overlap, amount), 0.0)
    return {int(c): np.where(cmt == c, delivered, 0.0).sum(axis=1) for c in np.unique(cmt[given])}


def target_shares(outside_target: np.ndarray, target_bounds: tuple, horizon: float) -> dict[str, np.ndarray]:
    """``time_below_range``, ``time_above_range`` and ``time_in_range`` (fractions of the horizon) from
    each patient's time outside each target bound (``(n, len(target_bounds))``)."""
    n = outside_target.shape[0]
    below = sum((outside_target[:, i] for i, b in enumerate(target_bounds) if b.side == "lower"), 0.0)
    above = sum((outside_target[:, i] for i, b in enumerate(target_bounds) if b.side == "upper"), 0.0)
    shares = {"time_below_range": np.zeros(n) + below / horizon, "time_above_range": np.zeros(n) + above / horizon}
    shares["time_in_range"] = 1.0 - shares["time_below_range"] - shares["time_above_range"]
    return shares


def assemble(
    setup: _Setup,
    pop: VirtualPopulation,
    policy: Policy,
    rows: list[Interaction],
    outside_target: np.ndarray,
    paths: list,
    n_real: int,
    *,
    scenario_events: DoseEvents | None = None,
    trace: Mapping[str, np.ndarray] | None = None,
    failures: tuple[np.ndarray, np.ndarray] | None = None,
) -> RolloutResult:
    """Stack the :class:`~medsim.policies.interaction.Interaction` records of the ``n_real`` real
    patients into (N, K[, J]) arrays; entries past a patient's horizon get the padding values of
    ``RolloutResult.merge`` (:data:`medsim.policies.result.PER_BOUND_FILL` for the per-bound ones).

    ``total_dose_cmt<c>`` counts what the policy gave and what the scenario delivered into
    compartment ``c`` before the horizon (the meals of a meal scenario); ``trace`` holds the
    chunk's CGM-grid traces (:mod:`medsim.policies.traces`).

    ``failures``: the ``(time, reason)`` of the real patients when failed patients are counted
    (:mod:`medsim.policies.failures`); their efficacy metrics and traces become NaN (no value of
    theirs is known past the failure), and trailing rows in which every patient was already frozen
    are dropped (the host loop stops there, the compiled loop records one such row)."""
    while len(rows) > 1 and not rows[-1].mask[:n_real].any():
        rows = rows[:-1]
    mask = np.stack([r.mask[:n_real] for r in rows], axis=1)

    def stack(key: str, fill: Any = np.nan, dtype: Any = None) -> np.ndarray:
        out = np.stack([getattr(r, key)[:n_real] for r in rows], axis=1)
        off = ~mask if out.ndim == 2 else ~mask[:, :, None]
        return np.where(off, fill, out).astype(dtype or out.dtype)

    def stackd(key: str, fill: float = np.nan, dtype: Any = np.float32) -> dict[str, np.ndarray]:
        names = getattr(rows[0], key)
        out = {name: np.stack([getattr(r, key)[name][:n_real] for r in rows], axis=1) for name in names}
        return {name: np.where(mask, v, fill).astype(dtype) for name, v in out.items()}

    treatment = stackd("treatment", 0.0, np.float64)
    length = np.where(mask, stack("t_end", 0.0) - stack("t_start", 0.0), 0.0)
    efficacy = {
        f"total_dose_cmt{c}": (treatment[f"bolus_cmt{c}"] + treatment[f"rate_cmt{c}"] * length).sum(1)
        for c in setup.cmts
    }
    for c, amount in scenario_totals(scenario_events, setup.horizon, n_real).items():
        efficacy[f"total_dose_cmt{c}"] = efficacy.get(f"total_dose_cmt{c}", 0.0) + amount
    if setup.target is not None:
        efficacy |= target_shares(outside_target, setup.target_bounds, setup.horizon)
    path_time, path = compress_segments(paths)
    extra = {}
    if failures is not None:
        failed_time, reason = (np.asarray(a) for a in failures)
        failed = reason > 0
        efficacy = {key: np.where(failed, np.nan, v) for key, v in efficacy.items()}
        trace = {o: np.where(failed[:, None], np.float32(np.nan), v) for o, v in (trace or {}).items()}
        extra = {"failed_time": failed_time.astype(np.float64), "failure_reason": reason.astype(np.int8)}
    return RolloutResult(
        policy=policy.name,
        bounds=setup.bounds,
        horizon=setup.horizon,
        time_unit=setup.model.time_unit,
        draw=np.asarray(pop.draw),
        subject=np.asarray(pop.subject),
        t_start=stack("t_start"),
        t_end=stack("t_end"),
        mask=mask,
        measured=stackd("measured"),
        true_start=stackd("true_start"),
        obs_min=stackd("obs_min"),
        obs_max=stackd("obs_max"),
        treatment=treatment,
        efficacy=efficacy,
        # without support ranges nothing was checked: None (unknown), never 0 (inside)
        out_of_support=stack("out_of_support", 0.0) if setup.support else None,
        path_time=path_time,
        path=path,
        trace=dict(trace or {}),
        trace_step=float("nan") if setup.trace_grid is None else setup.trace_grid.step,
        clock_start_h=float(getattr(setup.scenario, "start_clock_h", 0.0)),
        seed=setup.seed,
        **{name: stack(name, fill) for name, fill in PER_BOUND_FILL.items()},
        **extra,
    )


def merge_all(parts: list[RolloutResult]) -> RolloutResult:
    """Pairwise (balanced) merge of chunk results: O(N log chunks) copying instead of O(N chunks)."""
    while len(parts) > 1:
        parts = [parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]
