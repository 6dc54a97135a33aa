"""Inputs of one ``advance`` call of the neural simulator, prepared in numpy.

The simulator's contract is the mechanistic one (:mod:`medsim.simulate.types`): per-patient
intervals ``[t0, t1)``, padded :class:`DoseEvents` in absolute time of which only those acting
in the interval matter, and constant extra rates per compartment. This module turns them into
the arrays the torch stepper consumes: per-patient sub-step counts and lengths, boluses,
infusions (including the constant rates) and the standard normals of the Brownian increments.

Sub-steps: patient ``b`` takes ``n_b = ceil((t1 - t0) / dt)`` equal sub-steps of length
``(t1 - t0) / n_b <= dt``; the loop runs ``max_b n_b`` times and later sub-steps are exact
no-ops for patients that are done. Doses need no step splitting because the dose filters are
integrated exactly (:func:`medsim.models.neural.dose_filter.propagate`); the drift sees a dose
from the first sub-step boundary after it.

Noise: the increments are the same counter-based standard normals as the JAX simulator's
(:mod:`medsim.simulate.noise`): latent channel ``i`` of sub-step ``k`` of patient ``b`` is a
pure function of the patient's key, ``k`` and ``i``, so a patient's path does not depend on
which other patients share the call or on the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models.neural.config import NeuralConfig
from medsim.simulate.noise import normal_pair, patient_key_words
from medsim.simulate.types import DoseEvents

_Z_MAX = 5.294704


@dataclass(frozen=True)
class StepPlan:
    """Everything an ``advance`` call needs besides states and parameters (numpy, batch ``B``).

    Attributes
    ----------
    t0, t1 : (B,) float64
    n_steps : (B,) int
        Sub-steps of each patient; ``max(n_steps)`` loop iterations in all.
    step : (B,) float64
        Sub-step length (0 for an empty interval).
    bolus_time, bolus_amount : (B, E) float64; bolus_index : (B, E) int
        Boluses acting in ``[t0, t1)`` (padding: amount 0, time +inf).
    infusion_start, infusion_end, infusion_rate : (B, I) float64; infusion_index : (B, I) int
        Infusions overlapping ``[t0, t1)`` and the constant ``rates`` (padding: rate 0).
    steady_rate : (B, D) float64
        Total rate per dose compartment of the infusions that run through the whole interval.
    needs_general : bool
        Whether some bolus falls inside ``(t0, t1)`` or some infusion starts or stops inside it;
        otherwise the filters follow the closed form for a constant rate.
    """

    t0: np.ndarray
    t1: np.ndarray
    n_steps: np.ndarray
    step: np.ndarray
    bolus_time: np.ndarray
    bolus_index: np.ndarray
    bolus_amount: np.ndarray
    infusion_start: np.ndarray
    infusion_end: np.ndarray
    infusion_index: np.ndarray
    infusion_rate: np.ndarray
    steady_rate: np.ndarray
    needs_general: bool

    @property
    def max_steps(self) -> int:
        return int(self.n_steps.max()) if self.n_steps.size else 0

    def take(self, rows: slice) -> StepPlan:
        """The plan of patients ``rows`` (a chunk)."""
        fields = {name: getattr(self, name)[rows] for name in self.__dataclass_fields__ if name != "needs_general"}
        return StepPlan(**fields, needs_general=self.needs_general)


def _compress(mask: np.ndarray, *arrays: np.ndarray, fills: tuple) -> list[np.ndarray]:
    """Left-pack the entries where ``mask`` holds, per row, padding with ``fills``."""
    width = max(1, int(mask.sum(axis=1).max()) if mask.size else 1)
    order = np.argsort(~mask, axis=1, kind="stable")[:, :width]
    keep = np.take_along_axis(mask, order, axis=1)
    out = []
    for array, fill in zip(arrays, fills, strict=True):
        picked = np.take_along_axis(array, order, axis=1) if array.shape[1] else np.zeros(order.shape, array.dtype)
        out.append(np.where(keep, picked, fill))
    return out


def plan_steps(
    config: NeuralConfig,
    batch: int,
    t0: np.ndarray | float,
    t1: np.ndarray | float,
    *,
    dt: float,
    events: DoseEvents | None = None,
    rates: Mapping[int, np.ndarray] | None = None,
) -> StepPlan:
    """Sub-steps, doses and rates of one call.

    Raises
    ------
    ValueError
        If ``t1 < t0`` for some patient, times are not finite, or an event or rate names a
        compartment the model is not driven by (naming the CMT and the valid ones).
    """
    t0 = np.broadcast_to(np.asarray(t0, np.float64), (batch,)).copy()
    t1 = np.broadcast_to(np.asarray(t1, np.float64), (batch,)).copy()
    if not (np.all(np.isfinite(t0)) and np.all(np.isfinite(t1))):
        raise ValueError("advance: t0 and t1 must be finite")
    if np.any(t1 < t0):
        i = int(np.flatnonzero(t1 < t0)[0])
        raise ValueError(f"advance: t1 must be >= t0; patient {i} has t0={t0[i]}, t1={t1[i]}")
    length = t1 - t0
    # A relative tolerance keeps an interval of exactly k * dt at k sub-steps despite rounding.
    n_steps = np.where(length > 0, np.ceil(length / dt - 1e-6), 0).astype(np.int64)
    n_steps = np.where(length > 0, np.maximum(n_steps, 1), 0)
    step = np.where(n_steps > 0, length / np.maximum(n_steps, 1), 0.0)
    valid_cmts = [d.cmt for d in config.doses]

    def index_of(cmt: np.ndarray, what: str) -> np.ndarray:
        bad = ~np.isin(cmt, valid_cmts)
        if bad.any():
            raise ValueError(
                f"advance: {what} into CMT {int(cmt[bad][0])}, but neural model {config.name!r} is driven by "
                f"CMTs {valid_cmts}"
            )
        lookup = {c: i for i, c in enumerate(valid_cmts)}
        return np.vectorize(lookup.__getitem__, otypes=[np.int64])(cmt) if cmt.size else cmt.astype(np.int64)

    empty = np.zeros((batch, 0))
    b_time, b_amount, b_index = empty, empty, empty.astype(np.int64)
    i_start, i_end, i_rate, i_index = empty, empty, empty, empty.astype(np.int64)
    if events is not None:
        time = np.asarray(events.time, np.float64)
        amount = np.asarray(events.amount, np.float64)
        rate = np.asarray(events.rate, np.float64)
        cmt = np.asarray(events.cmt, np.int64)
        if time.shape[0] != batch:
            raise ValueError(f"advance: events are for {time.shape[0]} patients, the state for {batch}")
        real = np.isfinite(time) & (amount > 0)
        is_bolus = real & (rate <= 0) & (time >= t0[:, None]) & (time < t1[:, None])
        end = np.where(rate > 0, time + amount / np.where(rate > 0, rate, 1.0), time)
        is_inf = real & (rate > 0) & (time < t1[:, None]) & (end > t0[:, None])
        used = is_bolus | is_inf
        index = np.zeros_like(cmt)
        index[used] = index_of(cmt[used], "a dose")
        b_time, b_amount, b_index = _compress(is_bolus, time, amount, index, fills=(np.inf, 0.0, 0))
        i_start, i_end, i_rate, i_index = _compress(is_inf, time, end, rate, index, fills=(0.0, 0.0, 0.0, 0))
    if rates:
        cmts = np.array(sorted(rates), dtype=np.int64)
        index = index_of(cmts, "a rate")
        values = np.stack([np.broadcast_to(np.asarray(rates[c], np.float64), (batch,)) for c in cmts], axis=1)
        if np.any(~np.isfinite(values) | (values < 0)):
            raise ValueError("advance: rates must be finite and >= 0")
        i_start = np.concatenate([i_start, np.repeat(t0[:, None], len(cmts), 1)], axis=1)
        i_end = np.concatenate([i_end, np.repeat(t1[:, None], len(cmts), 1)], axis=1)
        i_rate = np.concatenate([i_rate, values], axis=1)
        i_index = np.concatenate([i_index, np.repeat(index[None], batch, 0)], axis=1)
    covering = (i_start <= t0[:, None]) & (i_end >= t1[:, None]) & (i_rate > 0)
    steady = np.zeros((batch, len(valid_cmts)))
    for c in range(len(valid_cmts)):
        steady[:, c] = np.sum(np.where(covering & (i_index == c), i_rate, 0.0), axis=1)
    inside = (b_amount > 0) & (b_time > t0[:, None])
    partial = (i_rate > 0) & ~covering
    return StepPlan(
        t0,
        t1,
        n_steps,
        step,
        b_time,
        b_index,
        b_amount,
        i_start,
        i_end,
        i_index,
        i_rate,
        steady_rate=steady,
        needs_general=bool(inside.any() or partial.any()),
    )


@partial(jax.jit, static_argnums=(2, 3))
def _normals(k1: jax.Array, k2: jax.Array, n_steps: int, channels: int) -> jax.Array:
    pairs = jnp.arange((n_steps + 1) // 2, dtype=jnp.uint32)
    chans = jnp.arange(channels, dtype=jnp.uint32)

    def one(pair, channel):
        even, odd = normal_pair(k1, k2, pair, channel)
        return jnp.stack([even, odd])  # (2, B)

    z = jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))(pairs, chans)  # (P, C, 2, B)
    z = jnp.transpose(z, (0, 2, 3, 1)).reshape(-1, k1.shape[0], channels)
    return z[:n_steps]


def brownian_normals(key: jax.Array, batch: int, n_steps: int, channels: int) -> np.ndarray:
    """Standard normals ``(n_steps, B, channels)`` of the counter-based per-patient streams.

    ``key`` is one JAX key (patient ``b`` gets ``fold_in(key, b)``) or one key per patient.
    The step count is rounded up to a power of two before compiling so repeated calls with
    similar intervals reuse one compiled function.
    """
    k1, k2 = patient_key_words(key, batch)
    if n_steps == 0:
        return np.zeros((0, batch, channels), np.float32)
    bucket = 1 << max(0, math.ceil(math.log2(n_steps)))
    z = np.asarray(_normals(k1, k2, bucket, channels))[:n_steps]
    # Guard: the generator's documented range is |z| <= 5.2947 (the centre of its outermost grid
    # cell); a non-finite increment would poison every statistic of the patient downstream.
    return np.clip(z, -_Z_MAX, _Z_MAX)
