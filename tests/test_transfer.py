"""medsim.transfer.to_device: the arrays of ``jnp.asarray``, without lowering a program per shape."""

from __future__ import annotations

from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medsim.population.streams import Stream, patient_normal, patient_uniform
from medsim.transfer import to_device

_LOWERED = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # one event per program lowered


@contextmanager
def _count_lowerings():
    seen: list[str] = []

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == _LOWERED:
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


_RNG = np.random.default_rng(0)
_VALUES = [
    _RNG.normal(size=5),
    _RNG.normal(size=(3, 4)).astype(np.float32),
    np.arange(5),
    np.arange(5, dtype=np.uint32),
    np.array([True, False]),
    np.float64(1.3),
    np.int64(3),
]


@pytest.mark.parametrize("dtype", [None, np.float32, np.int32, bool])
@pytest.mark.parametrize("value", _VALUES, ids=lambda v: f"{np.asarray(v).dtype}{np.shape(v)}")
def test_same_array_as_jnp_asarray(value, dtype):
    want, got = jnp.asarray(value, dtype), to_device(value, dtype)
    assert (got.dtype, got.shape, got.weak_type) == (want.dtype, want.shape, want.weak_type)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # exact: the same conversion


def test_the_device_array_is_a_copy():
    host = np.zeros(1024, np.float32)
    dev = to_device(host)
    host[0] = 5.0  # a caller reusing its buffer must not change what it handed over
    assert float(dev[0]) == 0.0


def test_python_scalars_stay_weakly_typed_and_x64_is_honoured():
    for value in (3.0, 2, True):
        assert to_device(value).weak_type == jnp.asarray(value).weak_type
    with jax.enable_x64(True):
        assert to_device(np.zeros(3)).dtype == jnp.float64
    assert to_device(np.zeros(3)).dtype == jnp.float32


def test_new_shapes_lower_no_program():
    with _count_lowerings() as seen:
        jnp.asarray(np.zeros(1237, np.float32))  # the listener sees jnp.asarray's program
    assert len(seen) >= 1
    with _count_lowerings() as seen:
        for n in range(1201, 1211):
            to_device(np.zeros(n))
            to_device(np.zeros(n), np.float32)
    assert seen == []


def test_draws_for_nearby_batch_sizes_share_one_program():
    # Batches are padded to a power of two before drawing: 9..16 patients run one program, and a
    # patient's draws are those of the unpadded batch (patient 3 is patient 3 in every batch).
    whole = patient_normal(11, Stream.SCENARIO, np.arange(16), 2, width=3)
    patient_uniform(11, Stream.SCENARIO, np.arange(16), 2, width=3)  # compile outside the count
    with _count_lowerings() as seen:
        for n in range(9, 16):
            np.testing.assert_array_equal(patient_normal(11, Stream.SCENARIO, np.arange(n), 2, width=3), whole[:n])
            assert patient_uniform(11, Stream.SCENARIO, np.arange(n), 2, width=3).shape == (n, 3)
    assert seen == []
