"""medsim's one in-memory compile cache: keyed by the model's value, bounded, and emptied by
clear_caches() (which also releases the models the kernels close over)."""

from __future__ import annotations

import gc
import weakref

import jax
import numpy as np

from medsim.models import get
from medsim.simulate import Simulator, cache, clear_caches


def _run(sim: Simulator) -> None:
    model = sim.model
    theta = {p.name: np.full(8, p.typical, np.float32) for p in model.parameters}
    x = {s: np.zeros(8, np.float32) for s in model.state_names}
    x["depot"] = np.full(8, 100.0, np.float32)
    sim.advance(x, theta, 0.0, 1.0, key=jax.random.key(0))


def test_equal_models_share_kernels_and_clear_caches_releases_them():
    clear_caches()
    first = Simulator(get("pk_oral_1cmt"), dt=0.1)
    _run(first)
    assert first.trace_count == 1
    # A second, equal model object reuses the compiled kernel (the key is the model's value).
    second = Simulator(get("pk_oral_1cmt"), dt=0.05)
    _run(second)
    assert second.trace_count == 1
    kernels = len(cache.entries("kernel"))
    assert kernels >= 1
    # Before: caches keyed by id(model) were never emptied and kept every model alive.
    alive = weakref.ref(second.model)
    del first, second
    clear_caches()
    gc.collect()
    assert cache.entries() == []
    assert alive() is None
    # A simulator built before clearing still works: it compiles again on its next call.
    again = Simulator(get("pk_oral_1cmt"), dt=0.1)
    clear_caches()
    _run(again)
    assert again.trace_count == 1


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(cache, "MAX_ENTRIES", 3)
    clear_caches()
    for i in range(5):
        assert cache.cached(("test", i), lambda i=i: i * i) == i * i
    # Least recently used entries went first.
    assert cache.entries("test") == [4, 9, 16]
    cache.cached(("test", 2), lambda: -1)  # a hit refreshes, does not rebuild
    assert cache.entries("test") == [9, 16, 4]
    clear_caches()


def test_models_that_differ_in_any_field_get_their_own_kernels():
    import dataclasses

    base = get("glucose_insulin")
    assert cache.model_key(base) == cache.model_key(get("glucose_insulin"))
    # dose_scale is not part of describe(); it changes the compiled drift all the same.
    scaled = dataclasses.replace(base, dose_scale={1: 2.0, 2: 1.0})
    assert cache.model_key(scaled) != cache.model_key(base)
    # Array-valued fields (a neural model's weights) enter by content.
    assert cache._canonical({"w": np.zeros(3)}) != cache._canonical({"w": np.ones(3)})
