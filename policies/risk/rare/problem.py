"""The path problem every rare-event estimator works on.

A path problem maps a batch of standard-normal increments of fixed shape ``(B, T, C)`` (``T``
steps, ``C`` noise channels) to

* ``score`` ``(B, T)``: a continuous level at each step, ``>= 0`` exactly when the path is outside
  the safe set at that step (a grid violation). The score at step ``t`` may depend on the
  increments up to ``t`` only (it is adapted), so a path that shares a donor's first ``t + 1``
  increments shares its scores up to ``t``: that is what lets splitting clone a path and resample
  its future;
* ``crossing`` ``(B,)``: the probability that the continuous path left the safe set, with the
  Brownian-bridge crossing probability of every step folded in
  (:func:`path_crossing_probability`); it is 1 wherever a score is ``>= 0``.

The estimators estimate ``p = E[crossing]``, the same bridge-corrected probability the plain
estimator of :mod:`medsim.policies.risk.probability` averages over patients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp

from medsim.simulate.bridge import crossing_probability

PathFn = Callable[[jax.Array, Any], tuple[jax.Array, jax.Array]]


@dataclass(frozen=True, eq=False)
class PathProblem:
    """A rare-event problem in the space of standard-normal increments.

    Parameters
    ----------
    paths : callable
        ``paths(increments, params) -> (score, crossing)``: increments ``(B, T, C)`` float32 to
        scores ``(B, T)`` and crossing probabilities ``(B,)`` (see the module docstring). Pure
        JAX, traceable under ``jit`` and ``vmap``. The estimators compile once per ``paths``
        function and shape: define it once (at module level) and vary ``params``.
    n_steps : int
        ``T``.
    n_channels : int
        ``C``, the number of independent noise channels per step.
    name : str
        Shown in results and reports.
    params : pytree of arrays, optional
        Runtime inputs of ``paths`` (bounds, a patient's parameters, a posterior draw): changing
        them does not recompile.

    Raises
    ------
    ValueError
        On a non-positive ``n_steps`` or ``n_channels``.
    """

    paths: PathFn
    n_steps: int
    n_channels: int = 1
    name: str = "path problem"
    params: Any = None

    def __post_init__(self) -> None:
        for field in ("n_steps", "n_channels"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PathProblem.{field}: expected an int >= 1, got {v!r}")

    @property
    def shape(self) -> tuple[int, int]:
        """``(T, C)``: the shape of one path's increments."""
        return (self.n_steps, self.n_channels)

    def evaluate(self, increments: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Scores ``(B, T)`` and crossing probabilities ``(B,)`` of a batch, shape-checked."""
        score, crossing = self.paths(increments, self.params)
        b = increments.shape[0]
        if score.shape != (b, self.n_steps) or crossing.shape != (b,):
            raise ValueError(
                f"PathProblem {self.name!r}: paths() returned score {score.shape} and crossing "
                f"{crossing.shape}; expected ({b}, {self.n_steps}) and ({b},)"
            )
        return score, crossing

    def _key(self) -> tuple:
        return (self.paths, self.n_steps, self.n_channels)

    # Equal when they compile alike (same function and shape), whatever the params: the
    # estimators pass ``params`` at run time and jit on the rest.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, PathProblem) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def without_params(self) -> PathProblem:
        return replace(self, params=None)

    def with_params(self, params: Any) -> PathProblem:
        return replace(self, params=params)


def path_crossing_probability(
    z: jax.Array, bound: float, s2h: jax.Array, *, upper: bool
) -> tuple[jax.Array, jax.Array]:
    """Bridge-corrected crossing probability of whole paths, and their per-step scores.

    Parameters
    ----------
    z : (B, T + 1) float
        Bridge coordinate at the grid points (start included).
    bound : float
        The bound in the same coordinate.
    s2h : (B, T) float or scalar
        Local variance of ``z`` over each step (``s^2 h``, the diffusion at the step start).
    upper : bool
        True for a bound from above (``z > bound`` is outside).

    Returns
    -------
    score : (B, T)
        ``-sqrt(d0 d1)`` for a step whose ends lie at distances ``d0, d1 >= 0`` inside the bound,
        the distance past it where the step ends outside (0 where only its start is). The
        bridge crossing probability of the step is ``exp(-2 score^2 / (s^2 h))``: the score ranks
        steps by how likely they crossed, not only by how close their ends came, which is what
        lets splitting and subset simulation find paths that cross between grid points.
    crossing : (B,)
        ``1 - prod_t (1 - p_t)`` with ``p_t`` the Brownian-bridge crossing probability of step
        ``t`` (:func:`medsim.simulate.bridge.crossing_probability`), computed as
        ``-expm1(sum log1p(-p_t))`` so that values near 1e-10 keep their digits.
    """
    sign = 1.0 if upper else -1.0
    d0, d1 = sign * (bound - z[:, :-1]), sign * (bound - z[:, 1:])
    outside = (d0 < 0) | (d1 < 0)
    inv = 2.0 / jnp.maximum(jnp.broadcast_to(s2h, d0.shape), 1e-30)
    p = crossing_probability(d0, d1, 0.0, inv, outside)
    # log1p(-1) = -inf: a certain crossing gives crossing = -expm1(-inf) = 1 exactly.
    crossing = -jnp.expm1(jnp.sum(jnp.log1p(-p), axis=1))
    score = jnp.where(d1 < 0, -d1, -jnp.sqrt(jnp.maximum(d0 * d1, 0.0)))
    return score, crossing
