"""The closed-loop rollout: shapes and masks, reproducibility, chunking, common random numbers, efficacy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import medsim.models as registry
from medsim.policies.builtin import TDM, FixedDose
from medsim.policies.loading import FunctionPolicy
from medsim.policies.protocol import Option
from medsim.policies.rollout import rollout, rollout_many
from medsim.population import VirtualPopulation, sample_population
from medsim.simulate.types import Bound

PK = registry.get("pk_oral_1cmt")
BOUNDS = (Bound("conc", 15.0, "upper"), Bound("conc", 25.0, "upper"))
# dt below 1 / ka of the fastest absorber of the population fixture (ka 4.8 /h): the largest
# explicit step that keeps its depot nonnegative (medsim.simulate.stability).
SETTINGS = {"bounds": BOUNDS, "horizon": 48.0, "dt": 0.2, "n_paths_saved": 3}


def typical_population(model, n: int, *, sigma: float | None = None) -> VirtualPopulation:
    """``n`` identical typical patients (eta = 0), optionally with another process-noise scale."""
    theta = model.individual_parameters(model.typical_parameters(), {}, model.reference_covariates())
    params = {k: np.full(n, float(v)) for k, v in theta.items()}
    for p in model.params_of_kind("process_noise"):
        if sigma is not None:
            params[p.name] = np.full(n, sigma)
    return VirtualPopulation.from_parameters(model, params)


@pytest.fixture(scope="module")
def population(pk_draws) -> VirtualPopulation:
    pop = sample_population(pk_draws, 6, seed=1)
    # Moderate process noise so that paths differ but stay plausible.
    return dataclasses.replace(pop, params={**pop.params, "sigma_central": np.full(6, 0.1)})


@pytest.fixture(scope="module")
def fixed_result(population):
    return rollout(PK, population, FixedDose(dose=400.0, every=12.0), seed=5, **SETTINGS)


def staggered(obs, *, rng):
    """Even patients look every 6 h, odd ones every 16 h (irregular, per-patient schedules)."""
    interval = np.where(obs.patient % 2 == 0, 6.0, 16.0)
    return Option(interval=interval, bolus={1: np.where(obs.index == 0, 300.0, 0.0)})


def test_shapes_and_masks(fixed_result, population):
    r = fixed_result
    n, k, j = population.n_patients, 4, len(BOUNDS)
    assert r.mask.shape == (n, k) and r.mask.all()
    np.testing.assert_allclose(r.t_start, np.tile([0.0, 12.0, 24.0, 36.0], (n, 1)))
    np.testing.assert_allclose(r.t_end, np.tile([12.0, 24.0, 36.0, 48.0], (n, 1)))
    assert r.log_survival.shape == (n, k, j) and (r.log_survival <= 0).all()
    for name in ("grid_violation", "end_violation", "time_outside", "first_outside", "depth"):
        assert getattr(r, name).shape == (n, k, j)
    assert set(r.measured) == {"conc"} and r.measured["conc"].shape == (n, k)
    np.testing.assert_array_equal(r.treatment["bolus_cmt1"], 400.0)
    np.testing.assert_array_equal(r.efficacy["total_dose_cmt1"], 1600.0)
    np.testing.assert_array_equal(r.draw, population.draw)
    assert r.out_of_support is None  # no support ranges given: unknown, not "0 % outside"
    assert r.policy == "fixed:dose=400" and r.bounds == BOUNDS and r.time_unit == "h"
    assert r.path_time.shape[0] == 3 and r.path["conc"].shape == r.path_time.shape
    assert r.path_time[:, 0].max() == 0.0 and r.path_time[:, -1].min() == pytest.approx(48.0)
    # The path extremes bracket what each interval reported.
    assert np.nanmax(r.path["conc"][0]) <= np.nanmax(r.obs_max["conc"][0]) + 1e-4


def test_irregular_schedules_pad_and_mask(population):
    r = rollout(PK, population, FunctionPolicy(staggered, "staggered"), seed=1, **SETTINGS)
    counts = r.mask.sum(axis=1)
    np.testing.assert_array_equal(counts, [8, 3, 8, 3, 8, 3])  # 48/6 and ceil(48/16) interactions
    odd = r.t_start[1]
    np.testing.assert_allclose(odd[:3], [0.0, 16.0, 32.0])
    assert np.isnan(odd[3:]).all() and np.isnan(r.measured["conc"][1, 3:]).all()
    assert (r.log_survival[1, 3:] == 0).all() and np.isinf(r.first_outside[1, 3:]).all()
    np.testing.assert_allclose(np.nanmax(r.t_end, axis=1), 48.0)


def test_same_seed_same_numbers_for_any_chunk_size(population, fixed_result):
    policy = FixedDose(dose=400.0, every=12.0)
    again = rollout(PK, population, policy, seed=5, **SETTINGS)
    chunked = rollout(PK, population, policy, seed=5, chunk_size=4, **SETTINGS)
    other = rollout(PK, population, policy, seed=6, **SETTINGS)
    for r in (again, chunked):
        for field in ("t_start", "t_end", "mask", "log_survival", "grid_violation", "time_outside", "depth"):
            np.testing.assert_array_equal(getattr(r, field), getattr(fixed_result, field), err_msg=field)
        for group in ("measured", "true_start", "obs_min", "obs_max", "efficacy", "path"):
            for name, value in getattr(fixed_result, group).items():
                np.testing.assert_array_equal(getattr(r, group)[name], value, err_msg=f"{group}[{name}]")
    assert not np.array_equal(other.measured["conc"], fixed_result.measured["conc"])


def test_common_random_numbers_across_policies(population):
    low, high = rollout_many(
        PK, population, [FixedDose(dose=200.0, every=12.0), FixedDose(dose=600.0, every=12.0)], seed=3, **SETTINGS
    )
    # Same patients, same start: the baseline measurement is the same number for both policies.
    np.testing.assert_array_equal(low.measured["conc"][:, 0], high.measured["conc"][:, 0])
    # Additive residual error (theophylline): the k-th measurement error is the same draw.
    np.testing.assert_allclose(
        low.measured["conc"] - low.true_start["conc"], high.measured["conc"] - high.true_start["conc"], atol=1e-5
    )
    # Same process noise too: with linear dynamics and proportional noise the paths of the two
    # doses stay ordered for every patient and interval (a coupling, not just equal in law).
    assert (high.obs_max["conc"][:, 1:] > low.obs_max["conc"][:, 1:]).all()


def test_measurement_noise_follows_the_residual_error_model(population):
    hourly = FixedDose(dose=400.0, every=12.0, measure_every=1.0)
    noisy = rollout(PK, population, hourly, seed=9, **SETTINGS)
    residual = (noisy.measured["conc"] - noisy.true_start["conc"]) / 0.694
    # Standardised additive errors are N(0, 1); 6 patients x 48 looks = 288 values: 4-SE bands.
    m = residual.size
    assert m == 288
    assert abs(residual.mean()) < 4 / np.sqrt(m) and abs(residual.std() - 1) < 4 / np.sqrt(2 * m)
    clean = rollout(PK, population, hourly, seed=9, measurement_noise=False, **SETTINGS)
    np.testing.assert_array_equal(clean.measured["conc"], clean.true_start["conc"])
    np.testing.assert_array_equal(clean.true_start["conc"], noisy.true_start["conc"])  # noise does not feed back


def test_time_in_window_matches_the_analytic_curve():
    # IV bolus, no process noise: conc = D / V exp(-CL / V t). Time above `hi` is
    # V / CL ln(C0 / hi); the simulator's trapezoid rule on the dt-grid is within dt of it per crossing.
    model = registry.get("pk_iv_1cmt")
    pop = typical_population(model, 2, sigma=0.0)
    dose, horizon, dt = 20.0, 400.0, 0.5
    v, cl = pop.params["V"][0], pop.params["CL"][0]  # per-kg values x the reference weight
    c0 = dose / float(v)
    lo, hi = 5.0, 12.0
    r = rollout(
        model,
        pop,
        FixedDose(dose=dose, every=1000.0),
        bounds=(Bound("conc", 30.0),),
        horizon=horizon,
        dt=dt,
        seed=0,
        target=("conc", lo, hi),
        support={"conc": (0.0, 10.0), "bolus_cmt1": (0.0, 10.0)},
        n_paths_saved=0,
    )
    k = float(cl / v)
    above = np.log(c0 / hi) / k
    below = horizon - np.log(c0 / lo) / k
    np.testing.assert_allclose(r.efficacy["time_above_range"], above / horizon, atol=dt / horizon)
    np.testing.assert_allclose(r.efficacy["time_below_range"], below / horizon, atol=dt / horizon)
    np.testing.assert_allclose(
        r.efficacy["time_in_range"] + r.efficacy["time_below_range"] + r.efficacy["time_above_range"], 1.0
    )
    # The 20 mg bolus is beyond the cohort's 10 mg: the whole (single) interval is out of support.
    np.testing.assert_array_equal(r.out_of_support, 1.0)
    r2 = rollout(
        model,
        pop,
        FixedDose(dose=dose, every=1000.0),
        bounds=(Bound("conc", 30.0),),
        horizon=horizon,
        dt=dt,
        seed=0,
        support={"conc": (0.0, 10.0)},
        n_paths_saved=0,
    )
    np.testing.assert_allclose(r2.out_of_support[:, 0], (np.log(c0 / 10.0) / k) / horizon, atol=dt / horizon)


def test_tdm_brings_troughs_to_target():
    pop = typical_population(PK, 8, sigma=0.02)
    settings = {"bounds": BOUNDS, "horizon": 168.0, "dt": 0.25, "seed": 4, "n_paths_saved": 0}
    fixed, tdm = rollout_many(PK, pop, [FixedDose(dose=400.0, every=12.0), TDM(target=10.0, dose=400.0)], **settings)
    last = tdm.measured["conc"][:, -1]
    # Steady-state trough of 400 mg q12h at typical values is about 7 mg/L; one proportional step
    # from a trough with residual SD 0.69 mg/L moves each patient to 10 mg/L with ~1 mg/L spread,
    # so the mean of 8 patients has SE ~0.35 mg/L: 4 SE.
    assert abs(last.mean() - 10.0) < 1.4
    assert fixed.measured["conc"][:, -1].mean() < 8.0
    assert (tdm.treatment["bolus_cmt1"][:, -1] > 400.0).all()


def test_shards_with_first_patient_merge_into_the_whole_rollout(population, fixed_result):
    from medsim.policies.distribute import merge_shards

    policy = FixedDose(dose=400.0, every=12.0)
    # Patients 0-3 and 4-5 simulated apart (as two Dask workers would), each padded to the whole
    # population's 8-wide chunk so the fixture's compiled kernels serve them.
    shards = [
        [rollout(PK, population.take(slice(a, b)), policy, seed=5, first_patient=a, pad_to=8, **SETTINGS)]
        for a, b in ((0, 4), (4, 6))
    ]
    (merged,) = merge_shards(shards, population)
    for field in ("t_start", "mask", "log_survival", "time_outside", "depth", "path_time"):
        np.testing.assert_array_equal(getattr(merged, field), getattr(fixed_result, field), err_msg=field)
    for group in ("measured", "obs_max", "path"):
        for name, value in getattr(fixed_result, group).items():
            np.testing.assert_array_equal(getattr(merged, group)[name], value, err_msg=f"{group}[{name}]")
    assert merged.provenance == fixed_result.provenance
    # Without first_patient the second shard would reuse patients 0-1's random streams.
    alone = rollout(PK, population.take(slice(4, 6)), policy, seed=5, pad_to=8, **SETTINGS)
    assert not np.array_equal(alone.measured["conc"], fixed_result.measured["conc"][4:])


def test_repeated_rollouts_do_not_recompile(population, fixed_result):
    from medsim.simulate import cache

    def traces() -> int:
        return sum(sim.trace_count for sim, _ in cache.entries("rollout-simulator"))

    before = traces()
    # Another dose and seed on the same schedule: the kernels compiled for `fixed_result` are reused
    # (saving paths fixes the step count per call, so another interval length would compile anew).
    again = rollout(PK, population, FixedDose(dose=300.0, every=12.0), seed=11, **SETTINGS)
    assert not np.array_equal(again.obs_max["conc"], fixed_result.obs_max["conc"])
    assert traces() == before
