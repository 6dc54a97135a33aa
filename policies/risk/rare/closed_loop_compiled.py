"""The closed loop as a pure-JAX path function: splitting and the option loop in one compiled program.

:func:`compiled_paths` gives the path function of
:func:`medsim.policies.risk.rare.closed_loop.closed_loop_problem` for a policy with an array step
(``policy.array_step(state, obs, xp)``: ``pid``, ``basal_bolus``, ``fixed``, ``tdm``). It is the
option loop of :mod:`medsim.policies.device_loop` (measure, act, advance) written for a batch of
increments, built from the same compiled pieces:

* the noisy measurement :func:`medsim.policies.array_step.measure_expr` and the policy's step
  :func:`medsim.policies.array_step.step_expr` (float64, each isolated as the compiled loop
  isolates it);
* one interval planned and advanced by :func:`medsim.policies.device_interval.advance` (the
  simulator's compiled interval kernel, Brownian-bridge statistics included) and checked by
  :func:`~medsim.policies.device_interval.refused`;
* the noise of a row's ``k``-th interaction from the counter-based streams
  ``(seed, stream, id_k, k)`` with ``id_k`` the hash of the row's ``k``-th increment pair
  (:func:`~medsim.policies.risk.rare.closed_loop.noise_ids`, here on the device), looked up as the
  compiled loop looks up a :class:`~medsim.policies.noise_index.NoiseTable`;
* the scenario's events (the same for every row, e.g. nominal meals) as arrays.

So the estimator's ``lax.while_loop`` calls the whole closed loop of a clone batch as traced
code: no host round trip and no rollout set-up per batch. With ``segments > 1`` each interval is
advanced in pieces with their own noise (:func:`compiled_paths`), so that clones can branch
inside an interval. The numbers are those of the host
rollout on the same increments up to float32 rounding of the scores (tested).

A row that the rollout would refuse (a non-finite or runaway state, an unusable option, more
than ``interactions`` interactions) gets a NaN crossing probability, which the estimator reports
as a failure (:class:`~medsim.policies.risk.rare.ams.AMSFailure`).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from medsim.policies.array_step import isolated, measure_expr, step_expr
from medsim.policies.device_interval import Clock, Inputs, Layout, advance, refused, scenario_layout
from medsim.policies.protocol import Policy
from medsim.population.virtual import VirtualPopulation
from medsim.simulate import cache

F32, F64 = jnp.float32, jnp.float64
_GOLDEN = np.uint32(0x9E3779B1)


class _Carry(NamedTuple):
    x: dict
    t: jax.Array
    k: jax.Array
    active: jax.Array
    measure: jax.Array
    pstate: Any
    log_surv: jax.Array
    bad: jax.Array


class _Static(NamedTuple):
    """The hashable part of one compiled path function."""

    layout: Layout
    policy: Policy
    observable: str
    value: float
    upper: bool
    log_scale: bool
    measured_obs: tuple
    noise: bool
    announces: bool
    horizon: float
    dt: float
    tol: float
    n_steps: int  # interactions per path
    segments: int  # noise segments per interaction


def compiled_capable(policy: Policy, scenario_events) -> bool:
    """Whether :func:`compiled_paths` can run ``policy``: an array step the compiled loop traces,
    no per-patient ``prepare`` (its state would depend on the row), scenario boluses only."""
    from medsim.policies.device_loop import supports_device

    if not supports_device(policy) or callable(getattr(policy, "prepare", None)):
        return False
    return scenario_events is None or not bool(np.any(np.asarray(scenario_events.rate) > 0))


def device_noise_ids(increments: jax.Array) -> jax.Array:
    """:func:`medsim.policies.risk.rare.closed_loop.noise_ids` on the device: ``(..., 2) -> (...)`` uint32."""
    bits = jax.lax.bitcast_convert_type(increments.astype(F32), jnp.uint32)
    return bits[..., 0] * _GOLDEN ^ bits[..., 1]


class _F64(NamedTuple):
    """A float64 array as two float32 arrays whose sum restores it: the estimators' arguments are
    float32 outside ``enable_x64``, the closed loop computes in float64."""

    hi: Any
    lo: Any


def _split64(a) -> _F64:
    a = np.asarray(a, np.float64)
    hi = a.astype(np.float32)
    return _F64(hi, (a - hi.astype(np.float64)).astype(np.float32))


def _join64(pair) -> jax.Array:
    return pair.hi.astype(F64) + pair.lo.astype(F64)


def _leaf(a: np.ndarray):
    """A policy-state leaf as an estimator argument: floats split (:func:`_split64`), the rest as is."""
    return _split64(a) if a.dtype.kind == "f" else a


def _unleaf(a, b: int) -> jax.Array:
    """The leaf of :func:`_leaf` (float64 / int64 / bool) broadcast from one row to ``b`` rows."""
    a = _join64(a) if isinstance(a, _F64) else (a.astype(jnp.int64) if a.dtype.kind in "iu" else a)
    return jnp.broadcast_to(a[0], (b, *a.shape[1:]))


def compiled_paths(
    setup, population: VirtualPopulation, policy: Policy, bound, scen, seed: int, n_steps: int, segments: int = 1
):
    """``(paths, params)`` of the closed-loop problem, ``paths`` shared by equal configurations.

    Parameters
    ----------
    setup : policies.rollout_setup._Setup
        The rollout settings (model, simulator, bounds, horizon, noise).
    population : VirtualPopulation
        The ``N`` patients a row's first increment chooses from.
    policy : Policy
        Already bound to the model (:func:`medsim.policies.protocol.for_model`).
    bound : Bound
        The rare event's bound (the first of ``setup.bounds``).
    scen : DoseEvents or None
        One row's scenario events ``(1, E)`` (every row sees them).
    seed : int
        The rollout seed (runtime input: the streams' roots).
    n_steps : int
        Interactions per path.
    segments : int
        Noise segments per interaction (the problem has ``T = n_steps * segments`` steps): each
        interaction's interval is advanced in ``segments`` pieces of whole sub-steps, piece ``m``
        of interaction ``k`` with the process noise of step ``k * segments + m``'s increment pair
        (the measurement noise of interaction ``k`` from its first piece). The law of the paths is
        the same (the policy acts only at interactions); splitting can branch inside an interval.
        With 1, the noise is the rollout's, bit for bit.
    """
    from medsim.policies.device_streams import stream_roots

    model = setup.model
    event_cmts, columns = scenario_layout(scen)
    static = _Static(
        layout=None,
        policy=policy,
        observable=bound.observable,
        value=float(bound.value),
        upper=bound.side == "upper",
        log_scale=model.observable(bound.observable).bridge_scale == "log",
        measured_obs=setup.measured_obs,
        noise=setup.noise,
        announces=scen is not None and bool(setup.scenario.announced),
        horizon=float(setup.horizon),
        dt=float(setup.sim.dt),
        tol=float(setup.tol),
        n_steps=int(n_steps),
        segments=int(segments),
    )
    key = (
        "rare-closed-loop",
        cache.model_key(model),
        static._replace(policy=None),
        policy,
        setup.sim.bounds,
        setup.sim.scheme,
        event_cmts,
        columns,
    )

    def build():
        layout = tuple((model.dose_targets[cm], False) for _, cm in columns)
        lay = Layout(setup.sim.interval_kernel(layout), model, setup.cmts, event_cmts, columns)
        return partial(_paths, static._replace(layout=lay))

    try:
        hash(policy)
    except TypeError:  # an unhashable policy: compiled for this problem only
        key = None
    paths = build() if key is None else cache.cached(key, build)
    n = population.n_patients
    theta = {k: np.asarray(v, np.float32) for k, v in population.simulation_parameters().items()}
    x0 = {k: np.asarray(v, np.float32) for k, v in population.initial_state().items()}
    residual = {k: np.asarray(v, np.float32) for k, v in population.residual.items()}
    covariates = {c: _split64(np.broadcast_to(v, (n,))) for c, v in population.covariates.items()}
    pstate = jax.tree_util.tree_map(lambda a: _leaf(np.asarray(a)[:1]), policy.init(1, seed=0))
    if scen is None:
        ev = (np.full((1, 0), np.inf, np.float32), np.zeros((1, 0), np.int32), np.zeros((1, 0), np.float32))
    else:
        ev = (np.asarray(scen.time, np.float32), np.asarray(scen.cmt, np.int32), np.asarray(scen.amount, np.float32))
    params = {
        "theta": {k: np.broadcast_to(v, (n,)).copy() for k, v in theta.items()},
        "x0": {k: np.broadcast_to(v, (n,)).copy() for k, v in x0.items()},
        "covariates": covariates,
        "res_add": {o: residual[f"{o}_add"] for o in setup.measured_obs if f"{o}_add" in residual},
        "res_prop": {o: residual[f"{o}_prop"] for o in setup.measured_obs if f"{o}_prop" in residual},
        "pstate": pstate,
        "events": ev,
        "roots": np.asarray(stream_roots(seed)).astype(np.uint32),
    }
    return paths, params


def _paths(s: _Static, inc: jax.Array, params: dict) -> tuple[jax.Array, jax.Array]:
    """Scores ``(B, T)`` float32 and crossing probabilities ``(B,)`` float32 of increments ``(B, T, 2)``."""
    with jax.enable_x64(True):
        return _loop(s, inc, params)


def _loop(s: _Static, inc: jax.Array, params: dict):
    params = jax.tree_util.tree_map(jnp.asarray, params)  # numpy when closed over rather than passed
    b = inc.shape[0]
    n = params["theta"][next(iter(params["theta"]))].shape[0]
    ids = device_noise_ids(inc)  # (B, T)
    u = jax.scipy.special.ndtr(inc[:, 0, 0].astype(F64))
    who = jnp.minimum(jnp.floor(u * n).astype(jnp.int64), n - 1)
    theta = {k: v[who] for k, v in params["theta"].items()}
    covariates = {c: _join64(v)[who] for c, v in params["covariates"].items()}
    res_add = {o: v[who] for o, v in params["res_add"].items()}
    res_prop = {o: v[who] for o, v in params["res_prop"].items()}
    ev_time, ev_cmt, ev_amount = (jnp.broadcast_to(a, (b, a.shape[1])) for a in params["events"])
    roots = params["roots"]
    rows = jnp.arange(b, dtype=jnp.int64)

    def base(root, i):
        root = jax.random.wrap_key_data(root)
        return jax.random.key_data(jax.vmap(lambda j: jax.random.fold_in(root, j))(i))

    def body(c: _Carry, _):
        model, lay = s.layout.model, s.layout
        first = jnp.minimum(c.k, s.n_steps - 1) * s.segments
        meas_key = base(roots[0], ids[rows, first])
        true32 = {o: jnp.broadcast_to(v, (b,)) for o, v in model.observe(c.x, theta).items()}
        bad = c.bad
        for v in true32.values():
            bad = bad | ~jnp.isfinite(v)
        take = c.measure & c.active
        width = max(len(s.measured_obs), 1)
        keys = jax.vmap(lambda kd, i: jax.random.fold_in(jax.random.wrap_key_data(kd), i))(
            meas_key, c.k.astype(jnp.uint32)
        )
        z = jax.vmap(lambda key: jax.random.normal(key, (width,), F32))(keys).astype(F64)
        measure = partial(measure_expr, model, s.measured_obs, s.noise)
        measured = isolated(measure, {o: true32[o] for o in s.measured_obs}, res_add, res_prop, z, take)
        t_ev = ev_time.astype(F64)
        announced = {}
        if s.announces:
            now = jnp.abs(t_ev - c.t[:, None]) <= s.tol
            for cm in lay.event_cmts:
                a = jnp.where(now & (ev_cmt == cm), ev_amount.astype(F64), 0.0).sum(axis=1)
                announced[cm] = jnp.where(c.active, a, 0.0)
        fields = {
            "time": c.t,
            "measured": measured,
            "announced": announced,
            "covariates": covariates,
            "active": c.active,
            "patient": rows,
            "index": c.k,
        }
        step = partial(step_expr, s.policy, model.time_unit, s.horizon)
        pstate, option = isolated(step, c.pstate, fields)
        interval = option["interval"]
        bad = bad | (c.active & ~(interval > 0))
        doses = {}
        for field in ("bolus", "rate"):
            doses[field] = {}
            for cm in lay.cmts:
                a = option[field].get(cm, jnp.zeros(b, F64))
                bad = bad | (c.active & ~((a >= 0) & jnp.isfinite(a)))
                doses[field][cm] = jnp.where(c.active, a, 0.0)
        measure_next = option["measure_next"]
        measure_next = jnp.ones(b, bool) if measure_next is None else measure_next
        t1 = jnp.minimum(c.t + interval, s.horizon)
        if s.announces:
            t1 = jnp.minimum(t1, jnp.where(t_ev > c.t[:, None] + s.tol, t_ev, jnp.inf).min(axis=1))
        t1 = jnp.where(c.active, jnp.where(s.horizon - t1 <= s.tol, s.horizon, t1), c.t)
        x, score, log_surv, bad = _advance_segments(
            s, lay, c, t1, doses, ids, first, roots[1], bad, rows, theta, (ev_time, ev_cmt, ev_amount)
        )
        log_surv = c.log_surv + log_surv
        score = jnp.where(c.active[None, :], score, -jnp.inf).astype(F32)  # (segments, B)
        carry = _Carry(
            x=x,
            t=t1,
            k=c.k + c.active,
            active=t1 < s.horizon - s.tol,
            measure=measure_next,
            pstate=pstate,
            log_surv=log_surv,
            bad=bad,
        )
        return carry, score

    pstate = jax.tree_util.tree_map(lambda a: _unleaf(a, b), params["pstate"], is_leaf=lambda a: isinstance(a, _F64))
    start = _Carry(
        x={k: v[who] for k, v in params["x0"].items()},
        t=jnp.zeros(b, F64),
        k=jnp.zeros(b, jnp.int64),
        active=jnp.ones(b, bool),
        measure=jnp.ones(b, bool),
        pstate=pstate,
        log_surv=jnp.zeros(b, F64),
        bad=jnp.zeros(b, bool),
    )
    end, score = jax.lax.scan(body, start, None, length=s.n_steps)  # (n_steps, segments, B)
    bad = end.bad | end.active  # more than n_steps interactions: the rollout would refuse the path
    crossing = jnp.where(bad, jnp.nan, -jnp.expm1(end.log_surv))
    return jnp.transpose(score, (2, 0, 1)).reshape(b, -1), crossing.astype(F32)


def _advance_segments(s: _Static, lay: Layout, c, t1, doses, ids, first, root, bad, rows, theta, events):
    """Advance ``[t, t1)`` in ``s.segments`` pieces: the state, the scores ``(segments, B)``, the
    summed bridge log-survival and the refusal flags."""

    def piece(x, t0, t_end, bolus, idx):
        key = jax.random.key_data(
            jax.vmap(lambda i: jax.random.fold_in(jax.random.wrap_key_data(root), i))(ids[rows, idx])
        )
        inp = Inputs(theta, key, *events)
        out, _ = advance(lay, inp, Clock(x, t0, c.k), t_end, bolus, doses["rate"], jnp.float64(s.dt))
        st = out.stats
        y = (st.obs_max if s.upper else st.obs_min)[s.observable].astype(F64)
        return out.x, _score(y, s), st.log_survival[:, 0].astype(F64), c.active & refused(lay, out, t_end)

    if s.segments == 1:  # the rollout's interval, bit for bit
        x, score, log_surv, refusal = piece(c.x, c.t, t1, doses["bolus"], first)
        return x, score[None], jnp.where(c.active, log_surv, 0.0), bad | refusal
    from medsim.simulate.plan import GRID_TOLERANCE

    n_sub = jnp.maximum(jnp.ceil((t1 - c.t) / s.dt - GRID_TOLERANCE), 0.0)
    nobolus = {cm: jnp.zeros_like(v) for cm, v in doses["bolus"].items()}

    def ends(m):
        return jnp.where(m >= s.segments, t1, jnp.minimum(c.t + s.dt * jnp.ceil(n_sub * m / s.segments), t1))

    def step(carry, m):
        x, log_surv, bad = carry
        bolus = jax.tree_util.tree_map(lambda a, z: jnp.where(m == 0, a, z), doses["bolus"], nobolus)
        x, score, ls, refusal = piece(x, ends(m), ends(m + 1), bolus, first + m)
        return (x, log_surv + jnp.where(c.active, ls, 0.0), bad | refusal), score

    (x, log_surv, bad), score = jax.lax.scan(step, (c.x, jnp.zeros_like(c.log_surv), bad), jnp.arange(s.segments))
    return x, score, log_surv, bad


def _score(y: jax.Array, s: _Static) -> jax.Array:
    """The per-interaction score of :func:`~medsim.policies.risk.rare.closed_loop.closed_loop_problem`."""
    v = s.value
    if s.log_scale:
        return jnp.log(y / v) if s.upper else jnp.log(v / jnp.maximum(y, 1e-300))
    return (y - v) / abs(v) if s.upper else (v - y) / abs(v)
