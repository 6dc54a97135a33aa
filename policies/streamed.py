"""A policy's rollout kept as per-patient sums for every patient, rows for the first few.

A recorded rollout (:class:`~medsim.policies.result.RolloutResult`) keeps every interaction of
every patient: about 100 KB per patient-day with CGM every 5 minutes, so 10^6 glucose patients
would need ~100 GB. A *streamed* rollout keeps instead

* for every patient, the per-patient sums the compiled loop reduces as it goes
  (:class:`~medsim.policies.streaming.StreamingSums`, memory ``O(N J)``): everything the
  violation probabilities, verdicts, sequential test, epistemic split, first-violation times,
  severities, efficacy, failed patients and paired comparisons read;
* for the first ``recorded`` patients, the recorded rollout (same patients, same random streams):
  what needs a patient's whole course, namely the risk curves, tightening margins, the
  out-of-support share, glucose metrics and AGP from the CGM-grid traces, and fan charts.

:func:`medsim.policies.risk.report.risk_report` takes either kind; the report says which estimates
come from the recorded patients (:attr:`~medsim.policies.risk.report.PolicyRisk.recorded_patients`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsim.policies.result import RolloutResult
from medsim.policies.rollout_assemble import target_shares
from medsim.policies.streaming import StreamingSums, sums_events
from medsim.simulate.types import Bound

#: Patients whose every interaction is recorded in a streamed evaluation, by default.
DEFAULT_RECORDED = 2000


@dataclass(frozen=True)
class StreamedRollout:
    """Per-patient sums of a policy's rollout over ``N`` patients, and the recorded rollout of the first ones.

    Attributes
    ----------
    policy : str
    bounds : tuple of Bound
        The rollout's monitored bounds (the sums' ``J`` columns).
    horizon : float
    time_unit : str
    seed : int
    draw, subject : (N,) arrays
        As in :class:`~medsim.policies.result.RolloutResult`.
    sums : StreamingSums
        Every patient's sums, with ``failed_time`` and ``failure_reason``.
    efficacy : mapping str -> (N,) float
        The per-patient efficacy metrics a recorded rollout computes (total dose per compartment,
        time below / above / in the target range), NaN for failed patients.
    rows : RolloutResult
        The first ``rows.n_patients`` patients, every interaction recorded.
    provenance : mapping
    """

    policy: str
    bounds: tuple[Bound, ...]
    horizon: float
    time_unit: str
    seed: int
    draw: np.ndarray
    subject: np.ndarray
    sums: StreamingSums
    efficacy: Mapping[str, np.ndarray]
    rows: RolloutResult
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_patients(self) -> int:
        return int(np.asarray(self.sums.length).shape[0])

    @property
    def failed_time(self) -> np.ndarray:
        return np.asarray(self.sums.failed_time, float)

    @property
    def failure_reason(self) -> np.ndarray:
        return np.asarray(self.sums.failure_reason, np.int8)

    @property
    def failed(self) -> np.ndarray:
        """(N,) bool: patients that could not be simulated to the horizon."""
        return np.isfinite(self.failed_time)

    def events(self, spec):
        """:class:`~medsim.policies.risk.events.PatientEvents` of every patient for ``spec``."""
        return sums_events(self.sums, self.bounds, spec, self.draw, self.policy)


def streamed_efficacy(
    sums: StreamingSums, *, cmts: tuple, target_bounds: tuple[Bound, ...], horizon: float
) -> dict[str, np.ndarray]:
    """The efficacy metrics of :func:`medsim.policies.rollout_assemble.assemble`, from the sums.

    ``total_dose_cmt<c>``: what the policy gave (the sums' ``dose``) plus what the scenario's
    events delivered before the horizon (``scenario_dose``), per dose compartment;
    ``time_below_range`` / ``time_above_range`` / ``time_in_range``: the target
    bounds' time outside over the horizon. NaN for failed patients.
    """
    given = np.asarray(sums.dose, np.float64) + np.asarray(sums.scenario_dose, np.float64)
    efficacy = {f"total_dose_cmt{c}": given[:, i] for i, c in enumerate(cmts)}
    if target_bounds:
        efficacy |= target_shares(np.asarray(sums.outside_target, np.float64), target_bounds, horizon)
    failed = np.asarray(sums.failure_reason) > 0
    return {key: np.where(failed, np.nan, v) for key, v in efficacy.items()}


def first_grid_time_of_sums(sums: StreamingSums, bounds: tuple[Bound, ...], spec, policy: str) -> np.ndarray:
    """(N, J) first time a grid point was outside each spec bound (``+inf`` if never), from the sums.

    As :func:`medsim.policies.risk.curve.first_grid_time` reads a recorded rollout: a patient
    outside at its first interaction (time 0) violates there; a failed patient at its failure time.
    """
    from medsim.policies.risk.events import bound_indices_of

    idx = bound_indices_of(bounds, spec, policy)
    first = np.nan_to_num(np.asarray(sums.first_outside, float)[:, idx], nan=np.inf)
    first = np.where(np.asarray(sums.start_out, bool)[:, idx], 0.0, first)
    return np.minimum(first, np.asarray(sums.failed_time, float)[:, None])


def per_patient_severity(sums: StreamingSums, bounds: tuple[Bound, ...], spec, policy: str):
    """(N, J) time outside and depth per spec bound, and (N,) simulated time, from the sums."""
    from medsim.policies.risk.events import bound_indices_of

    idx = bound_indices_of(bounds, spec, policy)
    outside = np.asarray(sums.time_outside, float)[:, idx]
    depth = np.asarray(sums.depth, float)[:, idx]
    return outside, depth, np.asarray(sums.length, float)


def streamed_rollout(
    model,
    population,
    policy,
    *,
    bounds,
    horizon: float,
    dt: float,
    seed: int,
    scenario=None,
    target=None,
    support=None,
    scheme: str = "milstein",
    max_interactions: int | None = None,
    max_memory: int | None = None,
    recorded: int = DEFAULT_RECORDED,
    on_failure: str = "stop",
    progress=None,
    sums: StreamingSums | None = None,
) -> StreamedRollout:
    """``policy`` on ``population`` as a :class:`StreamedRollout`: the compiled loop's per-patient
    sums for every patient (:func:`~medsim.policies.rollout_device.streaming_rollout`), and the
    recorded rollout (:func:`~medsim.policies.rollout.rollout`) of the first ``recorded`` ones.

    Arguments as for :func:`~medsim.policies.rollout.rollout`. ``sums``: the sums computed
    elsewhere (e.g. sharded over a Dask cluster) for exactly these patients, bounds and seed.
    ``progress(done, total)`` is called as the streamed patients finish, then once for the
    recorded ones.

    Raises
    ------
    ValueError
        For a policy without an array step (Python policies need the recorded rollout), a scenario
        with infusions, or ``recorded < 1``.
    WorkLimitError
        When the work exceeds ``max_interactions`` or the recorded patients ``max_memory``.
    """
    from medsim.policies.rollout import rollout
    from medsim.policies.rollout_device import streaming_rollout
    from medsim.policies.targets import range_bounds, target_range

    if int(recorded) < 1:
        raise ValueError(f"recorded: expected at least 1 patient to record, got {recorded}")
    n = population.n_patients
    options = dict(bounds=bounds, horizon=horizon, dt=dt, seed=seed, scenario=scenario, target=target, scheme=scheme)
    limits = dict(max_interactions=max_interactions, on_failure=on_failure)
    if sums is None:
        sums = streaming_rollout(model, population, policy, **options, **limits, progress=progress)
    first = population.take(np.arange(min(int(recorded), n)))
    # The compiled loop, as for the sums (same numbers as the host loop; compiled once, then cached).
    rows = rollout(model, first, policy, **options, **limits, support=support, max_memory=max_memory, loop="device")
    if progress is not None:
        progress(1.0, 1.0)
    goal = target_range(model, tuple(bounds), target)
    target_bounds = () if goal is None else range_bounds(model, *goal, "target")
    cmts = tuple(sorted(model.dose_targets))
    efficacy = streamed_efficacy(sums, cmts=cmts, target_bounds=target_bounds, horizon=horizon)
    provenance = {**dict(rows.provenance), "statistics": f"streamed; {rows.n_patients} of {n} patients recorded"}
    return StreamedRollout(
        policy=rows.policy,
        bounds=tuple(rows.bounds),
        horizon=float(rows.horizon),
        time_unit=rows.time_unit,
        seed=int(rows.seed),
        draw=np.asarray(population.draw),
        subject=np.asarray(population.subject),
        sums=sums,
        efficacy=efficacy,
        rows=rows,
        provenance=provenance,
    )


def rows_refusal(
    model,
    population,
    policy,
    *,
    bounds,
    horizon: float,
    dt: float,
    seed: int,
    scenario=None,
    target=None,
    support=None,
    scheme: str = "milstein",
    max_interactions: int | None = None,
    max_memory: int | None = None,
):
    """The :class:`~medsim.simulate.budget.WorkLimitError` a recorded rollout of ``policy`` on all of
    ``population`` would raise before simulating (None when it fits the limits).

    The checks :func:`~medsim.policies.rollout.rollout` makes first (the scenario's events, the
    policy's first option on the first patient), made here without simulating: a cluster's workers
    check only their shard, so the caller decides for the whole population.
    """
    from medsim.policies.protocol import for_model
    from medsim.policies.rollout_device import check_first_option
    from medsim.policies.rollout_setup import _Setup, chunk_scenario
    from medsim.simulate import budget
    from medsim.transfer import to_device

    policy = for_model(policy, model)
    limit = budget.DEFAULT_MAX_INTERACTIONS if max_interactions is None else int(max_interactions)
    setup = _Setup(model, bounds, horizon, dt, seed, scenario, True, target, support, scheme, limit, max_memory)
    setup.n_total = population.n_patients
    first, patient = population.take(np.arange(1)), np.arange(1, dtype=np.int64)
    theta = {k: to_device(v, np.float32) for k, v in first.simulation_parameters().items()}
    x = {k: to_device(v, np.float32) for k, v in first.initial_state().items()}
    try:
        scen = chunk_scenario(setup, policy, patient, x, theta)
        check_first_option(setup, first, policy, patient, x, theta, scen)
    except budget.WorkLimitError as err:
        return err
    return None
