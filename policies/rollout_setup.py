"""The rollout's per-run settings and the checks and inputs of each interaction.

:class:`_Setup` holds what one :func:`medsim.policies.rollout.rollout` call fixes (model, bounds,
simulator, scenario, limits); the functions here are the pieces of one interaction that both option
loops use — the noisy measurement, the dose events of an interval, the work and first-interval
checks — so that the host loop (:mod:`medsim.policies.rollout`), the compiled loop
(:mod:`medsim.policies.rollout_device`) and the RL environment (:mod:`medsim.policies.env`) share them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from medsim.policies.array_step import HostMeasure
from medsim.policies.compiled import compiled_simulator
from medsim.policies.protocol import Policy, PolicyError
from medsim.policies.targets import check_support, range_bounds, target_range
from medsim.policies.traces import trace_grid
from medsim.population.streams import Stream, patient_normal
from medsim.population.virtual import VirtualPopulation
from medsim.simulate import budget
from medsim.simulate.types import DoseEvents

NoiseIndex = Callable[[np.ndarray, np.ndarray], np.ndarray]


class _Setup:
    """Everything a chunk needs that does not depend on the chunk (built once per rollout)."""

    def __init__(
        self,
        model,
        bounds,
        horizon,
        dt,
        seed,
        scenario,
        measurement_noise,
        target,
        support,
        scheme,
        max_interactions,
        max_memory=None,
    ):
        self.model, self.bounds, self.horizon, self.seed = model, tuple(bounds), float(horizon), int(seed)
        self.scenario, self.noise, self.max_interactions = scenario, bool(measurement_noise), int(max_interactions)
        self.max_memory = max_memory
        self.n_total = 0  # patients of the whole rollout (set by _rollout), for the memory estimate
        self.noise_index: NoiseIndex | None = None  # (patient, k) -> stream index of the noise (rollout())
        self.streaming = False  # only per-patient sums are kept (policies.rollout_device.streaming_rollout)
        self.on_failure = "stop"  # or "count": patients that cannot be simulated (policies.failures)
        self.target = target_range(model, self.bounds, target)
        self.support = dict(support or {})
        check_support(model, self.support)
        self.target_bounds = () if self.target is None else range_bounds(model, *self.target, "target")
        self.support_bounds = tuple(
            b
            for k, (lo, hi) in self.support.items()
            if k in model.observable_names
            for b in range_bounds(model, k, float(lo), float(hi), "support")
        )
        all_bounds = self.bounds + self.target_bounds + self.support_bounds
        self.sim, self.observe = compiled_simulator(model, dt, all_bounds, scheme)
        self.measured_obs = tuple(o for o in model.observable_names if o in model.residual)
        self.measure = HostMeasure(model, self.measured_obs, self.noise)
        self.cmts = tuple(sorted(model.dose_targets))
        self.tol = 1e-9 * max(1.0, self.horizon)
        # CGM-like traces for the glucose consensus metrics (policies.traces); None for other models.
        self.trace_grid = trace_grid(model.glucose_observable, self.horizon, model.time_unit)


def _measure(setup: _Setup, pop: VirtualPopulation, true: Mapping[str, np.ndarray], patient, k, take) -> dict:
    """Noisy measurements ``y = f + sd(f) z`` with z from the (seed, MEASUREMENT, patient, k) stream."""
    z = patient_normal(setup.seed, Stream.MEASUREMENT, patient, k, width=max(len(setup.measured_obs), 1))
    names = setup.measured_obs
    add = {o: pop.residual[f"{o}_add"] for o in names if f"{o}_add" in pop.residual}
    prop = {o: pop.residual[f"{o}_prop"] for o in names if f"{o}_prop" in pop.residual}
    return setup.measure({o: true[o] for o in names}, add, prop, z, take)  # as the compiled loop does


def planned_memory(
    model, n_bounds: int, n_patients: int, interactions: float, n_events: int, horizon: float, *, streaming=False
) -> float:
    """Bytes a rollout of ``n_patients`` keeps: per-interaction rows (one row per patient when only
    streaming sums are kept), the dose events of each patient, and the CGM-like traces of models
    that record them (:mod:`medsim.policies.traces`).

    Each row is stored three times (the row, its stacked copy and the merged result).
    """
    n_obs = len(model.observable_names)
    n_measured = sum(1 for o in model.observable_names if o in model.residual)
    floats = 3 + n_measured + 3 * n_obs + 2 * len(model.dose_targets) + 4 * n_bounds
    row_bytes = 3 * (8 * floats + 3 * max(n_bounds, 1))
    rows = 1 if streaming else interactions
    memory = n_patients * (rows * row_bytes + 16 * 3 * n_events)
    grid = None if streaming else trace_grid(model.glucose_observable, float(horizon), model.time_unit)
    if grid is not None:  # float32 traces: the chunk's buffer and the merged copy (not kept with sums only)
        memory += n_patients * 2 * 4 * grid.n_points * len(grid.observables)
    return memory


def _check_work(setup: _Setup, policy: Policy, interactions: float, n_events: int, why: str) -> None:
    """Refuse a rollout whose interactions or memory exceed the limits, before simulating it."""
    n, unit = max(setup.n_total, 1), setup.model.time_unit
    memory = planned_memory(
        setup.model, len(setup.bounds), n, interactions, n_events, setup.horizon, streaming=setup.streaming
    )
    budget.check_work(
        interactions=interactions,
        memory=memory,
        max_interactions=setup.max_interactions,
        max_memory=setup.max_memory,
        detail=f"policy {policy.name!r} on {n} patients over a {setup.horizon:g} {unit} horizon ({why})",
        interactions_option="max_interactions (medsim risk: --max-interactions)",
        memory_option="max_memory (medsim risk: --max-memory)",
    )


def _dose_events(setup: _Setup, t: np.ndarray, bolus: Mapping[int, np.ndarray], scen: DoseEvents | None):
    """The policy's boluses at ``t`` (one column per compartment) followed by the scenario's events."""
    time = np.stack([np.where(bolus[c] > 0, t, np.inf) for c in setup.cmts], 1)
    cmt = np.broadcast_to(np.asarray(setup.cmts), time.shape)
    events = DoseEvents.from_arrays(time, cmt, np.stack([bolus[c] for c in setup.cmts], 1))
    if scen is None:
        return events
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=1), events, scen)


def chunk_scenario(setup: _Setup, policy: Policy, patient: np.ndarray, x, theta) -> DoseEvents | None:
    """Checks before a chunk's first sub-step (work of the announced events, step stability) and
    the chunk's scenario events (one patient's first: their number is known before all are built)."""
    scenario, model = setup.scenario, setup.model
    if scenario is not None:
        probe = scenario.events(patient[:1], setup.horizon, time_unit=model.time_unit)
        n_events = int(np.isfinite(np.asarray(probe.time)).sum())
        why = f"{n_events} scenario events per patient"
        _check_work(setup, policy, n_events if scenario.announced else 0, n_events, why)
    scen = None if scenario is None else scenario.events(patient, setup.horizon, time_unit=model.time_unit)
    setup.sim.check_step(x, theta, patients=patient)
    return scen


def check_first_interval(setup: _Setup, policy: Policy, interval: float, scen: DoseEvents | None) -> None:
    """Refuse a rollout whose first interval (the least over patients) needs too many interactions."""
    announces = scen is not None and setup.scenario.announced
    n_events = 0 if scen is None else int(scen.time.shape[1])
    interactions = max(budget.interaction_count(setup.horizon, interval), n_events if announces else 0)
    why = f"an interaction every {interval:g} {setup.model.time_unit}"
    _check_work(setup, policy, interactions, n_events, why)


def check_interaction_count(setup: _Setup, policy: Policy, done: int) -> None:
    """Refuse another interaction once ``max_interactions`` have been simulated."""
    if done >= setup.max_interactions:
        raise PolicyError(
            f"policy {policy.name!r}: over {setup.max_interactions} interactions before the horizon; raise "
            "max_interactions (medsim risk: --max-interactions) if the policy means to act that often"
        )
