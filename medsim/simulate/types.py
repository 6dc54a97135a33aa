"""Data types of the simulator contract: safety bounds, dose events, interval statistics.

These are the shapes that cross package boundaries (the rollout in ``policies`` and the
likelihood in ``inference`` consume them), so they live apart from the stepping code.
Array leaves have a leading batch axis ``B`` (patients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from medsim.transfer import to_device

Side = Literal["upper", "lower"]


@dataclass(frozen=True)
class Bound:
    """A safety bound on an observable.

    ``side="upper"``: the safe set is ``y <= value`` (violation when ``y > value``);
    ``side="lower"``: the safe set is ``y >= value``.
    """

    observable: str
    value: float
    side: Side = "upper"
    name: str = ""

    def __post_init__(self) -> None:
        if self.side not in ("upper", "lower"):
            raise ValueError(f"bound on {self.observable!r}: side must be 'upper' or 'lower', got {self.side!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"bound on {self.observable!r}: value must be finite, got {self.value}")
        if not self.name:
            op = "<=" if self.side == "upper" else ">="
            object.__setattr__(self, "name", f"{self.observable}{op}{self.value:g}")

    def outside(self, y):
        """True where ``y`` violates the bound (works on numpy and JAX arrays)."""
        return y > self.value if self.side == "upper" else y < self.value


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DoseEvents:
    """Padded per-patient dose events in absolute model time.

    Attributes
    ----------
    time : (B, E) float
        Event times; padding entries are ``+inf``.
    cmt : (B, E) int
        Dose compartment (the model's ``dose_targets`` key).
    amount : (B, E) float
        Amount in the compartment's dose unit.
    rate : (B, E) float
        0 for a bolus; > 0 for a zero-order infusion of ``amount`` at ``rate`` (duration
        ``amount / rate``).
    """

    time: jax.Array
    cmt: jax.Array
    amount: jax.Array
    rate: jax.Array

    @staticmethod
    def empty(batch: int) -> DoseEvents:
        """No events for ``batch`` patients (one padding column)."""
        return DoseEvents(
            time=jnp.full((batch, 1), jnp.inf, jnp.float32),
            cmt=jnp.ones((batch, 1), jnp.int32),
            amount=jnp.zeros((batch, 1), jnp.float32),
            rate=jnp.zeros((batch, 1), jnp.float32),
        )

    @staticmethod
    def from_arrays(time, cmt, amount, rate=None) -> DoseEvents:
        """Build from array-likes of shape (B, E) (``rate`` defaults to boluses)."""
        time = np.asarray(time, np.float32)
        rate = np.zeros_like(time) if rate is None else np.asarray(rate, np.float32)
        return DoseEvents(
            time=to_device(time),
            cmt=to_device(np.asarray(cmt, np.int32)),
            amount=to_device(np.asarray(amount, np.float32)),
            rate=to_device(rate),
        )

    @property
    def batch(self) -> int:
        return int(self.time.shape[0])


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class IntervalStats:
    """What happened to each patient between ``t0`` and ``t1`` of one ``advance`` call.

    ``K`` is the number of declared bounds (in the order given to the simulator). Grid
    quantities are evaluated on the sub-step grid including both ends.

    Attributes
    ----------
    obs_start, obs_end, obs_min, obs_max : dict observable -> (B,)
        Monitored observables at ``t0``, at ``t1``, and their running min / max on the grid.
    log_survival : (B, K)
        Sum over sub-steps of ``log(1 - p_i)`` where ``p_i`` is the Brownian-bridge probability
        that the continuous path crossed the bound inside sub-step ``i`` (``p_i = 1`` if a grid
        end point is outside). ``1 - exp(log_survival)`` is the Rao-Blackwellised probability of
        a crossing in the interval; log-survivals of successive intervals add.
    grid_violation : (B, K) bool
        Some grid point in ``(t0, t1]`` is outside the bound.
    end_violation : (B, K) bool
        The state at ``t1`` is outside (what a noise-free measurement at ``t1`` would show).
    time_outside : (B, K)
        Time spent outside the bound, by the trapezoid rule on the grid (model time units).
    first_outside : (B, K)
        First grid time in ``(t0, t1]`` outside the bound; ``+inf`` if none.
    depth : (B, K)
        Largest exceedance beyond the bound on the grid (0 if none), in the observable's unit.
    """

    obs_start: dict[str, jax.Array]
    obs_end: dict[str, jax.Array]
    obs_min: dict[str, jax.Array]
    obs_max: dict[str, jax.Array]
    log_survival: jax.Array
    grid_violation: jax.Array
    end_violation: jax.Array
    time_outside: jax.Array
    first_outside: jax.Array
    depth: jax.Array

    @property
    def p_cross(self) -> jax.Array:
        """(B, K) bridge-corrected probability that the path crossed each bound in the interval."""
        return -jnp.expm1(self.log_survival)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SavedPath:
    """Observables on a save grid (only when requested: it costs memory).

    Attributes
    ----------
    time : (B, T) absolute times (padded entries repeat the last time)
    values : dict observable -> (B, T)
    """

    time: jax.Array
    values: dict[str, jax.Array] = field(default_factory=dict)
