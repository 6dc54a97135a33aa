"""The compiled option loop's random streams: the measurement draws and stream keys of an interaction.

The host loop draws the measurement noise of patient ``i`` at interaction ``k`` as
``jax.random.normal(fold_in(key_i, k))`` of its ``(seed, MEASUREMENT, i)`` key
(:func:`medsim.population.streams.patient_normal`), and a
:class:`~medsim.policies.noise_index.NoiseTable` swaps ``i`` for a stream index per interaction. The
compiled loop (:mod:`medsim.policies.device_loop`) derives the same numbers on the device, with the
Threefry rounds written out (:func:`medsim.population.streams.fold_in_data`,
:func:`~medsim.population.streams.normal_from_data`). Split from the loop, which owns the carry.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from medsim.population.streams import Stream, fold_in_data, normal_from_data

F64 = jnp.float64


def stream_ids(inp, k: jax.Array) -> jax.Array:
    """Each patient's stream index at interaction ``k`` (the noise table's row entry); ``inp`` is the
    loop's per-chunk inputs (``noise_table``, ``stream_roots``, ``meas_key``, ``patient``)."""
    table = inp.noise_table
    return table[jnp.arange(table.shape[0]), jnp.minimum(k, table.shape[1] - 1)]


def measurement_draws(inp, k: jax.Array, width: int) -> jax.Array:
    """The ``(n, width)`` standard normals of interaction ``k``, as the host loop draws them:
    ``jax.random.normal(fold_in(key, k), (width,), float32)`` of the ``(seed, MEASUREMENT,
    stream)`` key, with the hashes unrolled.

    The loop computes the next interaction's draws at the end of each iteration and carries
    them: a materialised buffer, where XLA would otherwise re-derive the hashes in every pass that
    reads a measurement.
    """
    key = inp.meas_key
    if inp.noise_table is not None:
        key = fold_in_data(inp.stream_roots[0], stream_ids(inp, k))
    return normal_from_data(fold_in_data(key, k.astype(jnp.uint32)), width).astype(F64)


@partial(jax.jit, static_argnums=1)
def first_draws(inp, width: int) -> jax.Array:
    """:func:`measurement_draws` of interaction 0 (the loop's first carry), compiled alone."""
    return measurement_draws(inp, jnp.zeros(inp.patient.shape, jnp.int64), width)


def stream_roots(seed: int) -> jax.Array:
    """Key data ``(2, 2)`` of ``(seed, MEASUREMENT)`` and ``(seed, PROCESS)``: folding in a stream
    index, then a counter, gives :func:`medsim.population.streams.patient_keys`'s key."""
    root = jax.random.key(int(seed) % 2**32)
    return jnp.stack(
        [jax.random.key_data(jax.random.fold_in(root, int(s))) for s in (Stream.MEASUREMENT, Stream.PROCESS)]
    )
