"""The counter-based Brownian increments: bit-equality with JAX's Threefry, the normal transform,
per-patient streams."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32
from scipy import stats

from medsim.simulate import noise


def test_threefry_is_bit_equal_to_jax():
    keys = jax.random.key_data(jax.random.split(jax.random.key(11), 257))
    c1 = jnp.arange(257, dtype=jnp.uint32) * jnp.uint32(2654435761)
    c2 = jnp.arange(257, dtype=jnp.uint32) ^ jnp.uint32(0xDEADBEEF)
    o1, o2 = jax.jit(noise.threefry2x32)(keys[:, 0], keys[:, 1], c1, c2)
    ref = jax.vmap(lambda k, a, b: threefry_2x32((k[0], k[1]), jnp.stack([a, b])))(keys, c1, c2)
    np.testing.assert_array_equal(np.asarray(o1), np.asarray(ref[:, 0]))
    np.testing.assert_array_equal(np.asarray(o2), np.asarray(ref[:, 1]))


def test_normal_transform_on_the_whole_grid():
    # Every one of the 2**23 grid values once: the exact distribution the simulator samples from.
    z = np.asarray(jax.jit(noise.bits_to_normal)(jnp.arange(2**23, dtype=jnp.uint32) << 9), np.float64)
    assert np.isfinite(z).all()
    np.testing.assert_array_equal(z, -z[::-1])  # exactly symmetric => mean exactly 0
    tail = 2 * stats.norm.sf(np.abs(z).max())
    assert 1e-7 < tail < 2e-7  # truncation at |z| = 5.29, as documented
    # Moments lost to the truncated tails: 2 int_c^inf z^2 phi = 2 (c phi(c) + sf(c)) ~ 1.9e-6 and
    # 2 int_c^inf z^4 phi = 2 ((c^3 + 3c) phi(c) + 3 sf(c)) ~ 5e-5 at c = 5.29; the midpoint grid's own
    # error is O(2**-23), far smaller.
    c, phi, sf = 5.29, stats.norm.pdf(5.29), stats.norm.sf(5.29)
    assert abs(np.mean(z**2) - 1.0) < 2 * (c * phi + sf)
    assert abs(np.mean(z**4) - 3.0) < 2 * ((c**3 + 3 * c) * phi + 3 * sf)


def test_draws_pass_a_kolmogorov_smirnov_test():
    k1, k2 = noise.patient_key_words(jax.random.key(5), 4096)
    pairs = jax.jit(lambda a, b: jnp.stack(noise.normal_pair(a, b, jnp.uint32(7), 0)))(k1, k2)
    z = np.asarray(pairs).ravel()
    # 8192 draws; the test rejects a true N(0, 1) with probability 1e-3.
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # The even and odd draws of a pair are independent: correlation within 4 / sqrt(n).
    assert abs(np.corrcoef(np.asarray(pairs))[0, 1]) < 4 / np.sqrt(4096)


def test_patient_keys_single_and_per_patient():
    key = jax.random.key(3)
    k1, k2 = noise.patient_key_words(key, 5)
    per = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(5, dtype=jnp.uint32))
    p1, p2 = noise.patient_key_words(per, 5)
    np.testing.assert_array_equal(np.asarray(k1), np.asarray(p1))
    np.testing.assert_array_equal(np.asarray(k2), np.asarray(p2))
    raw = jax.random.key_data(per)
    r1, _ = noise.patient_key_words(raw, 5)
    np.testing.assert_array_equal(np.asarray(r1), np.asarray(p1))


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (jax.random.split(jax.random.key(0), 4), "expected one key or 5 keys"),
        (jax.random.key(0, impl="rbg"), "Threefry"),
        (jnp.zeros(3, jnp.float32), "expected a jax PRNG key"),
    ],
)
def test_bad_keys_are_named(key, match):
    with pytest.raises(ValueError, match=match):
        noise.patient_key_words(key, 5)


@pytest.mark.parametrize("x64", [False, True])
def test_unrolled_fold_in_and_normal_are_bit_equal_to_jax_random(x64):
    # The compiled option loop derives its measurement and process keys with these (the host loop
    # with jax.random): the same bits, alone and fused into a consumer, with or without x64.
    from medsim.population.streams import fold_in_data, normal_from_data

    rng = np.random.default_rng(5)
    data = jnp.asarray(rng.integers(0, 2**32, (4096, 2), dtype=np.uint64).astype(np.uint32))
    counter = jnp.asarray(rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32))
    with jax.enable_x64(x64):

        def fold(k, i):
            return jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(k), i))

        def normal(k):
            return jax.random.normal(jax.random.wrap_key_data(k), (3,), jnp.float32)

        keys = jax.jit(jax.vmap(fold))(data, counter)
        np.testing.assert_array_equal(np.asarray(jax.jit(fold_in_data)(data, counter)), np.asarray(keys))
        want = jax.jit(lambda k: jax.vmap(normal)(k) * 3.0 + 1.0)(keys)
        got = jax.jit(lambda k, i: normal_from_data(fold_in_data(k, i), 3) * 3.0 + 1.0)(data, counter)
        np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32))
