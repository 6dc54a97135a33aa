"""How many patients one compiled call takes, and whether to cut them into cache blocks, per device.

The two kinds of device want opposite things from the same kernel:

* **CPU**: each core steps its patients one sub-step at a time through ~40 carried ``(B,)``
  vectors. While they fit a core's L2 cache (1-2 MB) every sub-step reads them from cache, so a
  chunk is cut into blocks of :data:`CACHE_BLOCK` patients run one after another
  (:func:`medsim.simulate.kernel.make_chunk_fn`), and chunks stay moderate
  (:data:`CPU_CHUNK`) so that host memory stays flat.
* **GPU / TPU**: there is no cache to fit; the device is fast only when every one of its
  thousands of lanes has a patient, and each sequential block is a separate pass with its own
  launch and synchronisation. No blocking (one block = the whole chunk, one fused loop), and the
  chunk is as large as the device's memory allows: :func:`sizing_for` divides a fraction of it by
  what one patient occupies.

Counter-based per-patient noise (:mod:`medsim.simulate.noise`) makes results independent of both
numbers, so the choice is about speed only. The same pure function decides for every platform, so
the accelerator branch is exercised on CPU by passing it a platform name and a memory size.
"""

from __future__ import annotations

from dataclasses import dataclass

# Patients per cache block on CPU: each block's ~40 carried (B,) float32 vectors stay within a
# core's L2 cache (see benchmarks/README.md for the measured gain over unblocked chunks).
CACHE_BLOCK = 8192

# Patients per compiled call on CPU (several cache blocks; host memory stays flat).
CPU_CHUNK = 65536

# Largest chunk on an accelerator (patients); beyond this the gain is nil and padding grows.
MAX_ACCELERATOR_CHUNK = 1 << 23

# Fraction of an accelerator's memory one chunk may plan to use (the rest: XLA's temporaries,
# the rollout's other arrays, other processes).
MEMORY_FRACTION = 0.25

# Memory assumed for an accelerator that does not report it (bytes).
DEFAULT_ACCELERATOR_MEMORY = 8 << 30


@dataclass(frozen=True)
class ChunkSizing:
    """Patients per compiled call (``chunk``) and per sequential cache block (``block``).

    ``block >= chunk`` means no blocking: the whole chunk runs as one fused loop.
    """

    chunk: int
    block: int

    def __post_init__(self) -> None:
        for name in ("chunk", "block"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1 (patients), got {value!r}")


def bytes_per_patient(n_states: int, n_params: int, n_bounds: int, n_events: int = 0, saved_steps: int = 0) -> int:
    """Device memory one patient occupies in a chunk, in bytes (a generous estimate).

    Float32 values: the state (carried, stepped and selected: three copies), parameters, two key
    words, clock and grid index, the draws of each state, ~8 statistics per bound (carried and
    updated: two copies), three values per dose-event column, and saved paths of ``saved_steps``
    sub-steps per state; everything doubled for inputs and outputs living at once.
    """
    floats = 3 * n_states + n_params + 4 + n_states + 16 * n_bounds + 3 * n_events + saved_steps * n_states
    return 2 * 4 * floats


def sizing_for(platform: str, memory: int | None, per_patient: int) -> ChunkSizing:
    """Chunk and block sizes for a device.

    Parameters
    ----------
    platform : str
        JAX platform name: ``"cpu"``, ``"gpu"``/``"cuda"``/``"rocm"``, ``"tpu"``, ...
    memory : int or None
        The device's memory in bytes (``None``: unknown, :data:`DEFAULT_ACCELERATOR_MEMORY` assumed
        for accelerators; unused on CPU).
    per_patient : int
        Bytes one patient occupies (:func:`bytes_per_patient`).

    Returns
    -------
    ChunkSizing
        CPU: :data:`CPU_CHUNK` patients in blocks of :data:`CACHE_BLOCK`. Accelerators: the largest
        power of two of patients whose memory fits :data:`MEMORY_FRACTION` of the device (at least
        :data:`CACHE_BLOCK`, at most :data:`MAX_ACCELERATOR_CHUNK`), unblocked (the block is
        :data:`MAX_ACCELERATOR_CHUNK`, so every chunk runs as one loop and the compiled kernel does
        not depend on the chunk).
    """
    if per_patient < 1:
        raise ValueError(f"per_patient: expected bytes >= 1, got {per_patient!r}")
    if platform == "cpu":
        return ChunkSizing(chunk=CPU_CHUNK, block=CACHE_BLOCK)
    available = DEFAULT_ACCELERATOR_MEMORY if memory is None else int(memory)
    fits = max(int(available * MEMORY_FRACTION) // per_patient, 1)
    chunk = min(max(1 << (fits.bit_length() - 1), CACHE_BLOCK), MAX_ACCELERATOR_CHUNK)
    return ChunkSizing(chunk=chunk, block=MAX_ACCELERATOR_CHUNK)


def device_memory(device) -> int | None:
    """Bytes of memory a JAX device reports (``bytes_limit`` of ``memory_stats()``), or ``None``."""
    try:
        stats = device.memory_stats()
    except Exception:  # CPU devices and some backends do not implement it
        return None
    if not stats:
        return None
    value = stats.get("bytes_limit") or stats.get("bytes_reservable_limit")
    return int(value) if value else None


def device_sizing(device, per_patient: int) -> ChunkSizing:
    """:func:`sizing_for` of a JAX device (its platform and reported memory)."""
    platform = str(device.platform)
    return sizing_for(platform, None if platform == "cpu" else device_memory(device), per_patient)
