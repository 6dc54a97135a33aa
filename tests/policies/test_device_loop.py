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
from medsim.policies.builtin import PID, TDM, BasalBolus, FixedDose, Flip, SafeTiming
from medsim.policies.loading import FunctionPolicy
from medsim.policies.protocol import Option
from medsim.policies.risk.events import patient_events
from medsim.policies.rollout import rollout
from medsim.policies.rollout_device import AUTO_MIN_PATIENTS, choose_loop, streaming_rollout
from medsim.policies.scenarios import MealScenario
from medsim.policies.spec import SafetySpec
from medsim.policies.streaming import sums_events
from medsim.population import sample_population
from medsim.simulate.types import Bound

GLUCOSE = registry.get("glucose_insulin")
PK = registry.get("pk_oral_1cmt")
GLUCOSE_BOUNDS = (Bound("glucose_mg_dL", 90.0, "lower"), Bound("glucose_mg_dL", 160.0, "upper"))
PK_BOUNDS = (Bound("conc", 12.0, "upper"), Bound("conc", 2.0, "lower"))
RECORDED = ("t_start", "t_end", "mask", *("log_survival", "grid_violation", "end_violation"))
RECORDED += ("time_outside", "first_outside", "depth")
PER_OBS = ("measured", "true_start", "obs_min", "obs_max", "treatment", "efficacy")

# name -> (model, policy, scenario, bounds, horizon, dt)
CASES = {
    "pid": (GLUCOSE, PID(every=15.0), MealScenario(seed=4), GLUCOSE_BOUNDS, 360.0, 1.0),
    "basal_bolus": (
        GLUCOSE,
        BasalBolus(every=60.0, correct_between_meals=True),
        MealScenario(seed=4, start_clock_h=6.0),  # breakfast inside the 6 h horizon
        GLUCOSE_BOUNDS,
        360.0,
        1.0,
    ),
    "fixed": (GLUCOSE, FixedDose(dose=0.5, every=120.0, measure_every=45.0), None, GLUCOSE_BOUNDS, 360.0, 1.0),
    "tdm": (PK, TDM(target=8.0, every=12.0, dose=300.0, adjust_after=1), None, PK_BOUNDS, 72.0, 0.05),
    "flip": (GLUCOSE, Flip(a=PID(every=15.0), b=PID(every=30.0, kp=1 / 30), q=0.4), None, GLUCOSE_BOUNDS, 240.0, 1.0),
}


def safe_timing():
    """``safe_timing`` around ``tdm``: particles drawn from the PK draws the population comes from
    (built when the case runs: the draws come from conftest)."""
    from conftest import concentrated_draws

    base = TDM(target=8.0, every=12.0, dose=300.0, adjust_after=1)
    draws = concentrated_draws(PK)
    options = dict(bounds=PK_BOUNDS[:1], eps=0.1, grid=(2.0, 6.0), particles=8, dt=0.25)
    return SafeTiming(base=base, model=PK, draws=draws, **options)


CASES["safe_timing"] = (PK, safe_timing, None, PK_BOUNDS, 30.0, 0.05)


@pytest.fixture(scope="module")
def populations():
    from conftest import concentrated_draws

    glucose = concentrated_draws(GLUCOSE, spread=0.05)
    return {
        GLUCOSE.name: sample_population(glucose, 6, seed=2, covariates={"BASAL": 1.2}),
        PK.name: sample_population(concentrated_draws(PK), 6, seed=2),
    }


@pytest.fixture(scope="module", params=sorted(CASES))
def both(request, populations):
    model, policy, scenario, bounds, horizon, dt = CASES[request.param]
    policy = policy if hasattr(policy, "act") else policy()
    population = populations[model.name]
    options = dict(bounds=bounds, horizon=horizon, dt=dt, seed=3, scenario=scenario)
    host = rollout(model, population, policy, loop="host", n_paths_saved=2, **options)
    device = rollout(model, population, policy, loop="device", n_paths_saved=2, **options)
    return request.param, model, population, policy, options, host, device


def assert_same(a, b):
    """Equal arrays, NaN where NaN (no tolerance)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.mark.slow
def test_compiled_loop_equals_host_loop(both):
    name, model, *_, host, device = both
    if name == "basal_bolus":  # the meal counts in total_dose_cmt2 (scenario doses) in both loops
        assert (host.efficacy["total_dose_cmt2"] > 0).all()
    assert host.provenance["loop"] == "host" and device.provenance["loop"] == "device"
    assert host.mask.sum() > 2 * host.n_patients  # several interactions each
    for field in RECORDED:
        assert_same(getattr(host, field), getattr(device, field))
    for field in PER_OBS:
        assert getattr(host, field).keys() == getattr(device, field).keys()
        for key in getattr(host, field):
            assert_same(getattr(host, field)[key], getattr(device, field)[key])
    assert_same(host.path_time, device.path_time)
    for key in host.path:
        assert_same(host.path[key], device.path[key])
    # CGM-grid traces (glucose models): recorded by the kernel in both loops, every grid point filled.
    assert host.trace.keys() == device.trace.keys() and bool(host.trace) == (model is GLUCOSE)
    for key in host.trace:
        assert not np.isnan(host.trace[key]).any()
        assert_same(host.trace[key], device.trace[key])


@pytest.mark.slow
def test_streaming_sums_give_the_recorded_events(both):
    name, model, population, policy, options, _, device = both
    if name not in ("pid", "tdm"):  # each streamed case compiles one more loop: meals (glucose) and PK suffice
        pytest.skip("streaming sums are checked on the pid (announced meals) and tdm (PK) cases")
    sums = streaming_rollout(model, population, policy, **options)
    spec = SafetySpec(bounds=options["bounds"][::-1], horizon=options["horizon"], time_unit=model.time_unit)
    want = patient_events(device, spec)
    got = sums_events(sums, device.bounds, spec, device.draw, device.policy)
    for name in ("seen", "grid", "detected", "measured_observable", "joint_seen", "joint_grid"):
        assert_same(getattr(want, name), getattr(got, name))
    # float64 sums of per-interval log-survivals in another order: rounding well below 1e-12
    np.testing.assert_allclose(got.bridge, want.bridge, rtol=0, atol=1e-12)
    assert got.undefined_bridge == want.undefined_bridge
    np.testing.assert_array_equal(sums.interactions, device.mask.sum(axis=1))
    np.testing.assert_allclose(sums.dose[:, 0], device.efficacy["total_dose_cmt1"], rtol=1e-12)


@pytest.mark.slow
def test_a_noise_table_gives_both_loops_the_same_streams(populations):
    from medsim.policies.noise_index import NoiseTable

    model, policy, _, bounds, horizon, dt = CASES["tdm"]
    # Patient 1 replays patient 0's streams for its first three interactions, then its own.
    table = np.array([[0] * 8, [0, 0, 0, 1, 1, 1, 1, 1], *([[i] * 8 for i in range(2, 6)])])
    options = dict(bounds=bounds, horizon=horizon, dt=dt, seed=3, n_paths_saved=0, noise_index=NoiseTable(table))
    population = populations[model.name]
    population = population.take(np.array([0, 0, 1, 2, 3, 4]))  # patients 0 and 1 are the same patient
    host = rollout(model, population, policy, loop="host", **options)
    device = rollout(model, population, policy, loop="device", **options)
    assert device.provenance["loop"] == "device"
    for name in RECORDED:
        assert_same(getattr(host, name), getattr(device, name))
    for key in host.measured:
        assert_same(host.measured[key], device.measured[key])
    conc = host.measured["conc"]
    assert_same(conc[1, :3], conc[0, :3])  # same patient, same noise: the same measurements
    assert not np.array_equal(conc[1, 3:6], conc[0, 3:6])  # fresh noise after
    with pytest.raises(ValueError, match="NoiseTable"):  # a Python function runs on the host only
        rollout(model, population, policy, loop="device", **{**options, "noise_index": lambda p, k: p})


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


def test_the_report_says_which_loop_ran(pk_draws):
    from medsim.policies.evaluate import evaluate_policies
    from medsim.policies.spec_file import parse_spec

    spec = parse_spec("conc<=20;horizon=24h", model=PK)
    report, results = evaluate_policies(pk_draws, ["fixed:dose=320,every=12"], spec, n=4, seed=0, loop="host")
    assert results[0].provenance["loop"] == "host"
    assert report.provenance.settings["loop"] == "fixed:dose=320: host"


def test_streaming_memory_is_one_row_of_sums_per_patient():
    # A full run failed here: 10^5 patients with CGM were refused (15.3 GiB planned for
    # per-interaction rows) although the streaming loop keeps only per-patient sums.
    from medsim.policies.rollout_setup import _check_work, _Setup
    from medsim.simulate import WorkLimitError

    setup = _Setup(GLUCOSE, GLUCOSE_BOUNDS, 1440.0, 1.0, 0, None, True, None, None, "milstein", 10**6, 2**30)
    setup.n_total = 100_000
    with pytest.raises(WorkLimitError, match="of memory"):
        _check_work(setup, PID(), 288, 0, "an interaction every 5 min")
    setup.streaming = True
    _check_work(setup, PID(), 288, 0, "an interaction every 5 min")  # about 100 MB: within 1 GiB


def test_rollout_setups_share_one_compiled_measurement():
    # Each streaming_rollout call built a new jitted measurement for its setup and compiled it
    # again (0.15-0.2 s per call, a third of a 10^4-patient closed-loop day on 2 cores).
    from medsim.policies.rollout_setup import _Setup

    def setup():
        return _Setup(GLUCOSE, GLUCOSE_BOUNDS, 60.0, 1.0, 0, None, True, None, None, "milstein", 100)

    assert setup().measure._fn is setup().measure._fn
    noiseless = _Setup(GLUCOSE, GLUCOSE_BOUNDS, 60.0, 1.0, 0, None, False, None, None, "milstein", 100)
    assert noiseless.measure._fn is not setup().measure._fn
