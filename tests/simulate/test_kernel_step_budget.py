"""Sub-steps past a patient's interval end change no bit of the kernel's result.

The kernel skips the last pair's odd sub-step once every patient has reached ``t1`` (an interval of
five 1-minute sub-steps, planned with one sub-step of margin, ends on such a step) and draws no
noise for a pair that will not run. Both rest on those sub-steps being exact no-ops, which this
test checks bit for bit: the same intervals with the planned number of pairs and with more.
"""

import jax
import jax.numpy as jnp
import numpy as np

import medsim.models as registry
from medsim.population import PosteriorDraws, sample_population
from medsim.population.streams import Stream, patient_keys
from medsim.simulate import Bound, Simulator
from medsim.simulate.kernel import ChunkInputs


def test_pairs_beyond_the_interval_change_no_bit():
    model = registry.get("glucose_insulin")
    n = 16
    pop = sample_population(PosteriorDraws.from_prior(model, 4, seed=0), n, seed=1)
    sim = Simulator(
        model, dt=1.0, bounds=(Bound("glucose_mg_dL", 70.0, "lower"), Bound("glucose_mg_dL", 180.0, "upper"))
    )
    theta = {k: jnp.asarray(v, jnp.float32) for k, v in pop.simulation_parameters().items()}
    x = {k: jnp.asarray(v, jnp.float32) for k, v in pop.initial_state().items()}
    words = jax.random.key_data(patient_keys(1, Stream.PROCESS, np.arange(n), 0))
    # Spans of 5 sub-steps (the odd one skipped), 6 (the odd one run), a fraction and none.
    t0 = jnp.asarray(np.tile([0.0, 10.0, 100.0, 7.0], 4), jnp.float32)
    t1 = t0 + jnp.asarray(np.tile([5.0, 6.0, 4.3, 0.0], 4), jnp.float32)
    zeros = jnp.zeros(n, jnp.float32)
    targets = dict.fromkeys(model.dose_targets.values())
    rate = {s: zeros for s in targets}
    rate[model.dose_targets[1]] = theta["BASAL"] / 60.0
    empty = jnp.zeros((0, n), jnp.float32)
    chunk = ChunkInputs(
        x, theta, t0, t1, words[:, 0], words[:, 1], {s: zeros for s in targets}, rate, empty, empty, empty
    )
    fn = sim.interval_kernel()
    # Three pairs suffice (the last one's odd sub-step needed by the 6-step spans only); plan_interval
    # plans ceil(6) + 1 = 7 sub-steps, four pairs.
    fewest, *more = (fn(chunk, jnp.float32(1.0), jnp.int32(p)) for p in (3, 4, 5, 8))
    assert np.array_equal(np.asarray(fewest.t_end), np.asarray(t1))
    reference = jax.tree_util.tree_leaves(fewest)
    for out in more:
        for a, b in zip(reference, jax.tree_util.tree_leaves(out), strict=True):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
