"""Which states can carry uncertainty: the block of the EKF covariance that is not identically 0.

The filter starts from a known state (``P = 0``). Variance enters only through the diffusion of
the states that have process noise, and spreads only along the drift's couplings (``dP/dt =
F P + P F^T + G G^T``: row ``i`` of ``F P`` is non-zero only if the drift of ``i`` reads a state
whose row of ``P`` is non-zero) and along the dose maps (``P <- J P J^T``). A Kalman update keeps
the block: the gain ``K = P H^T / S`` is 0 outside it, so ``K H P`` is too. Every other state
stays a deterministic function of the parameters, and the filter restricted to the *noise-
reachable* states gives the same numbers as the full one, with fewer covariance entries and
fewer Jacobian columns. In ``pk_oral_1cmt`` (noise on the central amount only) that is one
entry instead of three, the depot being deterministic; in ``glucose_insulin`` one instead of
21, because glucose feeds back into none of the insulin or meal states.

Dependencies are read from the traced program (the jaxpr) of the model's functions, not from
numerical Jacobians: an output depends on an input if any chain of operations connects them.
That is conservative (a dependency that cancels numerically still counts) and never misses
one that only shows in some region of the state space (a threshold, a ``where``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from medsim.models.base import PhysiologyModel


def input_dependencies(fn: Callable[..., Sequence[jax.Array]], n_inputs: int) -> list[frozenset[int]]:
    """For each output of ``fn(x_0, ..., x_{n-1})`` (scalars), the inputs it depends on.

    Read from ``jax.make_jaxpr``: every equation's outputs depend on the union of its inputs'
    dependencies (equations with inner programs, such as ``cond`` or ``pjit``, are treated as a
    whole, which can only over-approximate).
    """
    closed = jax.make_jaxpr(lambda *xs: tuple(fn(*xs)))(*[jnp.zeros((), jnp.float32)] * n_inputs)
    jaxpr = closed.jaxpr
    deps: dict[object, frozenset[int]] = {v: frozenset({i}) for i, v in enumerate(jaxpr.invars)}

    def of(var) -> frozenset[int]:
        return frozenset() if isinstance(var, jex_core.Literal) else deps.get(var, frozenset())

    for eqn in jaxpr.eqns:
        union = frozenset().union(*(of(v) for v in eqn.invars))
        for out in eqn.outvars:
            deps[out] = union
    return [of(v) for v in jaxpr.outvars]


def noise_reachable_states(model: PhysiologyModel, dose_cmts: Sequence[int]) -> tuple[int, ...]:
    """Indices (in ``model.state_names`` order) of the states whose filter variance can be non-zero.

    The states with a diffusion term, closed under "the drift (or a dose map into one of
    ``dose_cmts``) of state ``i`` reads state ``j``". Evaluated at the model's typical parameters
    with every dosed state receiving an input rate, so that infusion paths are traced too; the
    structure of the model's code, not those values, decides the result.
    """
    names = model.state_names
    theta = model.individual_parameters(model.typical_parameters(), {}, model.reference_covariates())
    rates = {model.dose_targets[c]: jnp.ones((), jnp.float32) for c in dose_cmts}
    point = {s: jnp.ones((), jnp.float32) for s in names}
    noisy = set(model.diffusion(0.0, point, theta))
    unknown = noisy - set(names)
    if unknown:
        raise ValueError(f"model {model.name!r}: diffusion names unknown states {sorted(unknown)} (states: {names})")

    def drift(*xs):
        out = model.drift(0.0, dict(zip(names, xs, strict=True)), theta, rates)
        return [jnp.asarray(out[s], jnp.float32) for s in names]

    couplings = [input_dependencies(drift, len(names))]
    for cmt in dose_cmts:

        def dose(*xs, cmt=cmt):
            out = model.dose(dict(zip(names, xs, strict=True)), cmt, jnp.ones((), jnp.float32))
            return [jnp.asarray(out[s], jnp.float32) for s in names]

        couplings.append(input_dependencies(dose, len(names)))
    reach = {names.index(s) for s in noisy}
    grown = True
    while grown:
        grown = False
        for deps in couplings:
            for i, reads in enumerate(deps):
                if i not in reach and reads & reach:
                    reach.add(i)
                    grown = True
    return tuple(sorted(reach))
