"""The compiled option loop against the host loop: the same numbers on the same seed.

Both loops draw from the same counter-based streams and evaluate the policy step and the noisy
measurement with the same isolated XLA functions, and the compiled loop advances each interval
with the simulator's own kernel; so every recorded array must be equal, bit for bit (no
tolerance). The streaming sums must give the recorded rollout's per-patient events exactly
(the bridge probabilities up to the order of a float64 sum over interactions: 1e-12).
"""

from __future__ import annotations

import numpy as np
import pytest

import medsim.models as registry
from medsim.population import sample_population
from medsim.simulate.types import Bound
from policies.builtin import PID, BasalBolus, FixedDose
from policies.loading import FunctionPolicy
from policies.protocol import Option
from policies.risk.events import patient_events
from policies.rollout import rollout
from policies.rollout_device import AUTO_MIN_PATIENTS, choose_loop, streaming_rollout
from policies.scenarios import MealScenario
from policies.spec import SafetySpec
from policies.streaming import sums_events

GLUCOSE = registry.get("glucose_insulin")
BOUNDS = (Bound("glucose_mg_dL", 90.0, "lower"), Bound("glucose_mg_dL", 160.0, "upper"))
HORIZON = 360.0
RECORDED = ("t_start", "t_end", "mask", *("log_survival", "grid_violation", "end_violation"))
RECORDED += ("time_outside", "first_outside", "depth")
PER_OBS = ("measured", "true_start", "obs_min", "obs_max", "treatment", "efficacy")


@pytest.fixture(scope="module")
def population():
    from conftest import concentrated_draws

    return sample_population(concentrated_draws(GLUCOSE, spread=0.05), 6, seed=2, covariates={"BASAL": 1.2})


CASES = {
    "pid": (PID(every=15.0), MealScenario(seed=4)),
    "basal_bolus": (BasalBolus(every=60.0, correct_between_meals=True), MealScenario(seed=4)),
    "fixed": (FixedDose(dose=0.5, every=120.0, measure_every=45.0), None),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def both(request, population):
    policy, scenario = CASES[request.param]
    options = dict(bounds=BOUNDS, horizon=HORIZON, dt=1.0, seed=3, scenario=scenario, n_paths_saved=2)
    host = rollout(GLUCOSE, population, policy, loop="host", **options)
    device = rollout(GLUCOSE, population, policy, loop="device", **options)
    return policy, scenario, host, device


def assert_same(a, b):
    """Equal arrays, NaN where NaN (no tolerance)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.mark.slow
def test_compiled_loop_equals_host_loop(both):
    _, _, host, device = both
    assert host.provenance["loop"] == "host" and device.provenance["loop"] == "device"
    assert host.mask.sum() > 2 * host.n_patients  # several interactions each
    for name in RECORDED:
        assert_same(getattr(host, name), getattr(device, name))
    for name in PER_OBS:
        assert getattr(host, name).keys() == getattr(device, name).keys()
        for key in getattr(host, name):
            assert_same(getattr(host, name)[key], getattr(device, name)[key])
    assert_same(host.path_time, device.path_time)
    for key in host.path:
        assert_same(host.path[key], device.path[key])


@pytest.mark.slow
def test_streaming_sums_give_the_recorded_events(both, population):
    policy, scenario, _, device = both
    sums = streaming_rollout(
        GLUCOSE, population, policy, bounds=BOUNDS, horizon=HORIZON, dt=1.0, seed=3, scenario=scenario
    )
    spec = SafetySpec(bounds=BOUNDS[::-1], horizon=HORIZON, time_unit="min")
    want = patient_events(device, spec)
    got = sums_events(sums, device.bounds, spec, device.draw, device.policy)
    for name in ("seen", "grid", "detected", "measured_observable", "joint_seen", "joint_grid"):
        assert_same(getattr(want, name), getattr(got, name))
    # float64 sums of per-interval log-survivals in another order: rounding well below 1e-12
    np.testing.assert_allclose(got.bridge, want.bridge, rtol=0, atol=1e-12)
    assert got.undefined_bridge == want.undefined_bridge
    np.testing.assert_array_equal(sums.interactions, device.mask.sum(axis=1))
    np.testing.assert_allclose(sums.dose[:, 0], device.efficacy["total_dose_cmt1"], rtol=1e-12)


def test_auto_chooses_the_compiled_loop_only_for_array_policies():
    def basal(obs, *, rng):
        return Option(interval=np.full(obs.n, 60.0), rate={1: obs.covariates["BASAL"] / 60.0})

    user = FunctionPolicy(basal, "basal")
    assert choose_loop("auto", PID()) == "device"
    assert choose_loop("auto", PID(), n_patients=AUTO_MIN_PATIENTS) == "device"
    assert choose_loop("auto", PID(), n_patients=8) == "host"  # compiling would cost more than it saves
    assert choose_loop("host", PID()) == "host"
    assert choose_loop("auto", user) == "host"
    with pytest.raises(ValueError, match="no array step"):
        choose_loop("device", user)
    with pytest.raises(ValueError, match="loop"):
        choose_loop("gpu", PID())
