"""Array steps evaluated by XLA on the host: the arithmetic the compiled loop does, one call at a time.

A policy with an array step (``array_step(state, obs, xp)``, the built-in ``pid``, ``basal_bolus``,
``fixed``, ``tdm``, ``flip`` and ``safe_timing``) is one pure function of arrays. The compiled
option loop (:mod:`medsim.policies.device_loop`) traces it with ``xp = jax.numpy`` in float64; the
host loop calls :func:`host_step`, which jits the same trace. Both loops therefore compute the
policy (and the noisy measurement, :func:`measure_expr`) with XLA's float64 arithmetic — which
differs from numpy's in the last bit (fused multiply-adds, division by a constant as a
multiplication, its own ``exp``) — and give identical numbers on the same seed.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medsim.policies.protocol import Observation, Option
from medsim.transfer import to_device


def measure_expr(model, names: tuple, noise: bool, true32: dict, add: dict, prop: dict, z, take) -> dict:
    """Noisy measurements ``y = f + sd(f) z`` (float64; NaN where ``take`` is False).

    ``true32``: the observables in float32 (the residual SD is computed from them in float32, as
    :meth:`medsim.population.virtual.VirtualPopulation.residual_sd` does); ``add``/``prop``: each
    patient's residual parameters (float32, by observable; absent = the model's default);
    ``z``: ``(n, len(names))`` standard normals.
    """
    out = {}
    for j, name in enumerate(names):
        true = true32[name].astype(jnp.float64)
        sd = jnp.zeros_like(true)
        if noise:
            sd = model.residual[name].sd(true32[name], add=add.get(name), prop=prop.get(name)).astype(jnp.float64)
        out[name] = jnp.where(take, true + sd * z[:, j], jnp.nan)
    return out


def isolated(fn, *args):
    """``fn(*args)`` with optimization barriers around it: XLA neither fuses it with what comes
    before or after nor contracts across it, so it rounds as the same function jitted alone."""
    return jax.lax.optimization_barrier(fn(*jax.lax.optimization_barrier(args)))


class HostMeasure:
    """:func:`measure_expr` jitted for the host loop (numpy in and out)."""

    def __init__(self, model, names: tuple, noise: bool):
        from medsim.simulate import cache

        # One compiled function per (model, observables, noise), shared by every rollout setup (a new
        # jit object per setup would compile again on each call).
        key = ("host-measure", cache.model_key(model), tuple(names), bool(noise))
        self._fn = cache.cached(
            key, lambda: jax.jit(partial(isolated, partial(measure_expr, model, tuple(names), bool(noise))))
        )

    def __call__(self, true32: dict, add: dict, prop: dict, z: np.ndarray, take: np.ndarray) -> dict:
        with jax.enable_x64(True):
            out = self._fn(
                {k: to_device(np.asarray(v, np.float32)) for k, v in true32.items()},
                {k: to_device(np.asarray(v, np.float32)) for k, v in add.items()},
                {k: to_device(np.asarray(v, np.float32)) for k, v in prop.items()},
                to_device(np.asarray(z, np.float64)),
                to_device(np.asarray(take, bool)),
            )
            return {k: np.asarray(v) for k, v in out.items()}


def observation(fields: dict, time_unit: str, horizon: float) -> Observation:
    """An :class:`Observation` of traced arrays (no subject: array steps do not read it)."""
    n = fields["time"].shape[0]
    return Observation(
        time=fields["time"],
        measured=fields["measured"],
        announced=fields["announced"],
        covariates=fields["covariates"],
        active=fields["active"],
        patient=fields["patient"],
        index=fields["index"],
        subject=np.full(n, "", dtype=str),
        time_unit=time_unit,
        horizon=horizon,
    )


def step_expr(policy, time_unit: str, horizon: float, state, fields: dict):
    """The policy's array step on traced arrays, its option as a dict of ``(n,)`` arrays."""
    state, option = policy.array_step(state, observation(fields, time_unit, horizon), jnp)
    n = fields["time"].shape[0]
    measure = option.measure_next
    return state, {
        "interval": jnp.broadcast_to(jnp.asarray(option.interval, jnp.float64), (n,)),
        "bolus": {c: jnp.broadcast_to(jnp.asarray(v, jnp.float64), (n,)) for c, v in option.bolus.items()},
        "rate": {c: jnp.broadcast_to(jnp.asarray(v, jnp.float64), (n,)) for c, v in option.rate.items()},
        "measure_next": None if measure is None else jnp.broadcast_to(jnp.asarray(measure, bool), (n,)),
    }


@partial(jax.jit, static_argnums=(0, 1, 2))
def _step(policy, time_unit: str, horizon: float, state, fields):
    return isolated(partial(step_expr, policy, time_unit, horizon), state, fields)


def prepare_state(policy: Any, state: Any, patient, covariates, subject) -> Any:
    """``policy.prepare(state, patient, covariates, subject)`` where the policy has one (host-side,
    once per chunk: per-patient arrays drawn from the patients' indices, covariates and subjects,
    which a traced step cannot read); the state unchanged otherwise. ``prepare`` returns a state
    already prepared as it is."""
    prepare = getattr(policy, "prepare", None)
    return state if not callable(prepare) else prepare(state, patient, covariates, subject)


def observation_fields(obs: Observation) -> dict[str, Any]:
    """The array fields of ``obs`` a compiled step reads (a pytree; the rest is static)."""
    return {
        "time": obs.time,
        "measured": dict(obs.measured),
        "announced": dict(obs.announced),
        "covariates": dict(obs.covariates),
        "active": obs.active,
        "patient": obs.patient,
        "index": obs.index,
    }


def host_step(policy: Any, state: Any, obs: Observation) -> tuple[Any, Option]:
    """``policy.array_step(state, obs, jax.numpy)`` jitted in float64, numpy in and out.

    Policies whose ``act`` is this call give the host loop the numbers of the compiled loop. A
    policy with a ``prepare(state, patient, covariates, subject)`` method (state drawn from the
    patients on the host, e.g. ``safe_timing``'s particles) has its state prepared first, as the
    compiled loop prepares it before its first step.
    """
    state = prepare_state(policy, state, obs.patient, obs.covariates, obs.subject)
    fields = observation_fields(obs)
    with jax.enable_x64(True):
        fields = jax.tree_util.tree_map(to_device, fields)
        state = jax.tree_util.tree_map(to_device, state)
        new_state, out = _step(policy, obs.time_unit, float(obs.horizon), state, fields)
        new_state = jax.tree_util.tree_map(np.asarray, new_state)
        out = jax.tree_util.tree_map(np.asarray, out)
    option = Option(interval=out["interval"], bolus=out["bolus"], rate=out["rate"], measure_next=out["measure_next"])
    return new_state, option
