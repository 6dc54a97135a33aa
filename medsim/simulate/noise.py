"""Counter-based Brownian increments: one independent stream per patient.

Every standard-normal draw the simulator uses is a pure function of
``(patient key, step pair, noise channel)``::

    (o1, o2) = threefry2x32(key=(k1, k2), counter=(pair, channel))
    z[2 * pair]     = N(o1)       z[2 * pair + 1] = N(o2)

where ``(k1, k2)`` is the patient's 64-bit Threefry key, ``pair`` counts pairs of sub-steps from
the start of the ``advance`` call and ``channel`` is the index of the noisy state. A patient's
numbers therefore depend neither on the chunk size nor on the other patients in the batch.

The hash is Threefry-2x32 with 20 rounds (Salmon, Moraes, Dror & Shaw, "Parallel random numbers:
as easy as 1, 2, 3", SC 2011) — the generator behind ``jax.random``'s default keys, and bit-equal
to :func:`jax.extend.random.threefry_2x32` (tested). It is written out here round by round
because the CPU lowering of ``jax.random`` emits the rounds as a rolled loop, which keeps XLA
from fusing the hash into the simulation step; unrolled, the hash, the normal transform and the
SDE update compile into one loop over patients. Both 32-bit outputs of a hash are used (two
sub-steps), where ``jax.random.normal`` keeps one.

The normal transform is the inverse CDF, ``z = sqrt(2) erfinv(2u - 1)`` with ``u`` on the
midpoints of a 2**23-point grid of (0, 1): the draws are exactly symmetric and bounded by
|z| <= 5.3 (a truncation of probability 1.2e-7, as in ``jax.random.normal``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_U32 = np.uint32
# Threefry-2x32 rotation constants (Salmon et al. 2011, Table 4; Random123 ``threefry.h``).
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = _U32(0x1BD11BDA)
_SQRT2 = np.float32(np.sqrt(2.0))


def _rotl(x: jax.Array, d: int) -> jax.Array:
    return (x << _U32(d)) | (x >> _U32(32 - d))


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32-20 block hash, elementwise over broadcast uint32 arrays.

    Parameters
    ----------
    k1, k2 : uint32 arrays
        The two key words (e.g. ``jax.random.key_data(key)[..., 0]`` and ``[..., 1]``).
    x1, x2 : uint32 arrays
        The two counter words.

    Returns
    -------
    (o1, o2) : uint32 arrays of the broadcast shape
        Equal to ``jax.extend.random.threefry_2x32((k1, k2), concat([x1, x2]))`` split in halves.
    """
    ks = (k1, k2, k1 ^ k2 ^ _KEY_PARITY)
    x1 = x1 + ks[0]
    x2 = x2 + ks[1]
    for i in range(5):  # 5 x 4 = 20 rounds, with a key injection after every 4
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = _rotl(x2, r)
            x2 = x1 ^ x2
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + _U32(i + 1)
    return x1, x2


def bits_to_normal(bits: jax.Array) -> jax.Array:
    """Standard normal float32 from 32 random bits (inverse CDF on a symmetric 2**23 grid).

    The top 23 bits ``m`` select ``2u - 1 = (2m + 1 - 2**23) / 2**23``; ``z = sqrt(2) erfinv(2u - 1)``.
    The odd integer is formed in int32 and scaled by a power of two, so the value is exact and no
    compiler reassociation can round it to +-1 (where ``erfinv`` is infinite).
    """
    odd = (((bits >> _U32(9)) << _U32(1)) | _U32(1)).astype(jnp.int32) - np.int32(2**23)
    centred = odd.astype(jnp.float32) * np.float32(2.0**-23)
    return _SQRT2 * jax.lax.erf_inv(centred)


def normal_pair(k1: jax.Array, k2: jax.Array, pair: jax.Array, channel: int) -> tuple[jax.Array, jax.Array]:
    """The two standard normals of sub-steps ``2 * pair`` and ``2 * pair + 1`` for one noise channel.

    Parameters
    ----------
    k1, k2 : (B,) uint32
        Per-patient key words.
    pair : scalar uint32
        Index of the pair of sub-steps since the start of the call.
    channel : int
        Index of the noisy state (in the order of the model's ``noisy_states``).

    Returns
    -------
    (z_even, z_odd) : (B,) float32
    """
    o1, o2 = threefry2x32(k1, k2, jnp.broadcast_to(pair, k1.shape), jnp.full(k1.shape, channel, jnp.uint32))
    return bits_to_normal(o1), bits_to_normal(o2)


def patient_key_words(key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
    """Per-patient Threefry key words from one key or one key per patient.

    Parameters
    ----------
    key : jax PRNG key
        Either a single key (typed, ``jax.random.key``; or raw ``uint32[2]``), from which patient
        ``i`` (its position in the batch) gets ``fold_in(key, i)``; or one key per patient, shape
        ``(batch,)`` typed or ``(batch, 2)`` raw, used as given (the way to keep a patient's noise
        independent of which other patients share the batch).
    batch : int
        Number of patients ``B``.

    Returns
    -------
    (k1, k2) : (B,) uint32

    Raises
    ------
    ValueError
        If ``key`` is not a Threefry key, or its shape matches neither one key nor ``batch`` keys.
    """
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(key))
        if "threefry" not in impl:
            raise ValueError(f"key: the simulator needs Threefry keys (jax.random.key(seed)), got impl {impl!r}")
        data = jax.random.key_data(key)
        per_patient = key.ndim == 1
        if key.ndim > 1 or (per_patient and key.shape[0] != batch):
            raise ValueError(f"key: expected one key or {batch} keys (one per patient), got shape {key.shape}")
    elif key.dtype == jnp.uint32 and key.shape in ((2,), (batch, 2)):
        data = key
        per_patient = key.ndim == 2
    else:
        raise ValueError(
            f"key: expected a jax PRNG key (jax.random.key(seed)) or {batch} of them, got {key.dtype} {key.shape}"
        )
    if not per_patient:
        data = _fold_in_index(data, batch)
    return data[:, 0], data[:, 1]


@jax.jit(static_argnums=1)
def _fold_in_index(data: jax.Array, batch: int) -> jax.Array:
    key = jax.random.wrap_key_data(data)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch, dtype=jnp.uint32))
    return jax.random.key_data(keys)
