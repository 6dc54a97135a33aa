"""Fixed-step SDE schemes on named states: Euler–Maruyama, diagonal Milstein, exponential Euler.

For ``dx = f(t, x) dt + g(x) dW`` with diagonal diffusion (state ``i`` driven by its own Brownian
motion ``W_i``), one sub-step of length ``h`` with increments ``dW_i = sqrt(h) z_i`` is::

    Euler–Maruyama:  x_i' = x_i + f_i h + g_i dW_i
    Milstein:        x_i' = x_i + f_i h + g_i dW_i + 1/2 g_i (dg_i/dx_i) (dW_i^2 - h)

(Kloeden & Platen, *Numerical Solution of SDEs*, 1992, eqs. 10.2.4 and 10.3.3; strong orders 1/2
and 1, weak order 1 for both). The correction ``g_i dg_i/dx_i`` is one forward-mode derivative of
the model's diffusion along the tangent ``g`` (:func:`jax.jvp`); it is exact for *diagonal noise*,
where ``g_i`` depends on the noisy states only through ``x_i`` (checked when the simulator is
built), so no Lévy areas are needed.

Exponential Euler (``"exponential"``): both explicit schemes above are unstable once a first-order
rate ``lambda`` exceeds ``2 / h`` (a fast absorption rate ``ka`` in the tail of a posterior). The
drift is split as ``f(x) = L x + N(x)`` with ``L_i = min(df_i/dx_i, 0)`` taken at the sub-step's
start (one JVP per state, as the likelihood's integrating-factor step does), the linear part is
integrated exactly and the noise increment is carried by the same decay::

    x_i' = e^{a_i} x_i + h phi1(a_i) N_i(x) + e^{a_i} g_i dW_i
           + h sum_{j != i} (df_i/dx_j) x_j [E(a_i, a_j) - phi1(a_i)],          a_i = L_i h,

with ``phi1(a) = (e^a - 1) / a`` and ``E(a, b) = (e^a - e^b) / (a - b)``; the first two terms are
evaluated as ``x_i + h phi1(a_i) f_i(x)`` (the same number without forming ``N = f - L x``, whose
cancellation would round differently depending on how the compiler fuses it, breaking bitwise
independence of the chunk size). Without the last line this is the stochastic exponential Euler
scheme (Komori & Burrage, *BIT Numer. Math.* 54:1067, 2014; for additive noise Lord & Rougemont,
*IMA J. Numer. Anal.* 24:587, 2004, and Jentzen & Kloeden, *Proc. R. Soc. A* 465:649, 2009; the
deterministic part is the exponential Euler method of Hochbruck & Ostermann, *Acta Numerica*
19:209, 2010). The last line integrates, by the variation-of-constants formula, the change of
``N_i`` caused by the exact decay of the *other* states during the step (``N(x(s)) ~ N(x) + dN/dx
(e^{L s} - 1) x``): without it, a drug amount that leaves a fast depot within the step still feeds
the central compartment at its start-of-step rate, which over-delivers the dose by a factor
``ka*h/(1-e^{-ka*h})`` (4 at ``ka h = 4``). With it the scheme is exact for first-order transfer
from a decaying compartment (the oral one-compartment model with its process noise off reproduces
the Bateman function at any step) and for a constant infusion into a decaying compartment. The
correction is ``O(h^2)`` per step and bounded by the size of the explicit remainder (``0 <= E(a,
b), phi1(a) <= 1`` for ``a, b <= 0``), so it changes neither the orders nor the stability. Orders:
strong 1/2 and weak 1, those of Euler–Maruyama (for a fixed ``L`` the two differ by ``O(h^2)`` per
step); unlike it, the step stays stable however fast the decay. In the linear test ``dx = -lambda x
dt + sigma x dW`` the mean is exact at every step (``E x_n = e^{-lambda t_n} x_0``) and the second
moment is ``e^{-2 lambda t_n} (1 + sigma^2 h)^n x_0^2`` (weak error ``O(sigma^4 h)``, independent
of ``lambda h``).

Interval statistics: the Brownian-bridge crossing probability of a sub-step
(:mod:`medsim.simulate.bridge`) is the law of the *continuous* path between the two simulated end
points, whose local quadratic variation is the model's diffusion ``g(x)`` at the sub-step start
whatever scheme produced the end point; the drift (stiff or not) does not enter a Brownian bridge.
So every scheme returns the undamped ``g`` for the bridge, not the ``e^{a} g`` it used for the
increment (which would shrink the bridge variance by ``e^{2 a}`` and miss crossings). What the
scheme changes is only where the end point lands, and that it lands there stably.

Positivity: the shipped models use proportional noise ``g_i = sigma x_i``, whose exact solution
never reaches 0. Milstein keeps that: its factor ``1 + sigma dW + sigma^2 (dW^2 - h) / 2`` equals
``((1 + sigma dW)^2 + 1 - sigma^2 h) / 2 > 0`` whenever ``sigma^2 h < 1``. Euler–Maruyama does not
(``1 + sigma dW < 0`` needs ``z < -1 / (sigma sqrt h)``, below -20 for every shipped model at its
default step, a probability under 1e-88, but reachable with large noise or steps). The exponential
scheme multiplies the same factor by ``e^{a} > 0`` (and adds nonnegative transfer terms for the
shipped models), so its sign condition is Euler's (up to float32 rounding: where ``a < -16`` the
decayed amount ``e^{a} x`` is below the rounding of ``x`` and a state reaches 0). As a safeguard,
noisy states whose diffusion vanishes at 0 are floored at 0 after each sub-step (see
:func:`nonnegative_states`); an absorbing 0 is the limit the continuous model would approach.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models.base import PhysiologyModel

Scheme = Literal["euler", "milstein", "exponential"]
SCHEMES: tuple[str, ...] = ("euler", "milstein", "exponential")


def _probe_point(model: PhysiologyModel) -> tuple[dict, dict]:
    theta = {k: jnp.asarray(v, jnp.float32) for k, v in model.typical_parameters().items()}
    # Process-noise scales are switched on so that the structure of g is visible even when the
    # model's default is 0.
    for p in model.params_of_kind("process_noise"):
        theta[p.name] = jnp.asarray(max(p.typical, 0.1), jnp.float32)
    x = {s: jnp.asarray(1.0, jnp.float32) for s in model.state_names}
    return x, theta


def nonnegative_states(model: PhysiologyModel) -> tuple[str, ...]:
    """Noisy states whose diffusion vanishes when the state is 0 (floored at 0 by the schemes).

    Probed at the typical parameters with every other state at 1.
    """
    x, theta = _probe_point(model)
    out = []
    for name in model.noisy_states:
        g = model.diffusion(jnp.float32(0.0), {**x, name: jnp.asarray(0.0, jnp.float32)}, theta)[name]
        if float(np.abs(np.asarray(g))) == 0.0:
            out.append(name)
    return tuple(out)


def check_diagonal_noise(model: PhysiologyModel) -> None:
    """Raise if some ``g_i`` depends on another noisy state (Milstein would need Lévy areas).

    Raises
    ------
    ValueError
        Naming the pair of noisy states that couples.
    """
    x, theta = _probe_point(model)
    noisy = model.noisy_states
    for j in noisy:
        tangent = {s: jnp.asarray(1.0 if s == j else 0.0, jnp.float32) for s in model.state_names}
        _, dg = jax.jvp(lambda xx: model.diffusion(jnp.float32(0.0), xx, theta), (x,), (tangent,))
        for i in noisy:
            if i != j and float(np.abs(np.asarray(dg[i]))) > 0.0:
                raise ValueError(
                    f"model {model.name!r}: diffusion of {i!r} depends on noisy state {j!r}; the Milstein "
                    "scheme supports diagonal noise only (use scheme='euler')"
                )


def sde_step(
    model: PhysiologyModel,
    scheme: Scheme,
    t: jax.Array,
    x: Mapping[str, jax.Array],
    theta: Mapping[str, jax.Array],
    rate: Mapping[str, jax.Array],
    h: jax.Array,
    z: Mapping[str, jax.Array],
    floor: tuple[str, ...] = (),
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """One sub-step of the scheme.

    Parameters
    ----------
    model : PhysiologyModel
    scheme : {"euler", "milstein", "exponential"}
    t : (B,) time at the start of the sub-step (model time unit)
    x : dict state -> (B,)
    theta : dict parameter -> (B,)
    rate : dict state -> (B,)
        Input rates in state units per time unit (infusions, pump rates).
    h : (B,) sub-step length (0 for patients already at the end of their interval)
    z : dict noisy state -> (B,) standard normal draws
    floor : names of states floored at 0 after the step

    Returns
    -------
    x_new : dict state -> (B,)
    g : dict noisy state -> (B,)
        The model's diffusion at the start of the sub-step, for every scheme (the local
        volatility of the continuous path, reused by the interval statistics).
    """
    if scheme == "exponential":
        return _exponential_step(model, t, x, theta, rate, h, z, floor)
    f = model.drift(t, x, theta, rate)
    g = model.diffusion(t, x, theta)
    sqrt_h = jnp.sqrt(h)
    x_new = {s: x[s] + f[s] * h for s in x}
    if scheme == "milstein":
        tangent = {s: g[s] if s in g else jnp.zeros_like(x[s]) for s in x}
        _, dg_g = jax.jvp(lambda xx: model.diffusion(t, xx, theta), (dict(x),), (tangent,))
    for s, gs in g.items():
        dw = sqrt_h * z[s]
        x_new[s] = x_new[s] + gs * dw
        if scheme == "milstein":
            x_new[s] = x_new[s] + 0.5 * dg_g[s] * (dw * dw - h)
    for s in floor:
        x_new[s] = jnp.maximum(x_new[s], 0.0)
    return x_new, g


def _phi1(a: jax.Array) -> jax.Array:
    """``(e^a - 1) / a``, 1 at ``a = 0`` (``expm1`` keeps it accurate near 0)."""
    zero = a == 0.0
    safe = jnp.where(zero, 1.0, a)
    return jnp.where(zero, 1.0, jnp.expm1(safe) / safe)


def _exp_divided_difference(a: jax.Array, b: jax.Array) -> jax.Array:
    """``(e^a - e^b) / (a - b)``, ``e^a`` at ``a = b``; for ``a, b <= 0`` it lies in ``[0, 1]``.

    Written as ``e^{max(a, b)} phi1(-|a - b|)``: no cancellation when ``a`` and ``b`` are close and
    no overflow when they are far apart.
    """
    return jnp.exp(jnp.maximum(a, b)) * _phi1(-jnp.abs(a - b))


def _exponential_step(
    model: PhysiologyModel,
    t: jax.Array,
    x: Mapping[str, jax.Array],
    theta: Mapping[str, jax.Array],
    rate: Mapping[str, jax.Array],
    h: jax.Array,
    z: Mapping[str, jax.Array],
    floor: tuple[str, ...],
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """One exponential Euler sub-step (module docstring); arguments and returns as :func:`sde_step`."""
    names = tuple(x)
    x = dict(x)
    zero = {s: jnp.zeros_like(x[s]) for s in names}

    def drift(xx):
        return model.drift(t, xx, theta, rate)

    # Jacobian columns d f / d x_j, one JVP per state (the drift value comes with the first).
    column: dict[str, dict[str, jax.Array]] = {}
    f = None
    for j in names:
        f, column[j] = jax.jvp(drift, (x,), ({**zero, j: jnp.ones_like(x[j])},))
    decay = {s: jnp.minimum(column[s][s], 0.0) for s in names}  # L, per patient (1 / time)
    a = {s: decay[s] * h for s in names}
    damp = {s: jnp.exp(a[s]) for s in names}
    phi = {s: _phi1(a[s]) for s in names}
    g = model.diffusion(t, x, theta)
    x_new = {}
    for i in names:
        # Transfer from states j that decay within the step (zero where a_j = 0: E(a_i, 0) = phi1(a_i)).
        transfer = sum(
            (column[j][i] * x[j] * (_exp_divided_difference(a[i], a[j]) - phi[i]) for j in names if j != i),
            start=jnp.zeros_like(x[i]),
        )
        # e^a x + h phi1(a) (f - L x) = x + h phi1(a) f: this form never subtracts L x from f, a
        # cancellation whose rounding would depend on how the compiler fuses (and contracts) it.
        x_new[i] = x[i] + h * (phi[i] * f[i] + transfer)
        if i in g:
            x_new[i] = x_new[i] + damp[i] * g[i] * jnp.sqrt(h) * z[i]
    for s in floor:
        x_new[s] = jnp.maximum(x_new[s], 0.0)
    return x_new, g
