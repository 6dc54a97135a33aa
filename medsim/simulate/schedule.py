"""Noise-free observables on per-patient observation schedules (predictive checks, synthetic cohorts).

The latent SDE is simulated from time 0 (or from ``x0`` at times ``t0``) through each patient's observation times;
what is returned is the model's observe function at those times, without residual (measurement)
error. With every process-noise parameter at 0 the result is the ODE solution on the same grid.
A dose at exactly an observation time acts after that observation (the trough-sample convention
of NONMEM-style event tables).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.simulate.cache import cached, model_key
from medsim.simulate.simulator import Simulator
from medsim.simulate.types import DoseEvents


def _simulator(model: PhysiologyModel, dt: float, scheme: str) -> Simulator:
    """A simulator shared by calls with an equal model, step and scheme (medsim's compile cache)."""
    key = ("schedule-simulator", model_key(model), float(dt), scheme)
    return cached(key, lambda: Simulator(model, dt=float(dt), bounds=(), scheme=scheme))


def simulate_schedule(
    model: PhysiologyModel,
    params: Mapping[str, jax.Array],
    events: DoseEvents | None,
    obs_time,
    *,
    key: jax.Array,
    dt: float,
    x0: Mapping[str, jax.Array] | None = None,
    t0=None,
    scheme: str = "auto",
) -> dict[str, jax.Array]:
    """Observables of ``B`` simulated patients at their observation times.

    Parameters
    ----------
    model : PhysiologyModel
    params : dict parameter name -> (B,) or scalar
        Individual parameters (and covariates the model reads, e.g. for its initial state).
    events : DoseEvents or None
        ``(B, E)`` dose events in absolute time.
    obs_time : (B, T) array-like
        Non-decreasing observation times >= 0 per patient (pad by repeating the last time).
    key : jax PRNG key
        One key, or one per patient; segment ``j`` of patient ``i`` uses ``fold_in`` of it by ``j``.
    dt : float
        Sub-step in the model time unit.
    x0 : dict state -> (B,), optional
        State at the start time; default ``model.initial_state(params)``.
    t0 : (B,) array-like or float, optional
        Start time of each patient (default 0), e.g. where a filtered state holds (a twin's
        forecast from its last measurement). Observation times must not precede it; boluses at
        or before it are not given (the start state includes them), infusions act over their
        overlap with the simulated span.
    scheme : {"auto", "milstein", "euler", "exponential"}
        ``"auto"`` (default): Milstein where ``dt`` is stable for every patient, else the
        exponential scheme where that is (:func:`medsim.simulate.stability.choose_scheme`, from the
        drift's Jacobian at the patients' start): a predictive check on a population must not
        fail because one drawn patient absorbs faster than ``dt`` resolves.

    Returns
    -------
    dict observable -> (B, T) float32

    Raises
    ------
    ValueError
        If ``obs_time`` is not 2-d, not finite, negative or decreasing along a row, or before ``t0``.
    """
    obs = np.asarray(obs_time, np.float32)
    if obs.ndim != 2:
        raise ValueError(f"obs_time: expected shape (B, T), got {obs.shape}")
    if not np.isfinite(obs).all():
        raise ValueError("obs_time: every observation time must be finite (pad by repeating the last time)")
    if (obs < 0).any():
        i, j = np.argwhere(obs < 0)[0]
        raise ValueError(f"obs_time[{i}, {j}] = {obs[i, j]}: times start at 0")
    if (np.diff(obs, axis=1) < 0).any():
        i, j = np.argwhere(np.diff(obs, axis=1) < 0)[0]
        raise ValueError(f"obs_time[{i}, {j + 1}] is before obs_time[{i}, {j}]: rows must be sorted")
    batch, n_obs = obs.shape
    start = np.zeros(batch, np.float32) if t0 is None else np.broadcast_to(np.asarray(t0, np.float32), (batch,)).copy()
    if not np.isfinite(start).all() or (start < 0).any():
        raise ValueError("t0: start times must be finite and >= 0")
    if n_obs and (obs[:, 0] < start).any():
        i = int(np.argmax(obs[:, 0] < start))
        raise ValueError(f"obs_time[{i}, 0] = {obs[i, 0]} is before the start time t0[{i}] = {start[i]}")
    if t0 is not None and events is not None:
        events = _after(events, start)
    theta = {k: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (batch,)) for k, v in params.items()}
    x = model.initial_state(theta) if x0 is None else x0
    x = {s: jnp.broadcast_to(jnp.asarray(x[s], jnp.float32), (batch,)) for s in model.state_names}
    if scheme == "auto":
        from medsim.simulate import stability

        limit = _simulator(model, dt, "milstein").step_limit(x, theta)
        scheme = stability.choose_scheme(model, dt, limit)
    sim = _simulator(model, dt, scheme)
    per_patient = jnp.ndim(key) == 1 or (jnp.ndim(key) == 2 and not jnp.issubdtype(key.dtype, jax.dtypes.prng_key))
    t = start
    columns: list[dict[str, jax.Array]] = []
    for j in range(n_obs):
        if per_patient:
            keys = key if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)
            k_j = jax.vmap(lambda k, j=j: jax.random.fold_in(k, j))(keys)
        else:
            k_j = jax.random.fold_in(
                key if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key), j
            )
        res = sim.advance(x, theta, t, obs[:, j], key=k_j, events=events)
        x, t = res.state, obs[:, j]
        columns.append(res.stats.obs_end)
    return {o: jnp.stack([c[o] for c in columns], axis=1) for o in model.observable_names}


def _after(events: DoseEvents, start: np.ndarray) -> DoseEvents:
    """``events`` without the boluses at or before each patient's start time (moved to +inf, amount 0)."""
    time = np.asarray(events.time, np.float64)
    rate = np.asarray(events.rate, np.float64)
    given = (rate <= 0) & (time <= np.asarray(start, np.float64)[:, None])
    return DoseEvents.from_arrays(
        np.where(given, np.inf, time),
        np.asarray(events.cmt),
        np.where(given, 0.0, np.asarray(events.amount, np.float64)),
        rate,
    )
