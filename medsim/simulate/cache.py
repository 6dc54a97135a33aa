"""The one in-memory cache of compiled simulation functions, and :func:`clear_caches` to empty it.

Compiling a kernel takes seconds; running it takes milliseconds. Everything that compiles for a
model (the simulator's chunk kernels, the simulators shared by rollouts, schedules and policies
that simulate) stores what it built here, under a key that starts with what the entry is and
:func:`model_key` of the model. The key is the model's *value* (class and every field, a neural
model's weights by their digest), never ``id(model)``: two equal model objects
share one compiled kernel, and a model that was garbage collected cannot hand its kernel to a new
object that happens to reuse its address.

The cache is bounded (least recently used entries go first, :data:`MAX_ENTRIES`), so long
sessions that build many models do not keep every model and its weights alive.
:func:`clear_caches` empties it and JAX's own caches of traced functions (as
``equinox.clear_caches`` does), e.g. between experiments in one notebook or in tests. JAX's
persistent compilation cache on disk (:mod:`medsim.compile_cache`) is a separate, cross-process
layer below this one and is not touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

# Most entries kept: a rollout uses a handful of kernels (one per dose-event layout and saving
# mode) and one simulator per configuration; 64 leaves room for several models and policies.
MAX_ENTRIES = 64

_ENTRIES: OrderedDict[tuple, Any] = OrderedDict()
# Threads of one process (e.g. Dask workers run as threads) build each entry once.
_LOCK = threading.RLock()


def _canonical(value: Any) -> Any:
    """A JSON-able stand-in for a model field: arrays by shape, dtype and content digest."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if hasattr(value, "__array__") and not isinstance(value, str | bytes | int | float | bool):
        arr = np.ascontiguousarray(np.asarray(value))
        return {"shape": arr.shape, "dtype": str(arr.dtype), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
    if isinstance(value, str | int | float | bool | type(None)):
        return value
    if callable(value):  # by name: a repr would carry the object's address, different in every process
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    return repr(value)


def model_key(model: Any) -> tuple[str, str]:
    """The cache key of a model: its class and the value of every field (arrays by digest).

    Everything the compiled functions close over is a field of the model (a frozen dataclass),
    so equal keys mean equal programs; a neural model's weights enter by their SHA-256.
    """
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    value = _canonical(model) if dataclasses.is_dataclass(model) else model.describe()
    return kind, json.dumps(value, sort_keys=True, default=str)


def cached(key: tuple, build: Callable[[], T]) -> T:
    """The entry stored under ``key``, built by ``build()`` and stored the first time.

    Parameters
    ----------
    key : tuple
        Hashable; by convention ``(what, model_key(model), *static configuration)``.
    build : callable
        Makes the entry (typically a jitted function or a simulator).
    """
    with _LOCK:
        if key in _ENTRIES:
            _ENTRIES.move_to_end(key)
            return _ENTRIES[key]
        value = build()
        _ENTRIES[key] = value
        while len(_ENTRIES) > MAX_ENTRIES:
            _ENTRIES.popitem(last=False)
        return value


def entries(kind: str | None = None) -> list[Any]:
    """The cached entries (of one ``kind``, the key's first element), oldest first."""
    with _LOCK:
        return [v for k, v in _ENTRIES.items() if kind is None or k[0] == kind]


def clear_caches() -> None:
    """Drop every compiled function medsim holds, and JAX's in-memory caches.

    The next simulation compiles again (or loads from the persistent compilation cache on disk,
    when it is enabled). Simulators built before the call stay usable: they fetch or rebuild their
    kernels through this cache on their next call.
    """
    with _LOCK:
        _ENTRIES.clear()
    import jax

    jax.clear_caches()
