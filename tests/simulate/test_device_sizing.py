"""Chunk and cache-block sizes per device, and the accelerator path (memory-sized, unblocked
chunks) run on CPU through the same sizing function: results do not depend on either number."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from medsim.models import get
from medsim.simulate import Bound, Simulator, device

MODEL = get("glucose_insulin")
BOUNDS = (Bound("glucose_mg_dL", 70.0, "lower"),)
PER_PATIENT = device.bytes_per_patient(n_states=len(MODEL.state_names), n_params=len(MODEL.parameters), n_bounds=1)


class _FakeDevice:
    """What device_sizing reads from a JAX device: its platform and memory_stats()."""

    def __init__(self, platform: str, stats: dict | None):
        self.platform, self._stats = platform, stats

    def memory_stats(self):
        return self._stats


def test_cpu_blocks_for_the_cache():
    assert device.sizing_for("cpu", None, PER_PATIENT) == device.ChunkSizing(device.CPU_CHUNK, device.CACHE_BLOCK)
    assert device.device_sizing(jax.devices("cpu")[0], PER_PATIENT).block == device.CACHE_BLOCK


def test_accelerators_take_chunks_sized_from_memory_unblocked():
    gpu = device.device_sizing(_FakeDevice("gpu", {"bytes_limit": 1 << 30}), PER_PATIENT)
    # A power of two of patients whose estimated bytes fit the memory fraction, in one loop.
    assert gpu.chunk & (gpu.chunk - 1) == 0
    assert gpu.chunk * PER_PATIENT <= device.MEMORY_FRACTION * (1 << 30) < 2 * gpu.chunk * PER_PATIENT
    assert gpu.block >= gpu.chunk
    h200 = device.device_sizing(_FakeDevice("gpu", {"bytes_limit": 139 << 30}), PER_PATIENT)
    assert h200.chunk == device.MAX_ACCELERATOR_CHUNK  # millions of patients per call
    assert h200.block >= h200.chunk
    small = device.sizing_for("gpu", 1 << 20, PER_PATIENT)
    assert small.chunk == device.CACHE_BLOCK  # never below one CPU block
    unknown = device.device_sizing(_FakeDevice("tpu", None), PER_PATIENT)
    assert unknown == device.sizing_for("tpu", device.DEFAULT_ACCELERATOR_MEMORY, PER_PATIENT)
    # Saved paths take memory per sub-step: fewer patients per chunk.
    saving = device.bytes_per_patient(len(MODEL.state_names), len(MODEL.parameters), 1, saved_steps=1000)
    assert device.sizing_for("gpu", 139 << 30, saving).chunk < h200.chunk


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_sizes_must_be_positive_ints(bad):
    with pytest.raises(ValueError, match="expected an int >= 1"):
        device.ChunkSizing(chunk=bad, block=8)
    with pytest.raises(ValueError, match="block: expected None or an int >= 1"):
        Simulator(MODEL, dt=1.0, block=bad)


def test_accelerator_sizing_gives_the_cpu_numbers():
    # A small model keeps the two compilations (blocked and unblocked kernels) short.
    model = get("pk_oral_1cmt")
    n = 90
    theta = {p.name: np.full(n, p.typical, np.float32) for p in model.parameters}
    theta["ka"] = np.linspace(0.5, 3.0, n, dtype=np.float32)
    x0 = {s: np.zeros(n, np.float32) for s in model.state_names}
    x0["depot"] = np.full(n, 320.0, np.float32)
    bounds = (Bound("conc", 5.0, "upper"),)
    cpu = Simulator(model, dt=0.05, bounds=bounds, block=32)  # three cache blocks of 32 in one chunk
    assert cpu.sizing(tuple(jax.local_devices())) == device.ChunkSizing(device.CPU_CHUNK, 32)
    # The accelerator layout: no blocking, several chunks (memory-sized on a GPU, 32 here).
    gpu = Simulator(model, dt=0.05, bounds=bounds, chunk_size=32, block=device.sizing_for("gpu", None, 1).block)
    a = cpu.advance(x0, theta, 0.0, 3.0, key=jax.random.key(2))
    b = gpu.advance(x0, theta, 0.0, 3.0, key=jax.random.key(2))
    # Counter-based per-patient noise and elementwise kernels: identical bits, not just close.
    for s in model.state_names:
        np.testing.assert_array_equal(np.asarray(a.state[s]), np.asarray(b.state[s]), err_msg=s)
    np.testing.assert_array_equal(np.asarray(a.stats.p_cross), np.asarray(b.stats.p_cross))
    np.testing.assert_array_equal(np.asarray(a.stats.depth), np.asarray(b.stats.depth))
    assert np.unique(np.asarray(a.state["central"])).size == n  # every patient on its own path
