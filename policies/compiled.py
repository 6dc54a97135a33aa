"""Compiled simulators shared by the rollout and by policies that simulate (``safe_timing``)."""

from __future__ import annotations

import json
from typing import Any

import jax

from medsim.models.base import PhysiologyModel
from medsim.simulate.types import Bound

# Compiled simulators by configuration: rollouts with the same model, step, bounds and scheme (e.g.
# the policies of rollout_many, or repeated evaluations) reuse one set of compiled kernels. The
# model enters the key by class and full description, so differently parametrised instances differ.
_COMPILED: dict[tuple, tuple[Any, Any]] = {}
_COMPILED_MAX = 8


def compiled_simulator(
    model: PhysiologyModel, dt: float, bounds: tuple[Bound, ...], scheme: str = "milstein"
) -> tuple[Any, Any]:
    """A shared ``(Simulator, jitted model.observe)`` for this configuration (compiled once).

    Used by the rollout and by policies that simulate (``safe_timing``).
    """
    from medsim.simulate import Simulator

    bounds = tuple(bounds)
    key = (type(model), json.dumps(model.describe(), sort_keys=True, default=str), float(dt), bounds, scheme)
    if key not in _COMPILED:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = (Simulator(model, dt=dt, bounds=bounds, scheme=scheme), jax.jit(model.observe))
    return _COMPILED[key]
