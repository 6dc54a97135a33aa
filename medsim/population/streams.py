"""Per-patient, counter-based random streams.

Every random number a rollout uses for a virtual patient (measurement noise, process noise,
meal scenarios, a stochastic policy's coin flips) is a pure function of
``(seed, stream, patient, counter)``: the run's seed, a named stream, the patient's global index
in the population and a counter (the interaction number, the meal number). Nothing depends on
how the population is cut into chunks or which other patients share a batch, which gives

* chunk-size invariance: the same seed gives the same numbers for any ``chunk_size``;
* common random numbers: two policies evaluated on the same virtual patients see the same
  measurement-noise draw at their ``k``-th look, the same meals and the same coin flips.

The streams are JAX's counter-based Threefry keys (Salmon et al. 2011, "Parallel random numbers:
as easy as 1, 2, 3"), derived with ``fold_in`` — statistically vetted, unlike an ad-hoc hash.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from enum import IntEnum

import jax
import jax.numpy as jnp
import numpy as np

from medsim.transfer import to_device


class Stream(IntEnum):
    """Named, disjoint random streams (the second element of every key path)."""

    MEASUREMENT = 1
    PROCESS = 2
    POLICY = 3
    SCENARIO = 4
    SAMPLING = 5


def _counters(patient: np.ndarray, counter: np.ndarray | int) -> tuple[jax.Array, jax.Array]:
    patient = np.asarray(patient, dtype=np.int64)
    if patient.ndim != 1:
        raise ValueError(f"patient must be a 1-d array of patient indices, got shape {patient.shape}")
    if patient.size and (patient.min() < 0 or patient.max() >= 2**32):
        raise ValueError("patient indices must lie in [0, 2**32)")
    counter = np.broadcast_to(np.asarray(counter, dtype=np.int64), patient.shape)
    if counter.size and (counter.min() < 0 or counter.max() >= 2**32):
        raise ValueError("counters must lie in [0, 2**32)")
    return to_device(patient.astype(np.uint32)), to_device(counter.astype(np.uint32))


@jax.jit
def _keys(root: jax.Array, stream: jax.Array, patient: jax.Array, counter: jax.Array) -> jax.Array:
    base = jax.random.fold_in(root, stream)
    return jax.vmap(lambda p, c: jax.random.fold_in(jax.random.fold_in(base, p), c))(patient, counter)


def _root(seed: int | jax.Array) -> jax.Array:
    if isinstance(seed, jax.Array):
        if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
            return seed  # a typed JAX key (``jax.random.key``)
        if seed.shape == (2,):
            return jax.random.wrap_key_data(seed)  # a raw ``PRNGKey``
    return jax.random.key(int(seed) % 2**32)


def patient_keys(
    seed: int | jax.Array, stream: Stream | int, patient: np.ndarray, counter: np.ndarray | int
) -> jax.Array:
    """One JAX key per patient for ``(seed, stream, patient, counter)``.

    Parameters
    ----------
    seed : int or jax key
        The run's seed (or a typed JAX key standing for it).
    stream : Stream or int
        Which stream (keeps e.g. measurement noise independent of process noise).
    patient : (n,) int
        Global patient indices in the virtual population.
    counter : int or (n,) int
        Per-patient counter (interaction number, meal number...).

    Returns
    -------
    (n,) jax key array
    """
    p, c = _counters(patient, counter)
    return _keys(_root(seed), to_device(np.uint32(int(stream))), p, c)


def traced_patient_keys(seed: int, stream: Stream | int, patient: jax.Array, counter: jax.Array) -> jax.Array:
    """:func:`patient_keys` for traced ``(n,)`` uint32 ``patient`` and ``counter`` (inside ``jit``/``vmap``).

    No range checks (they need concrete values): the caller keeps both in ``[0, 2**32)``. The keys
    are those :func:`patient_keys` gives for the same values, so a compiled program draws the
    numbers the host draws.
    """
    return _keys(_root(seed), jnp.uint32(int(stream)), patient.astype(jnp.uint32), counter.astype(jnp.uint32))


def _padded(patient: np.ndarray, counter: np.ndarray | int) -> tuple[np.ndarray, np.ndarray | int, int]:
    """``patient`` and ``counter`` with the last patient repeated up to a power of two (at least 8).

    Draws that come back to the host are made for the padded batch and cut in numpy: each shape
    is a program traced, lowered and looked up again in every process, and a patient's draws do
    not depend on the batch, so a few batch sizes serve every population. The count of real rows
    comes third; arrays :func:`patient_keys` refuses are returned as given.
    """
    patient = np.asarray(patient)
    if patient.ndim != 1 or patient.size == 0:
        return patient, counter, int(patient.size)
    n = patient.size
    take = np.minimum(np.arange(1 << max(3, (n - 1).bit_length())), n - 1)
    return patient[take], np.broadcast_to(np.asarray(counter), patient.shape)[take], n


def fold_in_data(key_data: jax.Array, data: jax.Array) -> jax.Array:
    """``key_data(fold_in(wrap_key_data(key_data[i]), data[i]))`` for every row, bit for bit.

    ``key_data``: ``(n, 2)`` uint32 raw keys (or one ``(2,)`` key for all rows); ``data``: ``(n,)``
    uint32. ``fold_in`` hashes the counter ``(0, data)`` with Threefry-2x32 under the key; here the
    rounds are written out (:func:`medsim.simulate.noise.threefry2x32`), so inside a compiled loop XLA
    fuses them with their consumers (``jax.random``'s CPU lowering runs them as a rolled loop).
    """
    from medsim.simulate.noise import threefry2x32

    key_data = jnp.asarray(key_data, jnp.uint32)
    data = jnp.asarray(data, jnp.uint32)
    o1, o2 = threefry2x32(key_data[..., 0], key_data[..., 1], jnp.zeros_like(data), data)
    return jnp.stack([o1, o2], axis=-1)


# jax.random.normal's float32 uniform on (-1, 1): the mantissa bits over [1, 2), then scaled.
_LO = np.nextafter(np.float32(-1.0), np.float32(0.0), dtype=np.float32)
_HI = np.float32(1.0)


def normal_from_data(key_data: jax.Array, width: int) -> jax.Array:
    """``jax.random.normal(wrap_key_data(key_data[i]), (width,), float32)`` for every row, bit for bit.

    ``key_data``: ``(n, 2)`` uint32; returns ``(n, width)`` float32. The bits of draw ``j`` are the
    two words of the Threefry hash of the counter ``(0, j)`` xor-ed (``jax.random``'s partitionable
    Threefry bits); the rounds are written out as in :func:`fold_in_data`.
    """
    from medsim.simulate.noise import threefry2x32

    key_data = jnp.asarray(key_data, jnp.uint32)
    j = jnp.arange(int(width), dtype=jnp.uint32)[None, :]
    o1, o2 = threefry2x32(key_data[:, :1], key_data[:, 1:], jnp.zeros_like(j), j)
    bits = o1 ^ o2
    float_bits = (bits >> np.uint32(32 - 23)) | np.float32(1.0).view(np.uint32)
    floats = jax.lax.bitcast_convert_type(float_bits, jnp.float32) - np.float32(1.0)
    u = jax.lax.max(_LO, floats * (_HI - _LO) + _LO)
    return np.float32(np.sqrt(2)) * jax.lax.erf_inv(u)


_normal = jax.jit(jax.vmap(lambda k, width: jax.random.normal(k, (width,)), in_axes=(0, None)), static_argnums=1)
_uniform = jax.jit(
    jax.vmap(lambda k, width: jax.random.uniform(k, (width,), minval=1e-7, maxval=1.0), in_axes=(0, None)),
    static_argnums=1,
)


def patient_normal(
    seed: int, stream: Stream | int, patient: np.ndarray, counter: np.ndarray | int, width: int = 1
) -> np.ndarray:
    """Standard normal draws, shape ``(n, width)``, one independent row per patient."""
    patient, counter, n = _padded(patient, counter)
    keys = patient_keys(seed, stream, patient, counter)
    if keys.shape[0] == 0:
        return np.zeros((0, width))
    return np.asarray(_normal(keys, int(width)), dtype=np.float64)[:n]


def patient_uniform(
    seed: int, stream: Stream | int, patient: np.ndarray, counter: np.ndarray | int, width: int = 1
) -> np.ndarray:
    """Uniform(0, 1) draws (never exactly 0), shape ``(n, width)``, one row per patient."""
    patient, counter, n = _padded(patient, counter)
    keys = patient_keys(seed, stream, patient, counter)
    if keys.shape[0] == 0:
        return np.zeros((0, width))
    return np.asarray(_uniform(keys, int(width)), dtype=np.float64)[:n]


@jax.jit
def _base_keys(root: jax.Array, stream: jax.Array, patient: jax.Array) -> jax.Array:
    base = jax.random.fold_in(root, stream)
    return jax.random.key_data(jax.vmap(lambda p: jax.random.fold_in(base, p))(patient))


def patient_base_keys(seed: int, stream: Stream | int, patient: np.ndarray) -> jax.Array:
    """Raw key data ``(n, 2)`` uint32 of ``(seed, stream, patient)``, before the counter.

    ``fold_in(wrap_key_data(base[i]), counter)`` is :func:`patient_keys`'s key of patient ``i`` at
    that counter: a compiled loop keeps these and folds in the counter itself.
    """
    p, _ = _counters(patient, 0)
    root = jax.random.key(int(seed) % 2**32)
    return _base_keys(root, to_device(np.uint32(int(stream))), p)


def name_counter(name: str) -> int:
    """A stable 31-bit number for a name (CRC-32), to fold a named quantity into a key."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


_named = jax.jit(
    jax.vmap(lambda k, names: jax.vmap(lambda c: jax.random.normal(jax.random.fold_in(k, c)))(names), in_axes=(0, None))
)


def patient_named_normal(
    seed: int | jax.Array,
    stream: Stream | int,
    patient: np.ndarray,
    counter: np.ndarray | int,
    names: Sequence[str],
) -> np.ndarray:
    """Standard normal draws, shape ``(n, len(names))``: column ``j`` is a function of ``names[j]``.

    Each named quantity (a parameter's random effect) has its own key, folded in from its name,
    so adding or removing a name leaves the draws of the others unchanged, and the draws of a
    patient do not depend on which other patients are drawn.
    """
    patient, counter, n = _padded(patient, counter)
    keys = patient_keys(seed, stream, patient, counter)
    if keys.shape[0] == 0 or not names:
        return np.zeros((n, len(names)))
    codes = to_device(np.asarray([name_counter(name) for name in names], np.uint32))
    return np.asarray(_named(keys, codes), dtype=np.float64)[:n]
