"""Pieces shared by the two layouts of the extended Kalman filter (``ekf`` and ``ekf_matrix``).

Both layouts run the same algorithm (see :mod:`medsim.inference.likelihood.ekf`) and differ only in how
the mean and covariance are stored: as named scalars and the upper triangle of ``P`` written out
entry by entry (``"entries"``), or as an ``(n,)`` vector and an ``(n, n)`` array (``"matrix"``).
Everything that does not depend on that storage lives here: the slot loop, the integrating-factor
RK4 step, dose input rates, residual variances, the selection of the observed observable, the
forward-mode gradient, and the rule that picks a layout from the number of states.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from medsim.inference.likelihood.reachable import noise_reachable_states
from medsim.models.base import PhysiologyModel, residual_key

if TYPE_CHECKING:  # the timeline module imports check_layout from here
    from medsim.inference.likelihood.timeline import Timeline

Array = jax.Array
LOG_2PI = math.log(2.0 * math.pi)
SLOT_FIELDS = ("time", "is_obs", "obs_value", "obs_observable", "obs_cens", "bolus", "infusion_rate")
LAYOUTS = ("auto", "entries", "matrix")
COVARIANCE_STATES = ("reachable", "all")

#: ``layout="auto"`` propagates the covariance in the matrix layout when its stored block (the
#: noise-reachable states, :func:`covariance_block`) has this many states or more. Written-out
#: entries cost O(r^3) traced operations per RK4 stage for a block of ``r`` states, the matrix
#: layout a few batched ones, so the matrix layout wins from a few states on (the crossover is
#: measured in docs/fitting.md, "Layout"). What counts is the block, not the model: the 6-state
#: ``glucose_insulin`` stores one (glucose), and its gradient costs 2.3x less written out.
#: Without a covariance (the ODE limit) ``"auto"`` always means entries: only the Jacobian's
#: diagonal is used there, and written out the rest of it is removed as dead code, which
#: ``jax.jacfwd`` on the stacked state does not allow.
MATRIX_FROM_STATES = 4

GRADIENTS = ("auto", "forward", "reverse")


def _one_of(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"EKF {what} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_gradient(gradient: str) -> str:
    """``gradient`` if it is one of :data:`GRADIENTS`.

    Raises
    ------
    ValueError
        Any other value, named.
    """
    return _one_of(gradient, GRADIENTS, "gradient")


def resolve_gradient(gradient: str, layout: str) -> str:
    """How a reverse-mode caller's derivative of the likelihood is computed.

    ``"forward"``: each subject's Jacobian in forward mode, one tangent per subject parameter
    carried along the filter, behind a ``custom_vjp`` (:func:`forward_jacobian_vjp`);
    ``"reverse"``: JAX's reverse mode through the filter's scan (it stores every step). ``"auto"``
    picks reverse for the matrix layout and forward for the written-out entries. Measured
    (docs/fitting.md, "Gradient mode"): reverse is 1.5-1.6x faster for ``t1d_ou`` (matrix layout,
    5-state block, about 20 tangents), forward 2-4x faster for ``glucose_insulin`` (entries, 1-state
    block) and 1.2-1.4x for ``pk_oral_1cmt`` on theophylline in either layout; there the widened
    forward pass is cheap and reverse mode's stored steps are not.

    Parameters
    ----------
    gradient : {"auto", "forward", "reverse"}
    layout : {"entries", "matrix"}
        The layout that runs (:func:`resolve_layout`).

    Raises
    ------
    ValueError
        ``gradient`` is not one of :data:`GRADIENTS`.
    """
    if check_gradient(gradient) == "auto":
        return "reverse" if layout == "matrix" else "forward"
    return gradient


def check_layout(layout: str) -> str:
    """``layout`` if it is one of :data:`LAYOUTS`.

    Raises
    ------
    ValueError
        Any other value, named.
    """
    return _one_of(layout, LAYOUTS, "layout")


def resolve_layout(layout: str, n_states: int, *, covariance: bool = True) -> str:
    """The layout that runs: ``"entries"`` or ``"matrix"`` (``"auto"`` decided as described above).

    Parameters
    ----------
    layout : {"auto", "entries", "matrix"}
    n_states : int
        Number of states whose covariance the filter stores (the block, see :func:`filter_layout`).
    covariance : bool
        False for the ODE limit.

    Raises
    ------
    ValueError
        ``layout`` is not one of ``"auto"``, ``"entries"``, ``"matrix"``.
    """
    if check_layout(layout) == "auto":
        return "matrix" if covariance and n_states >= MATRIX_FROM_STATES else "entries"
    return layout


def filter_layout(
    model: PhysiologyModel,
    timeline: Timeline,
    layout: str | None = None,
    *,
    covariance: bool = True,
    covariance_states: str = "reachable",
) -> str:
    """The layout that runs for ``model`` on ``timeline`` (``layout`` default: ``timeline.layout``).

    Raises
    ------
    ValueError
        Unknown ``layout`` or ``covariance_states``.
    """
    layout = timeline.layout if layout is None else layout
    block = covariance_block(model, timeline, covariance_states) if covariance else ()
    return resolve_layout(layout, len(block), covariance=covariance)


def covariance_block(model: PhysiologyModel, timeline: Timeline, covariance_states: str) -> tuple[int, ...]:
    """States (indices in ``model.state_names`` order) whose covariance block the filter stores.

    ``"reachable"``: the noise-reachable states (:mod:`medsim.inference.likelihood.reachable`; the
    rest of ``P`` is identically 0, so the likelihood is the same); ``"all"``: every state (the
    textbook filter, kept for testing that equality).

    Raises
    ------
    ValueError
        Any other ``covariance_states``.
    """
    if covariance_states == "all":
        return tuple(range(len(model.state_names)))
    if covariance_states == "reachable":
        return noise_reachable_states(model, timeline.dose_cmts)
    raise ValueError(f"covariance_states must be one of {COVARIANCE_STATES}; got {covariance_states!r}")


def input_rates(model: PhysiologyModel, timeline: Timeline, rate_c: Array) -> dict[str, Array]:
    """Infusion rates ``(C,)`` per dose compartment -> input rate per dosed state (state unit / time)."""
    rates: dict[str, Array] = {}
    for c, cmt in enumerate(timeline.dose_cmts):
        target = model.dose_targets[cmt]
        rates[target] = rates.get(target, 0.0) + model.dose_scale.get(cmt, 1.0) * rate_c[c]
    return rates


def dose_all(model: PhysiologyModel, timeline: Timeline, x: Mapping[str, Array], amounts: Array) -> dict:
    """State after the boluses ``amounts`` ``(C,)`` into every dose compartment of the timeline."""
    x = dict(x)
    for c, cmt in enumerate(timeline.dose_cmts):
        x = model.dose(x, cmt, amounts[c])
    return x


def select(timeline: Timeline, values: Mapping[str, Array], which: Array, dtype: Any) -> Array:
    """The entry of ``values`` (keyed by observable) that ``which`` indexes; a static loop, no gather."""
    out = jnp.zeros((), dtype)
    for i, o in enumerate(timeline.observables):
        out = out + jnp.where(which == i, values[o], 0.0)
    return out


def residual_var(
    model: PhysiologyModel,
    timeline: Timeline,
    residual: Mapping[str, Array],
    prediction: Mapping[str, Array],
    which: Array,
    dtype: Any,
) -> Array:
    """Residual variance ``R`` (observable unit squared) of the observable ``which`` at ``prediction``."""
    var = jnp.zeros((), dtype)
    for o, spec in model.residual.items():
        if o not in timeline.observables:
            continue
        sd = spec.sd(prediction[o], residual.get(residual_key(o, "add")), residual.get(residual_key(o, "prop")))
        var = var + jnp.where(which == timeline.observables.index(o), sd * sd, 0.0)
    return var


def gaussian_logpdf(innovation: Array, variance: Array) -> Array:
    """``log Normal(innovation; 0, variance)``."""
    return -0.5 * (LOG_2PI + jnp.log(variance) + jnp.square(innovation) / variance)


def observation_update(innovation: Array, variance: Array, cens: Array) -> tuple[Array, Array, Array]:
    """Log-likelihood and the moments that update the filter, for a measured or censored value.

    The filter's predictive for the measurement is ``y ~ Normal(h, S)`` (``innovation = y - h``,
    ``variance = S``). A measured value (``cens = 0``) contributes ``log Normal(y; h, S)``. A value
    censored at a limit ``L`` held in ``y`` contributes the probability of the event, Beal's M3
    method (Beal 2001, *J Pharmacokinet Pharmacodyn* 28:481): ``log P(y < L) = log Phi(z)`` below
    (``cens = 1``), ``log P(y > L) = log Phi(-z)`` above (``cens = -1``), ``z = (L - h) / sqrt(S)``.

    The state update conditions on the event instead of a value: with ``(x, y)`` jointly
    Gaussian and ``K = P H^T / S``, ``E[x | A] = m + K (E[y | A] - h)`` and
    ``Cov[x | A] = P - (S - Var[y | A]) K K^T``, the moments of the truncated normal
    ``y | A`` (Johnson, Kotz & Balakrishnan 1994, §10.1; the Tobit Kalman filter of Allik et
    al. 2016, IEEE TSP 64:3204). A measured value is the limit ``E[y | A] = y``, ``Var[y | A] = 0``.

    Returns
    -------
    loglik : array
    shift : array
        ``E[y | A] - h``, the innovation the mean is updated with.
    var_y : array
        ``Var[y | A]``, which the covariance update gives back (0 for a measured value).
    """
    censored = cens != 0
    sd = jnp.sqrt(variance)
    direction = jnp.where(censored, cens, 1).astype(innovation.dtype)
    # the untaken branch is evaluated too: keep it finite (z = 0) so no NaN reaches a gradient
    z = jnp.where(censored, direction * innovation / sd, 0.0)
    log_p = jax.scipy.special.log_ndtr(z)
    ratio = jnp.exp(-0.5 * (LOG_2PI + jnp.square(z)) - log_p)  # phi(z) / Phi(z)
    loglik = jnp.where(censored, log_p, gaussian_logpdf(innovation, variance))
    shift = jnp.where(censored, -direction * sd * ratio, innovation)
    var_y = jnp.where(censored, variance * (1.0 - z * ratio - jnp.square(ratio)), 0.0)
    return loglik, shift, var_y


def lawson_rk4(remainder: Callable, t: Array, y: Any, h: Array, half: Any, k1: Any) -> Any:
    """One integrating-factor RK4 step (Lawson 1967, SIAM J Numer Anal 4:372) on a pytree ``y``.

    The caller splits the vector field into a decaying linear part ``L`` (integrated exactly)
    and the remainder ``N(t, y) = rhs(t, y) - L y``; ``half`` holds ``exp(L h / 2)`` with the
    structure of ``y`` and ``k1 = N(t, y)``. The method is 4th order for any constant ``L``;
    with ``L = min(diag F(m_start), 0)`` first-order elimination such as a fast absorption rate
    cannot make the step unstable, which keeps the likelihood finite far into the tails of the
    posterior where plain RK4 would overflow.
    """
    full = jax.tree.map(jnp.square, half)

    def scale(e, v):
        return jax.tree.map(jnp.multiply, e, v)

    k2 = remainder(t + h / 2, scale(half, _axpy(h / 2, k1, y)))
    k3 = remainder(t + h / 2, _axpy(h / 2, k2, scale(half, y)))
    k4 = remainder(t + h, _axpy(h, scale(half, k3), scale(full, y)))
    return jax.tree.map(
        lambda y0, e, e2, a, b, c, d: e2 * y0 + h / 6 * (e2 * a + 2 * e * (b + c) + d),
        y,
        half,
        full,
        k1,
        k2,
        k3,
        k4,
    )


def _axpy(a, k, y):
    """``y + a * k`` over a pytree."""
    return jax.tree.map(lambda yi, ki: yi + a * ki, y, k)


def scan_slots(
    timeline: Timeline,
    slots: Mapping[str, Array],
    state0: Any,
    *,
    rk4_step: Callable,
    update: Callable,
    apply_boluses: Callable,
    dtype: Any,
    final: bool = False,
) -> Array | tuple[Array, tuple[Array, Any]]:
    """Run a filter over one subject's slots and return each slot's log predictive density ``(K,)``.

    Per slot: ``timeline.substeps`` steps ``state = rk4_step(t, state, h, rate_c)`` up to the slot
    time, the Kalman update ``update(state, y, which, is_obs, cens) -> (state, loglik)`` kept only at
    observation slots, then the boluses ``apply_boluses(state, amounts)`` (so a sample at a dose
    time is a pre-dose measurement, as the timeline orders them).

    With ``final`` the result is ``(loglik, (t_last, state_last))``: also the filter's state after
    the subject's last slot (padding slots repeat the last time and leave it unchanged), i.e. the
    state given every measurement of the record, at the time of its last event.
    """

    def step(carry, slot):
        t_prev, state = carry
        t = slot["time"]
        h = (t - t_prev) / timeline.substeps
        rate_c = slot["infusion_rate"]
        state = jax.lax.fori_loop(0, timeline.substeps, lambda i, s: rk4_step(t_prev + i * h, s, h, rate_c), state)
        observed, ll = update(state, slot["obs_value"], slot["obs_observable"], slot["is_obs"], slot["obs_cens"])
        state = jax.tree.map(lambda a, b: jnp.where(slot["is_obs"], a, b), observed, state)
        state = apply_boluses(state, slot["bolus"])
        return (t, state), jnp.where(slot["is_obs"], ll, 0.0)

    fields = {k: slots[k] for k in SLOT_FIELDS if k != "obs_cens"}
    fields["obs_cens"] = slots["obs_cens"] if "obs_cens" in slots else jnp.zeros_like(slots["obs_observable"])
    last, ll = jax.lax.scan(step, (jnp.zeros((), dtype), state0), fields)
    return (ll, last) if final else ll


def forward_jacobian_vjp(fn: Callable[[Array, Any], Array]) -> Callable[[Array, Any], Array]:
    """``fn(vec, slots) -> (K,)`` whose reverse-mode derivative is computed in forward mode.

    A subject's likelihood depends on a handful of parameters (``d``) but runs through hundreds
    of sequential filter steps. Reverse mode stores every step and walks back through them;
    forward mode carries the ``d`` tangents along with the filter in one pass, so the Jacobian
    ``(d, K)`` costs about one widened forward pass and the cotangent is a small product.
    """

    @jax.custom_vjp
    def wrapped(vec, slots):
        return fn(vec, slots)

    def forward(vec, slots):
        basis = jnp.eye(vec.shape[-1], dtype=vec.dtype)
        # The primal does not depend on the tangent, so it comes out unbatched (out_axes None).
        value, jacobian = jax.vmap(lambda t: jax.jvp(lambda v: fn(v, slots), (vec,), (t,)), out_axes=(None, 0))(basis)
        return value, jacobian

    def backward(jacobian, cotangent):
        return jacobian @ cotangent, None

    wrapped.defvjp(forward, backward)
    return wrapped
