"""Fixed-step SDE schemes on named states: Euler–Maruyama and diagonal Milstein.

For ``dx = f(t, x) dt + g(x) dW`` with diagonal diffusion (state ``i`` driven by its own Brownian
motion ``W_i``), one sub-step of length ``h`` with increments ``dW_i = sqrt(h) z_i`` is::

    Euler–Maruyama:  x_i' = x_i + f_i h + g_i dW_i
    Milstein:        x_i' = x_i + f_i h + g_i dW_i + 1/2 g_i (dg_i/dx_i) (dW_i^2 - h)

(Kloeden & Platen, *Numerical Solution of SDEs*, 1992, eqs. 10.2.4 and 10.3.3; strong orders 1/2
and 1, weak order 1 for both). The correction ``g_i dg_i/dx_i`` is one forward-mode derivative of
the model's diffusion along the tangent ``g`` (:func:`jax.jvp`); it is exact for *diagonal noise*,
where ``g_i`` depends on the noisy states only through ``x_i`` (checked when the simulator is
built), so no Lévy areas are needed.

Positivity: the shipped models use proportional noise ``g_i = sigma x_i``, whose exact solution
never reaches 0. Milstein keeps that: its factor ``1 + sigma dW + sigma^2 (dW^2 - h) / 2`` equals
``((1 + sigma dW)^2 + 1 - sigma^2 h) / 2 > 0`` whenever ``sigma^2 h < 1``. Euler–Maruyama does not
(``1 + sigma dW < 0`` needs ``z < -1 / (sigma sqrt h)``, below -20 for every shipped model at its
default step, a probability under 1e-88, but reachable with large noise or steps). As a safeguard,
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

Scheme = Literal["euler", "milstein"]
SCHEMES: tuple[str, ...] = ("euler", "milstein")


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
    scheme : {"euler", "milstein"}
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
        The diffusion at the start of the sub-step (reused by the interval statistics).
    """
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
