"""The extended Kalman filter with an ``(n,)`` mean and an ``(n, n)`` covariance (``layout="matrix"``).

The algorithm, its equations and its references are those of :mod:`medsim.inference.likelihood.ekf`;
only the storage differs. The entries layout writes the covariance algebra out scalar by scalar,
so its traced graph grows like ``n^3`` per RK4 stage (and again per forward-mode tangent): the
6-state glucose model took minutes to compile. Here the graph does not grow with ``n``.

Jacobian products without Jacobians: ``F P`` is computed as ``n`` JVPs of the drift at ``m``,
one per column of ``P`` (``jax.vmap`` of ``jax.jvp``), and likewise ``J P J^T`` for doses and
``P H^T`` for the update. The drift's own sparsity (each equation reads two or three states)
then shows in the traced arithmetic, and everything fuses into elementwise loops, which is
twice as fast as forming ``F`` with ``jax.jacfwd`` and multiplying (``docs/fitting.md``). ``F``
itself is formed once per step, for the diagonal of the integrating factor ``L``. States are
stacked in ``model.state_names`` order and turned back into named mappings at every call into
the model, so model code never sees positions.

Symmetry: ``F P + (F P)^T`` and the Joseph update written with outer products are symmetric to
the last bit; the dose map ``J P J^T`` is symmetrised explicitly. The integrating factors are
``exp((L_i + L_j) h / 2)`` as in the entries layout, so both layouts agree to round-off.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from medsim.inference.likelihood import filtering
from medsim.inference.likelihood.timeline import Timeline
from medsim.models.base import PhysiologyModel

Array = jax.Array


def matrix_loglik(
    model: PhysiologyModel,
    timeline: Timeline,
    theta: Mapping[str, Array],
    residual: Mapping[str, Array],
    slots: Mapping[str, Array],
    *,
    covariance: bool = True,
    covariance_states: str = "reachable",
    final: bool = False,
) -> Array | tuple[Array, tuple[Array, Array, Array]]:
    """Log predictive density of each slot's observation for one subject, matrix layout.

    Parameters
    ----------
    model, timeline, theta, residual, slots, covariance, covariance_states
        As for :func:`medsim.inference.likelihood.ekf.subject_loglik`. The covariance is stored for
        the ``r`` states of the block (``(r, r)``); products with ``F``, ``J`` and ``H`` act on
        its columns embedded in the full state space.
    final : bool
        Also return the filtered state after the subject's last slot.

    Returns
    -------
    (K,) array
        Log density (of the observation, in its unit) at observation slots, 0 elsewhere.
    (K,) array, (time, mean (n,), covariance (n, n))
        With ``final``: the same and the filter's time, mean and full covariance (0 outside the
        noise-reachable block; all 0 without ``covariance``) after the last slot, states in
        ``model.state_names`` order.
    """
    names = model.state_names
    dtype = jnp.result_type(slots["time"].dtype, jnp.float32)
    block = np.asarray(filtering.covariance_block(model, timeline, covariance_states) if covariance else (), int)

    def embed(p):
        """Columns of the ``(r, c)`` array ``p`` as full-state vectors: ``(n, c)``, 0 off the block."""
        return jnp.zeros((len(names), p.shape[1]), p.dtype).at[block].set(p)

    def named(x):
        return dict(zip(names, x, strict=True))

    def stacked(values):
        return jnp.stack([jnp.asarray(values[s], dtype) for s in names])

    def times(fn, x, p):
        """``fn(x)`` and ``(d fn / dx) @ p``: one JVP per column of ``p``, ``d fn / dx`` never formed."""
        return jax.vmap(lambda v: jax.jvp(fn, (x,), (v,)), in_axes=1, out_axes=(None, -1))(p)

    def diffusion_var(t, m):
        """Diagonal of ``G G^T`` (state unit^2 / time), 0 for states without noise."""
        g = model.diffusion(t, named(m), theta)
        return stacked({s: jnp.square(g[s]) if s in g else jnp.zeros((), dtype) for s in names})

    def remainder(t, y, rates, decay):
        """``N(y) = f(y) - L y`` for the mean and ``F P + P F^T + G G^T - L_P P`` for the covariance."""
        m, p = y

        def drift(x):
            return stacked(model.drift(t, named(x), theta, rates))

        if not covariance:
            return drift(m) - decay * m, p
        dm, fp = times(drift, m, embed(p))
        fp = fp[block]  # (F P)[block, block]
        decay_b = decay[block]
        dp = fp + fp.T - (decay_b[:, None] + decay_b[None, :]) * p + jnp.diag(diffusion_var(t, m)[block])
        return dm - decay * m, dp

    def rk4_step(t, y, h, rate_c):
        rates = filtering.input_rates(model, timeline, rate_c)
        jacobian = jax.jacfwd(lambda x: stacked(model.drift(t, named(x), theta, rates)))(y[0])
        decay = jnp.minimum(jnp.diagonal(jacobian), 0.0)
        decay_b = decay[block]
        half = (
            jnp.exp(decay * h / 2),
            jnp.exp((decay_b[:, None] + decay_b[None, :]) * h / 2) if covariance else (),
        )
        return filtering.lawson_rk4(
            lambda tt, yy: remainder(tt, yy, rates, decay), t, y, h, half, remainder(t, y, rates, decay)
        )

    def apply_boluses(y, amounts):
        m, p = y

        def dose_map(x):
            return stacked(filtering.dose_all(model, timeline, named(x), amounts))

        if not covariance:
            return dose_map(m), p
        m_new, jp = times(dose_map, m, embed(p))
        _, jpj = times(dose_map, m, embed(jp[block].T))  # J (J P)^T = J P J^T
        jpj = jpj[block]
        return m_new, 0.5 * (jpj + jpj.T)

    def update(y, obs, which, is_obs, cens):
        m, p = y

        def observed(x):
            prediction = {o: jnp.asarray(v, dtype) for o, v in model.observe(named(x), theta).items()}
            return filtering.select(timeline, prediction, which, dtype), prediction

        # Off observation slots the result is discarded; a unit variance there keeps the
        # discarded branch finite so that its gradient cannot turn into NaN.
        if not covariance:
            h, prediction = observed(m)
            r = jnp.where(is_obs, filtering.residual_var(model, timeline, residual, prediction, which, dtype), 1.0)
            return y, filtering.observation_update(obs - h, r, cens)[0]

        def h_of(x):
            return observed(x)[0]

        h, prediction = observed(m)
        r = jnp.where(is_obs, filtering.residual_var(model, timeline, residual, prediction, which, dtype), 1.0)
        _, ph = times(h_of, m, embed(p))  # H P = (P H^T)^T, H = d observe_o / dx, on the block
        s = jnp.maximum(jax.jvp(h_of, (m,), (embed(ph[:, None])[:, 0],))[1] + r, 1e-6 * r)
        gain = ph / s  # the gain is 0 off the block
        loglik, shift, var_y = filtering.observation_update(obs - h, s, cens)
        # Joseph form (I - K H) P (I - K H)^T + K R K^T, written as P - K H P - P H^T K^T + K S K^T;
        # a censored value gives back Var[y | censored] (filtering.observation_update)
        cross = jnp.outer(gain, ph)
        p_new = p - cross - cross.T + (s + var_y) * jnp.outer(gain, gain)
        return (m.at[block].add(gain * shift), p_new), loglik

    m0 = stacked(model.initial_state(theta))
    p0 = jnp.zeros((block.size, block.size), dtype) if covariance else ()
    out = filtering.scan_slots(
        timeline,
        slots,
        (m0, p0),
        rk4_step=rk4_step,
        update=update,
        apply_boluses=apply_boluses,
        dtype=dtype,
        final=final,
    )
    if not final:
        return out
    ll, (t_last, (m_last, p_last)) = out
    full = jnp.zeros((len(names), len(names)), dtype)
    if covariance:
        full = full.at[block[:, None], block[None, :]].set(p_last)
    return ll, (t_last, m_last, full)
