"""The batched SDE simulator: sub-steps, dose events and interval statistics for virtual patients.

Owns stepping (Euler–Maruyama, diagonal Milstein), counter-based per-patient Brownian increments,
dose-event handling, the fused Brownian-bridge interval statistics, noise-free schedules for
predictive checks, medsim's one cache of compiled kernels (``clear_caches``), the chunk sizing per
device, and the checks that a simulated number can be trusted (finite, physical, a
stable step, bounded work). May import ``medsim.models`` (and jax / numpy); never ``inference`` or
``policies``.
"""

from medsim.simulate.budget import WorkLimitError
from medsim.simulate.cache import clear_caches
from medsim.simulate.checks import NonFiniteStateError, RunawayStateError, SimulationError
from medsim.simulate.schedule import simulate_schedule
from medsim.simulate.simulator import AdvanceResult, Simulator
from medsim.simulate.stability import UnstableStepError
from medsim.simulate.types import Bound, DoseEvents, IntervalStats, SavedPath

__all__ = [
    "AdvanceResult",
    "Bound",
    "DoseEvents",
    "IntervalStats",
    "NonFiniteStateError",
    "RunawayStateError",
    "SavedPath",
    "SimulationError",
    "Simulator",
    "UnstableStepError",
    "WorkLimitError",
    "clear_caches",
    "simulate_schedule",
]
