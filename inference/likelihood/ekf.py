"""Continuous–discrete extended Kalman filter: the marginal likelihood of an SDE model.

Between slots of the :class:`~medsim.inference.likelihood.timeline.Timeline` the filter integrates the
moment equations of ``dx = f(t, x) dt + G(t, x) dW`` (Jazwinski 1970, *Stochastic Processes and
Filtering Theory*, §9.5; the CD-EKF used for SDE mixed-effects models by Tornøe et al. 2005,
*J Pharmacokinet Pharmacodyn* 32:247, and Klim et al. 2009, *Comput Meth Prog Biomed* 94:279)::

    dm/dt = f(t, m)
    dP/dt = F P + P F^T + G(m) G(m)^T,        F = df/dx at m,   G = diag(diffusion at m)

with a fixed number of integrating-factor RK4 steps per interval (Lawson 1967: the decaying part
of the Jacobian's diagonal is integrated exactly, classical RK4 handles the rest; see
``lawson_rk4``). The step is the interval length over ``substeps``, so irregular spacing costs
nothing at compile time. Doses are exact jumps
``m <- dose(m)``, ``P <- J P J^T`` (``J`` = Jacobian of the dose map; the identity for additive
doses); infusions enter ``f`` as input rates. At an observation of observable ``o`` with value
``y``::

    h = observe(m)_o,  H = d observe_o / dx,  R = residual_sd(h)^2,  S = H P H^T + R
    log p(y | past) = log Normal(y; h, S)
    K = P H^T / S,  m <- m + K (y - h),  P <- (I - K H) P (I - K H)^T + K R K^T   (Joseph form)

Without process noise ``P`` stays exactly zero, ``S = R`` and the filter *is* the ODE likelihood;
:func:`cohort_loglik` with ``noise=None`` skips the covariance altogether (the ODE limit, cheaper).

Layouts: the same algorithm is stored in one of two ways (``layout``; shared parts in
:mod:`medsim.inference.likelihood.filtering`).

* ``"entries"`` (this module): the mean is a tuple of ``n`` named scalars and the covariance a
  tuple of its ``n (n + 1) / 2`` upper-triangle entries, with the small matrix algebra written
  out. Under ``vmap`` every quantity is one contiguous ``(subjects,)`` vector and XLA fuses each
  RK4 stage into a few vectorised loops; for 1-2 states this is faster than stacked
  ``(subjects, n, n)`` matrices on CPU (measured on the theophylline cohort, ``docs/fitting.md``).
  The traced graph grows like ``n^3`` per RK4 stage, so compilation time grows quickly with ``n``.
* ``"matrix"`` (:mod:`medsim.inference.likelihood.ekf_matrix`): an ``(n,)`` mean and an ``(n, n)``
  covariance, ``F P`` as JVPs of the drift along the columns of ``P``; the graph no longer
  grows with ``n``, which is what makes the 6-state glucose model compile in seconds (its
  gradient took minutes in the entries layout).
* ``"auto"`` picks ``"matrix"`` when the stored covariance block has
  :data:`~medsim.inference.likelihood.filtering.MATRIX_FROM_STATES` states or more, and
  ``"entries"`` for smaller blocks and the ODE limit.

Gradients: in the entries layout :func:`cohort_loglik` differentiates each subject's filter in
forward mode (one pass carrying a tangent per subject parameter) behind a ``custom_vjp``, so
reverse-mode callers (samplers) never walk back through the time steps; in the matrix layout
(large covariance blocks, many subject parameters) plain reverse mode through the scan is
faster and is used instead (:func:`~medsim.inference.likelihood.filtering.resolve_gradient`).

Precision: the filter runs in the dtype of its inputs. The covariance is symmetric by
construction and ``S`` has a floor of ``1e-6 R`` against round-off in float32; tests that compare
with exact filters run in float64 under ``jax.enable_x64``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from medsim.inference.likelihood import filtering
from medsim.inference.likelihood.ekf_matrix import matrix_loglik
from medsim.inference.likelihood.filtering import (
    SLOT_FIELDS,
    covariance_block,
    filter_layout,
    forward_jacobian_vjp,
    resolve_gradient,
)
from medsim.inference.likelihood.timeline import Timeline
from medsim.models.base import PhysiologyModel

Array = jax.Array


def _jacobian_columns(fn, x: dict[str, Array], names: tuple[str, ...]) -> tuple[dict, list[dict]]:
    """Value of ``fn(x)`` and its Jacobian columns ``d fn / d x_j`` (one JVP per state)."""
    zero = {s: jnp.zeros_like(x[s]) for s in names}
    value, columns = None, []
    for j in names:
        value, column = jax.jvp(fn, (x,), ({**zero, j: jnp.ones_like(x[j])},))
        columns.append(column)
    return value, columns


def subject_loglik(
    model: PhysiologyModel,
    timeline: Timeline,
    theta: Mapping[str, Array],
    residual: Mapping[str, Array],
    slots: Mapping[str, Array],
    *,
    covariance: bool = True,
    layout: str = "auto",
    covariance_states: str = "reachable",
) -> Array:
    """Log predictive density of each slot's observation for one subject.

    Parameters
    ----------
    model : PhysiologyModel
    timeline : Timeline
        Supplies the static metadata (dose CMTs, observables, substeps).
    theta : mapping name -> scalar
        The subject's parameters (individual structural values, covariate effects, process-noise
        scales, and anything else ``model`` reads).
    residual : mapping "<observable>_add" / "<observable>_prop" -> scalar
        Residual-error parameters; missing ones take the model's defaults.
    slots : mapping field -> (K, ...) array
        One subject's row of the timeline arrays (``time``, ``is_obs``, ``obs_value``,
        ``obs_observable``, ``bolus``, ``infusion_rate``).
    covariance : bool
        Propagate the state covariance (False: the ODE limit, ``P = 0``).
    layout : {"auto", "entries", "matrix"}
        Storage of mean and covariance (see the module docstring); the results agree to round-off.
    covariance_states : {"reachable", "all"}
        Store the covariance of the noise-reachable states only (the rest of ``P`` is exactly 0;
        :mod:`medsim.inference.likelihood.reachable`), or of every state. Same results either way.

    Returns
    -------
    (K,) array
        Log density (of the observation, in its unit) at observation slots, 0 elsewhere.

    Raises
    ------
    ValueError
        Unknown ``layout`` or ``covariance_states``.
    """
    kwargs = {"covariance": covariance, "covariance_states": covariance_states}
    if filter_layout(model, timeline, layout, covariance=covariance, covariance_states=covariance_states) == "matrix":
        return matrix_loglik(model, timeline, theta, residual, slots, **kwargs)
    return _entries_loglik(model, timeline, theta, residual, slots, **kwargs)


def _entries_loglik(model, timeline, theta, residual, slots, *, covariance, covariance_states):
    """:func:`subject_loglik` with the mean and the upper triangle of ``P`` as tuples of scalars."""
    names = model.state_names
    # Only the noise-reachable block of P is stored (the rest is identically 0, see
    # inference.likelihood.reachable); sums over states run over that block.
    block = covariance_block(model, timeline, covariance_states) if covariance else ()
    pairs = [(i, j) for i in block for j in block if j >= i]  # upper triangle of the block
    index = {pair: k for k, pair in enumerate(pairs)}
    dtype = jnp.result_type(slots["time"].dtype, jnp.float32)

    def entry(p, i, j):
        return p[index[(i, j) if i <= j else (j, i)]]

    def as_dict(values):
        return {s: jnp.asarray(values[s], dtype) for s in names}

    def drift_jacobian(t, m, rates):
        def drift(x):
            return as_dict(model.drift(t, x, theta, rates))

        return _jacobian_columns(drift, m, names)  # cols[k][names[i]] = F[i, k]

    def remainder(t, y, rates, decay, start=None):
        """``N(y) = f(y) - L y`` for the mean and ``F P + P F^T + G G^T - L_P P`` for the covariance."""
        m, p = y
        if start is not None:
            dm, cols = start
        elif covariance:
            dm, cols = drift_jacobian(t, m, rates)
        else:
            dm, cols = as_dict(model.drift(t, m, theta, rates)), None
        nm = {s: dm[s] - decay[i] * m[s] for i, s in enumerate(names)}
        if not covariance:
            return nm, p
        g = model.diffusion(t, m, theta)
        fp = {(i, j): sum(cols[k][names[i]] * entry(p, k, j) for k in block) for i in block for j in block}
        dp = []
        for (i, j), p_ij in zip(pairs, p, strict=True):
            value = fp[i, j] + fp[j, i] - (decay[i] + decay[j]) * p_ij
            if i == j and names[i] in g:
                value = value + jnp.square(g[names[i]])
            dp.append(value)
        return nm, tuple(dp)

    def rk4_step(t, y, h, rate_c):
        rates = filtering.input_rates(model, timeline, rate_c)
        start = drift_jacobian(t, y[0], rates)
        decay = [jnp.minimum(start[1][i][s], 0.0) for i, s in enumerate(names)]
        half = (
            {s: jnp.exp(decay[i] * h / 2) for i, s in enumerate(names)},
            tuple(jnp.exp((decay[i] + decay[j]) * h / 2) for i, j in pairs) if covariance else (),
        )
        k1 = remainder(t, y, rates, decay, start if covariance else (start[0], None))
        return filtering.lawson_rk4(lambda tt, yy: remainder(tt, yy, rates, decay), t, y, h, half, k1)

    def apply_boluses(y, amounts):
        m, p = y

        def dose_map(x):
            return as_dict(filtering.dose_all(model, timeline, x, amounts))

        if not covariance:
            return dose_map(m), p
        m_new, cols = _jacobian_columns(dose_map, m, names)
        # P <- J P J^T with J[i, k] = cols[k][names[i]]
        jp = {(i, j): sum(cols[k][names[i]] * entry(p, k, j) for k in block) for i in block for j in block}
        return m_new, tuple(sum(jp[i, k] * cols[k][names[j]] for k in block) for i, j in pairs)

    def observe(x):
        return {o: jnp.asarray(v, dtype) for o, v in model.observe(x, theta).items()}

    def update(y, obs, which, is_obs, cens):
        m, p = y

        def select(values):
            return filtering.select(timeline, values, which, dtype)

        # Off observation slots the result is discarded; a unit variance there keeps the
        # discarded branch finite so that its gradient cannot turn into NaN.
        if not covariance:
            prediction = observe(m)
            r = jnp.where(is_obs, filtering.residual_var(model, timeline, residual, prediction, which, dtype), 1.0)
            return y, filtering.observation_update(obs - select(prediction), r, cens)[0]
        prediction, cols = _jacobian_columns(observe, m, names)
        r = jnp.where(is_obs, filtering.residual_var(model, timeline, residual, prediction, which, dtype), 1.0)
        row = {k: select(cols[k]) for k in block}  # H = d observe_o / dx
        ph = {i: sum(entry(p, i, k) * row[k] for k in block) for i in block}
        s = jnp.maximum(sum(row[i] * ph[i] for i in block) + r, 1e-6 * r)
        gain = {i: v / s for i, v in ph.items()}  # 0 outside the block
        loglik, shift, var_y = filtering.observation_update(obs - select(prediction), s, cens)
        # Joseph form (I - K H) P (I - K H)^T + K R K^T, written as P - K H P - P H^T K^T + K S K^T;
        # a censored value gives back Var[y | censored] (filtering.observation_update)
        p_new = tuple(
            entry(p, i, j) - gain[i] * ph[j] - ph[i] * gain[j] + gain[i] * (s + var_y) * gain[j] for i, j in pairs
        )
        m_new = {x: m[x] + gain[i] * shift if i in gain else m[x] for i, x in enumerate(names)}
        return (m_new, p_new), loglik

    m0 = as_dict(model.initial_state(theta))
    p0 = tuple(jnp.zeros((), dtype) for _ in pairs) if covariance else ()
    return filtering.scan_slots(
        timeline, slots, (m0, p0), rk4_step=rk4_step, update=update, apply_boluses=apply_boluses, dtype=dtype
    )


def subject_theta(
    model: PhysiologyModel,
    timeline: Timeline,
    individual_params: Mapping[str, Array],
    noise: Mapping[str, Array] | None,
) -> dict[str, Array]:
    """Every subject's parameters, ``(S,)`` each in the timeline's dtype, with the process-noise
    scales ``noise`` (None: all 0, the ODE limit)."""
    dtype = timeline.time.dtype
    theta = dict(individual_params)
    if noise is None:
        theta.update({p.name: jnp.zeros((), dtype) for p in model.params_of_kind("process_noise")})
    else:
        theta.update(noise)
    n_subjects = timeline.time.shape[0]
    return {k: jnp.broadcast_to(jnp.asarray(v, dtype), (n_subjects,)) for k, v in theta.items()}


def cohort_loglik(
    model: PhysiologyModel,
    timeline: Timeline,
    individual_params: Mapping[str, Array],
    noise: Mapping[str, Array] | None,
    residual: Mapping[str, Array],
    *,
    layout: str | None = None,
    covariance_states: str = "reachable",
    gradient: str | None = None,
) -> Array:
    """Pointwise log-likelihood of every observation of every subject (vmapped over subjects).

    Parameters
    ----------
    model : PhysiologyModel
    timeline : Timeline
        From :func:`~medsim.inference.likelihood.timeline.build_timeline` (``S`` subjects, ``N`` padded
        observations each).
    individual_params : mapping name -> (S,) or scalar
        Subject parameters as returned by ``model.individual_parameters`` (scalars broadcast).
    noise : mapping process-noise parameter -> scalar, or None
        Process-noise scales (override any in ``individual_params``). ``None`` is the ODE limit:
        every process-noise parameter is 0 and the covariance is not propagated.
    residual : mapping "<observable>_add" / "<observable>_prop" -> scalar
        Residual-error parameters (missing ones take the model's defaults).
    layout : {"auto", "entries", "matrix"}, optional
        Storage of the filter's mean and covariance (see the module docstring); default
        ``timeline.layout``. Both layouts give the same numbers to round-off.
    covariance_states : {"reachable", "all"}
        See :func:`subject_loglik`; same numbers either way.
    gradient : {"auto", "forward", "reverse"}, optional
        How reverse-mode callers differentiate it (:func:`~medsim.inference.likelihood.filtering.resolve_gradient`;
        ``"auto"``: reverse in the matrix layout, forward otherwise); default ``timeline.gradient``.
        Same derivatives either way.

    Returns
    -------
    (S, N) array
        ``log p(y_j | y_<j)`` for each real observation (the one-step-ahead predictive density,
        so the sum over a subject is its marginal log-likelihood); 0 where ``obs_mask`` is False.

    Raises
    ------
    ValueError
        Unknown ``layout`` or ``covariance_states``.

    Notes
    -----
    Differentiable in reverse mode (``jax.grad``, ``jax.vjp``). With ``gradient="forward"`` each
    subject's Jacobian is computed in forward mode behind a ``custom_vjp``, so forward-mode
    transformations of the result (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) are not
    available through it; with ``"reverse"`` they are.
    """
    dtype = timeline.time.dtype
    covariance = noise is not None
    layout = filter_layout(model, timeline, layout, covariance=covariance, covariance_states=covariance_states)
    theta = subject_theta(model, timeline, individual_params, noise)
    n_subjects = timeline.time.shape[0]
    slots = {k: jnp.asarray(getattr(timeline, k)) for k in SLOT_FIELDS if getattr(timeline, k) is not None}

    keys = tuple(sorted(theta)) + tuple(f"residual:{k}" for k in sorted(residual))

    def one(vec, slots_s):
        values = dict(zip(keys, vec, strict=True))
        theta_s = {k: values[k] for k in sorted(theta)}
        residual_s = {k: values[f"residual:{k}"] for k in sorted(residual)}
        return subject_loglik(
            model,
            timeline,
            theta_s,
            residual_s,
            slots_s,
            covariance=covariance,
            layout=layout,
            covariance_states=covariance_states,
        )

    vec = jnp.stack(
        [theta[k] for k in sorted(theta)]
        + [jnp.broadcast_to(jnp.asarray(residual[k], dtype), (n_subjects,)) for k in sorted(residual)],
        axis=-1,
    )
    mode = resolve_gradient(timeline.gradient if gradient is None else gradient, layout)
    per_subject = forward_jacobian_vjp(one) if mode == "forward" else one
    per_slot = jax.vmap(per_subject)(vec, slots)
    pointwise = per_slot[jnp.arange(n_subjects)[:, None], jnp.asarray(timeline.obs_slot)]
    return jnp.where(jnp.asarray(timeline.obs_mask), pointwise, 0.0)
