"""Interval statistics accumulated inside the step: Brownian-bridge crossings, extremes, exceedance.

For a monitored observable ``y`` with bridge coordinate ``z`` (``log y`` when the observable's
``bridge_scale`` is ``"log"``, else ``y``), the sub-step from ``z0`` to ``z1`` (both inside a bound
``b``) is treated as a Brownian bridge with the local diffusion ``s`` of ``z`` at the sub-step start;
the probability that it crossed ``b`` in between is (Glasserman, *Monte Carlo Methods in Financial
Engineering*, 2004, §6.4; Beghin & Orsingher 1999)::

    p = exp(-2 (b - z0)(b - z1) / (s^2 h)),    s^2 = sum_i (dz/dx_i g_i)^2,

and ``p = 1`` if an end point is outside. ``s^2`` is one forward-mode derivative of the observe
function per noisy state (Itô: ``dz = ... dt + sum_i dz/dx_i g_i dW_i``). The log-survival
``sum log(1 - p)`` over sub-steps is the Rao-Blackwellised estimate of not crossing in the interval
(:class:`~medsim.simulate.types.IntervalStats`).

Everything is written for struct-of-arrays carries: one ``(B,)`` vector per observable and bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.simulate.types import Bound, IntervalStats

# Smallest s^2 h used in the bridge exponent: a noise-free sub-step between two inside points has
# crossing probability 0 (the exponent overflows to +inf), and one that touches the bound has 1.
_TINY = np.float32(1e-30)


@dataclass(frozen=True)
class BoundSpec:
    """A bound in the simulator's own terms (static; hashable)."""

    observable: str
    value: float  # in the observable's unit
    z: float  # in bridge coordinates
    upper: bool
    log_scale: bool


def bound_specs(model: PhysiologyModel, bounds: tuple[Bound, ...]) -> tuple[BoundSpec, ...]:
    """Validate ``bounds`` against ``model`` and express them in bridge coordinates.

    Raises
    ------
    ValueError
        If a bound names an unknown observable, or puts a non-positive value on a log-scale one.
    """
    out = []
    for i, b in enumerate(bounds):
        if not isinstance(b, Bound):
            raise ValueError(f"bounds[{i}]: expected a medsim.simulate.Bound, got {type(b).__name__}")
        if b.observable not in model.observable_names:
            raise ValueError(
                f"bounds[{i}] ({b.name}): model {model.name!r} has no observable {b.observable!r}; "
                f"it has {list(model.observable_names)}"
            )
        log_scale = model.observable(b.observable).bridge_scale == "log"
        if log_scale and not b.value > 0:
            raise ValueError(
                f"bounds[{i}] ({b.name}): {b.observable!r} is monitored on the log scale; the bound must be > 0"
            )
        z = float(np.log(np.float32(b.value))) if log_scale else float(b.value)
        out.append(BoundSpec(b.observable, float(b.value), z, b.side == "upper", log_scale))
    return tuple(out)


class StatsCarry(NamedTuple):
    """Running statistics carried through the sub-steps (a pytree of ``(B,)`` arrays).

    Grid violations and depths are not carried: they follow from ``first`` and the extremes.
    Statistics that are updated together travel in pairs, as the real and imaginary parts of one
    complex64 vector: XLA's CPU loops write one output each, so a pair costs one pass over the
    patients instead of two (and its shared inputs are read once).
    """

    z: dict[str, jax.Array]  # bridge coordinate at the current grid point, per bridged observable
    extremes: dict[str, jax.Array]  # observable -> min + i max
    survival: tuple[jax.Array, ...]  # per bound: sum log(1 - p) over p < 1/8 + i prod (1 - p) over p >= 1/8
    outside: tuple[jax.Array, ...]  # per bound: time outside + i first grid time outside

    @property
    def y_min(self) -> dict[str, jax.Array]:
        return {o: jnp.real(v) for o, v in self.extremes.items()}

    @property
    def y_max(self) -> dict[str, jax.Array]:
        return {o: jnp.imag(v) for o, v in self.extremes.items()}


_pair = jax.lax.complex


def bridged_observables(specs: tuple[BoundSpec, ...]) -> dict[str, bool]:
    """Observable -> log scale?, for every observable that carries a bound (in first-seen order)."""
    out: dict[str, bool] = {}
    for s in specs:
        out.setdefault(s.observable, s.log_scale)
    return out


def to_bridge(y: jax.Array, log_scale: bool) -> jax.Array:
    return jnp.log(y) if log_scale else y


def _outside(z: jax.Array, s: BoundSpec) -> jax.Array:
    return z > s.z if s.upper else z < s.z


def bridge_coordinates(
    model: PhysiologyModel, bridged: Mapping[str, bool], x: Mapping[str, jax.Array], theta: Mapping[str, jax.Array]
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """All observables at ``x`` and the bridge coordinate of each bridged one."""
    y = model.observe(x, theta)
    return y, {o: to_bridge(y[o], log) for o, log in bridged.items()}


def local_variance(
    model: PhysiologyModel,
    bridged: Mapping[str, bool],
    x: Mapping[str, jax.Array],
    theta: Mapping[str, jax.Array],
    g: Mapping[str, jax.Array],
) -> dict[str, jax.Array]:
    """``s^2 = sum_i (dz/dx_i g_i)^2`` per bridged observable (per unit time).

    Where it is undefined (``z = log y`` at ``y = 0``, where ``dz/dx = inf`` meets ``g = 0``) it is
    set to 0: a path leaving 0 is not treated as a bridge.
    """

    def coords(xx):
        return bridge_coordinates(model, bridged, xx, theta)[1]

    out = {o: jnp.zeros_like(next(iter(x.values()))) for o in bridged}
    for name, gi in g.items():
        tangent = {s: gi if s == name else jnp.zeros_like(v) for s, v in x.items()}
        _, dz = jax.jvp(coords, (dict(x),), (tangent,))
        out = {o: out[o] + dz[o] * dz[o] for o in bridged}
    return {o: jnp.where(v > 0, v, 0.0) for o, v in out.items()}  # also maps NaN to 0


def init_stats(specs: tuple[BoundSpec, ...], y: Mapping[str, jax.Array], z: Mapping[str, jax.Array]) -> StatsCarry:
    """Statistics at the interval start (after the doses at ``t0``)."""
    zero = jnp.zeros_like(next(iter(y.values())))
    k = len(specs)
    return StatsCarry(
        z=dict(z),
        extremes={o: _pair(v, v) for o, v in y.items()},
        survival=(_pair(zero, zero + 1.0),) * k,
        outside=(_pair(zero, zero + jnp.inf),) * k,
    )


def crossing_probability(z0: jax.Array, z1: jax.Array, b: float, inv: jax.Array, outside: jax.Array) -> jax.Array:
    """Probability that a Brownian bridge from ``z0`` to ``z1`` crossed ``b`` (the module formula).

    ``inv`` is ``2 / (s^2 h)`` (with ``s^2 h`` floored at a tiny value), ``outside`` is True where
    an end point is outside the bound (the probability is then 1). Both ends inside means
    ``(z0 - b)(z1 - b) >= 0``; the ``max`` only guards the outside case.
    """
    a = jnp.maximum((z0 - b) * (z1 - b), 0.0) * inv
    return jnp.where(outside, 1.0, jnp.exp(-a))


def _log1m_small(p: jax.Array) -> jax.Array:
    """``log(1 - p)`` by its series, relative error < 1e-9 for ``p < 1/8``."""
    return -p * (1.0 + p * (1 / 2 + p * (1 / 3 + p * (1 / 4 + p * (1 / 5 + p * (1 / 6 + p * (1 / 7 + p / 8)))))))


def bridge_update(
    specs: tuple[BoundSpec, ...],
    st: StatsCarry,
    s2: Mapping[str, jax.Array],
    z1: Mapping[str, jax.Array],
    h: jax.Array,
    active: jax.Array,
) -> StatsCarry:
    """Crossing probability and time outside over one sub-step from ``st.z`` to ``z1``.

    ``active`` is False for patients past their interval end (``h = 0``); they are left unchanged.

    ``log(1 - p)`` is split to avoid a logarithm per sub-step: small ``p`` (the common case, far
    from the bound) add their series to ``log_survival``; ``p >= 1/8`` multiply into ``survival``,
    whose logarithm is taken once at the end. There ``1 - p`` is exact to 2**-25 (relative error
    < 3e-7 in the logarithm). ``survival`` can only underflow below 1e-38 (crossing certain to
    that precision); an end point outside makes it exactly 0 (``log_survival = -inf``).
    """
    inv = {o: 2.0 / jnp.maximum(v * h, _TINY) for o, v in s2.items()}
    survival, outside = [], []
    for k, s in enumerate(specs):
        z0, z_end = st.z[s.observable], z1[s.observable]
        out0, out1 = _outside(z0, s), _outside(z_end, s)
        p = jnp.where(active, crossing_probability(z0, z_end, s.z, inv[s.observable], out0 | out1), 0.0)
        small = p < 0.125
        log_surv = jnp.real(st.survival[k]) + jnp.where(small, _log1m_small(p), 0.0)
        survival.append(_pair(log_surv, jnp.imag(st.survival[k]) * jnp.where(small, 1.0, 1.0 - p)))
        # Trapezoid rule on the indicator of being outside (h = 0 when inactive).
        t_out = jnp.real(st.outside[k]) + 0.5 * h * (out0.astype(h.dtype) + out1.astype(h.dtype))
        outside.append(_pair(t_out, jnp.imag(st.outside[k])))
    return st._replace(survival=tuple(survival), outside=tuple(outside))


def grid_update(
    specs: tuple[BoundSpec, ...], st: StatsCarry, y: Mapping[str, jax.Array], z: Mapping[str, jax.Array], t: jax.Array
) -> StatsCarry:
    """Record a grid point at time ``t``: extremes and the first time outside each bound.

    Idempotent for a patient whose state did not move (past its interval end, or no dose given),
    so it needs no mask; zero-length intervals are cleaned up in :func:`finish_stats`.
    """
    extremes = {
        o: _pair(jnp.minimum(jnp.real(st.extremes[o]), v), jnp.maximum(jnp.imag(st.extremes[o]), v))
        for o, v in y.items()
    }
    outside = []
    for k, s in enumerate(specs):
        t_out, first = jnp.real(st.outside[k]), jnp.imag(st.outside[k])
        outside.append(_pair(t_out, jnp.where(_outside(z[s.observable], s) & (first == jnp.inf), t, first)))
    return st._replace(extremes=extremes, outside=tuple(outside))


def finish_stats(
    specs: tuple[BoundSpec, ...],
    st: StatsCarry,
    y_start: Mapping[str, jax.Array],
    y_end: Mapping[str, jax.Array],
    nonempty: jax.Array,
) -> IntervalStats:
    """Stack per-bound carries into the ``(B, K)`` arrays of :class:`IntervalStats`.

    ``nonempty`` is ``t1 > t0`` per patient: a zero-length interval has no grid point in ``(t0, t1]``.
    """
    batch = next(iter(y_end.values())).shape[0]

    def stack(parts, dtype):
        if not parts:
            return jnp.zeros((batch, 0), dtype)
        return jnp.stack(parts, axis=1).astype(dtype)

    first = [jnp.where(nonempty, jnp.imag(f), jnp.inf) for f in st.outside]
    y_min, y_max = st.y_min, st.y_max
    depth = [
        jnp.maximum(st.y_max[s.observable] - s.value, 0.0)
        if s.upper
        else jnp.maximum(s.value - st.y_min[s.observable], 0.0)
        for s in specs
    ]
    end = [_outside(to_bridge(y_end[s.observable], s.log_scale), s) for s in specs]
    return IntervalStats(
        obs_start=dict(y_start),
        obs_end=dict(y_end),
        obs_min=y_min,
        obs_max=y_max,
        log_survival=stack([jnp.real(c) + jnp.log(jnp.imag(c)) for c in st.survival], jnp.float32),
        grid_violation=stack([f < jnp.inf for f in first], bool),
        end_violation=stack(end, bool),
        time_outside=stack([jnp.real(c) for c in st.outside], jnp.float32),
        first_outside=stack(first, jnp.float32),
        depth=stack(depth, jnp.float32),
    )
