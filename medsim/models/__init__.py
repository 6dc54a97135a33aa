"""Physiology models: named states, parameters and observables with units, as pure JAX functions.

Owns the :class:`PhysiologyModel` contract, the registry and the calibration gate every model's
held-out check is judged by (:mod:`medsim.models.gate`). May import jax and numpy only.

Adding a model
--------------
1. Write ``medsim/models/my_model.py`` with a frozen dataclass subclassing
   :class:`PhysiologyModel` (states, parameters with priors and sources, observables, residual
   error, dose/observation compartments, and the ``initial_state``, ``drift``, ``diffusion`` and
   ``observe`` functions), citing where its equations and values come from.
2. Add one line to ``_REGISTRY`` below. ``medsim models`` then lists it, and every command that
   takes ``--model`` accepts its name.
"""

from __future__ import annotations

from collections.abc import Callable

from medsim.models.base import (
    Covariate,
    Observable,
    Parameter,
    PhysiologyModel,
    ResidualError,
    State,
)
from medsim.models.glucose_insulin import GlucoseInsulin
from medsim.models.glucose_ou import GlucoseOU
from medsim.models.pk_iv_1cmt import PKIV1Cmt
from medsim.models.pk_oral_1cmt import PKOral1Cmt
from medsim.models.uva_padova import UvaPadova

_REGISTRY: dict[str, Callable[[], PhysiologyModel]] = {
    "pk_oral_1cmt": PKOral1Cmt,
    "pk_iv_1cmt": PKIV1Cmt,
    "glucose_insulin": GlucoseInsulin,
    "t1d_ou": GlucoseOU,
    "uva_padova": UvaPadova,
    "uva_padova_adolescent": lambda: UvaPadova(group="adolescent", name="uva_padova_adolescent"),
    "uva_padova_child": lambda: UvaPadova(group="child", name="uva_padova_child"),
}


class UnknownModelError(KeyError):
    """Raised when a model name is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def available() -> tuple[str, ...]:
    """Names of the registered models."""
    return tuple(_REGISTRY)


def get(name: str) -> PhysiologyModel:
    """Instantiate the registered model ``name``.

    Raises
    ------
    UnknownModelError
        If ``name`` is not registered; the message lists the registered names.
    """
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; registered models: {', '.join(_REGISTRY)}") from None


def register(name: str, factory: Callable[[], PhysiologyModel]) -> None:
    """Register a model factory under ``name`` (for models defined outside medsim)."""
    _REGISTRY[name] = factory


__all__ = [
    "Covariate",
    "Observable",
    "Parameter",
    "PhysiologyModel",
    "ResidualError",
    "State",
    "UnknownModelError",
    "available",
    "get",
    "register",
]
