"""Same key, same numbers; independence from chunk size and batch composition; no retracing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models import get
from medsim.population.prior import prior_population
from medsim.simulate import Bound, DoseEvents, Simulator

MODEL = get("glucose_insulin")
BOUNDS = (Bound("glucose_mg_dL", 110.0, "lower"), Bound("glucose_mg_dL", 150.0, "upper"))
N = 90
THETA = prior_population(MODEL, N, key=jax.random.key(4))
X0 = MODEL.initial_state(THETA)
RATES = {1: THETA["BASAL"] / 60.0}
# A meal at a per-patient time inside the interval, so the event path is exercised too.
EVENTS = DoseEvents.from_arrays(np.linspace(5.0, 50.0, N)[:, None], np.full((N, 1), 2), np.full((N, 1), 40.0))


def _flat(res) -> dict[str, np.ndarray]:
    out = {f"x.{k}": np.asarray(v) for k, v in res.state.items()}
    for name, v in vars(res.stats).items():
        if isinstance(v, dict):
            out.update({f"{name}.{k}": np.asarray(a) for k, a in v.items()})
        else:
            out[name] = np.asarray(v)
    return out


def _assert_same(a, b, rows=slice(None)):
    fa, fb = _flat(a), _flat(b)
    for k in fa:
        np.testing.assert_array_equal(fa[k][rows], fb[k], err_msg=k)


def _advance(sim, key, idx=slice(None), **kw):
    theta = {k: v[idx] for k, v in THETA.items()}
    x0 = {k: v[idx] for k, v in X0.items()}
    ev = jax.tree_util.tree_map(lambda a: a[idx], EVENTS)
    return sim.advance(x0, theta, 0.0, 60.0, key=key, events=ev, rates={1: RATES[1][idx]}, **kw)


def test_same_key_same_numbers_and_different_keys_differ():
    sim = Simulator(MODEL, dt=1.0, bounds=BOUNDS)
    a = _advance(sim, jax.random.key(1))
    b = _advance(sim, jax.random.key(1))
    _assert_same(a, b)
    c = _advance(sim, jax.random.key(2))
    assert not np.array_equal(np.asarray(a.state["glucose"]), np.asarray(c.state["glucose"]))


def test_results_do_not_depend_on_chunk_size():
    key = jax.random.key(7)
    ref = _advance(Simulator(MODEL, dt=1.0, bounds=BOUNDS, chunk_size=4096), key)
    # Three chunks of 32, the last one padded (compiled once, shared with the test below).
    _assert_same(ref, _advance(Simulator(MODEL, dt=1.0, bounds=BOUNDS, chunk_size=32), key))


def test_results_do_not_depend_on_cache_blocking():
    key = jax.random.key(7)
    ref = _advance(Simulator(MODEL, dt=1.0, bounds=BOUNDS), key)
    # The 96-patient chunk cut into three cache blocks of 32 run one after another (the CPU path
    # with a small block); equal to one unblocked loop, bit for bit.
    _assert_same(ref, _advance(Simulator(MODEL, dt=1.0, bounds=BOUNDS, block=32), key))


def test_per_patient_keys_make_paths_independent_of_the_batch():
    sim = Simulator(MODEL, dt=1.0, bounds=BOUNDS)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(N))
    full = _advance(sim, keys)
    pick = np.sort(np.random.default_rng(0).choice(N, 32, replace=False))
    sub = _advance(sim, keys[pick], idx=pick)
    _assert_same(full, sub, rows=pick)


def test_repeated_calls_do_not_retrace():
    sim = Simulator(MODEL, dt=1.0, bounds=BOUNDS)
    _advance(sim, jax.random.key(0))
    n = sim.trace_count
    # New keys, new interval lengths, new event times and amounts and a new dt reuse the compiled
    # kernel: the step count is a runtime loop bound, dt a runtime argument; only the event layout
    # (one meal column here) is static.
    for i, t1 in enumerate((30.0, 45.5, 61.0, 200.0)):
        ev = DoseEvents.from_arrays(np.full((N, 1), t1 / 3), np.full((N, 1), 2), np.full((N, 1), 10.0 * i))
        sim.advance(X0, THETA, 0.0, t1, key=jax.random.key(i), events=ev, rates=RATES)
    Simulator(MODEL, dt=0.5, bounds=BOUNDS).advance(X0, THETA, 0.0, 30.0, key=jax.random.key(9), events=EVENTS)
    assert sim.trace_count == n
    # Saved paths are bucketed by length: nearby lengths share one compiled kernel.
    sim.advance(X0, THETA, 0.0, 100.0, key=jax.random.key(0), save_every=10)
    m = sim.trace_count
    sim.advance(X0, THETA, 0.0, 98.0, key=jax.random.key(1), save_every=5)
    assert sim.trace_count == m
