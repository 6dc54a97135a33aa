"""The batched SDE simulator: sub-steps, dose events and interval statistics for virtual patients.

Owns stepping (Euler–Maruyama, diagonal Milstein), counter-based per-patient Brownian increments,
dose-event handling, the fused Brownian-bridge interval statistics and noise-free schedules for
predictive checks. May import ``medsim.models`` (and jax / numpy); never ``inference`` or
``policies``.
"""

from medsim.simulate.schedule import simulate_schedule
from medsim.simulate.simulator import AdvanceResult, Simulator
from medsim.simulate.types import Bound, DoseEvents, IntervalStats, SavedPath

__all__ = [
    "AdvanceResult",
    "Bound",
    "DoseEvents",
    "IntervalStats",
    "SavedPath",
    "Simulator",
    "simulate_schedule",
]
