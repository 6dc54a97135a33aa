"""simulate_schedule picks a stable scheme for every patient it is given (predictive checks, VPCs).

Reproduces a fresh-clone failure of ``medsim demo``: the theophylline VPC drew a new patient with
ka = 93 /h, for whom an explicit step of 0.0125 h overshoots the depot below zero (ka dt = 1.17 > 1).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import medsim.models as registry
from medsim.simulate import DoseEvents, RunawayStateError, simulate_schedule

MODEL = registry.get("pk_oral_1cmt")
TIMES = np.tile(np.array([0.3, 0.52, 1.0, 2.0, 4.0], np.float32), (3, 1))


def _inputs():
    theta = {p.name: np.full(3, p.typical, np.float32) for p in MODEL.parameters}
    theta["ka"] = np.array([1.5, 93.3, 2.0], np.float32)
    events = DoseEvents.from_arrays(np.zeros((3, 1)), np.ones((3, 1)), np.full((3, 1), 320.0))
    return theta, events


def test_a_fast_absorber_is_simulated_with_the_exponential_scheme():
    theta, events = _inputs()
    with pytest.raises(RunawayStateError, match="ka=93"):
        simulate_schedule(MODEL, theta, events, TIMES, key=jax.random.key(0), dt=0.0125, scheme="milstein")
    conc = np.asarray(simulate_schedule(MODEL, theta, events, TIMES, key=jax.random.key(0), dt=0.0125)["conc"])
    assert np.isfinite(conc).all() and (conc > 0).all()
    # the fast absorber peaks at once: its first sample is the highest (no overshoot artefacts)
    assert conc[1].argmax() == 0


def test_auto_keeps_milstein_where_it_is_stable():
    theta, events = _inputs()
    theta["ka"] = np.array([1.5, 1.7, 2.0], np.float32)
    key = jax.random.key(3)
    auto = simulate_schedule(MODEL, theta, events, TIMES, key=key, dt=0.0125)["conc"]
    milstein = simulate_schedule(MODEL, theta, events, TIMES, key=key, dt=0.0125, scheme="milstein")["conc"]
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(milstein))
