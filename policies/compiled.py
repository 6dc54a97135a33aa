"""Compiled simulators shared by the rollout and by policies that simulate (``safe_timing``)."""

from __future__ import annotations

from typing import Any

import jax

from medsim.models.base import PhysiologyModel
from medsim.simulate.cache import cached, model_key
from medsim.simulate.types import Bound


def compiled_simulator(
    model: PhysiologyModel, dt: float, bounds: tuple[Bound, ...], scheme: str = "milstein"
) -> tuple[Any, Any]:
    """A shared ``(Simulator, jitted model.observe)`` for this configuration (compiled once).

    Used by the rollout and by policies that simulate (``safe_timing``). Rollouts with an equal
    model, step, bounds and scheme (the policies of ``rollout_many``, repeated evaluations) reuse
    one set of compiled kernels; they are kept in medsim's one compile cache
    (:mod:`medsim.simulate.cache`, emptied by ``clear_caches()``).
    """
    from medsim.simulate import Simulator

    bounds = tuple(bounds)
    key = ("rollout-simulator", model_key(model), float(dt), bounds, scheme)
    return cached(key, lambda: (Simulator(model, dt=dt, bounds=bounds, scheme=scheme), jax.jit(model.observe)))
