"""The neural simulator's ``advance`` contract, cross-checked against torchsde and the JAX simulator."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import torch

from medsim.inference.neural.elbo import GridBrownian
from medsim.models.neural import export_model
from medsim.models.neural.dose_filter import filter_values
from medsim.simulate import Bound, DoseEvents, Simulator
from tests.neural.torch_simulator import NeuralSimulator
from tests.neural.torch_stepping import brownian_normals

B = 64
BOUNDS = (Bound("conc", 6.0, "upper"), Bound("conc", 2.0, "lower"))


@pytest.fixture(scope="module")
def start(model):
    rng = np.random.default_rng(0)
    state = {n: (0.5 * rng.standard_normal(B)).astype(np.float32) for n in model.latent_names}
    state["dose_cmt1"] = np.zeros(B, np.float32)
    params = {n: rng.standard_normal(B).astype(np.float32) for n in model.parameter_names}
    return state, params


def _events(batch: int) -> DoseEvents:
    # a bolus at t0 for everyone, a 2-h infusion from 1 h for odd patients, padding elsewhere
    time = np.tile([0.0, 1.0, np.inf], (batch, 1))
    rate = np.tile([0.0, 40.0, 0.0], (batch, 1))
    amount = np.tile([320.0, 80.0, 0.0], (batch, 1))
    amount[::2, 1] = 0.0
    time[::2, 1] = np.inf
    return DoseEvents.from_arrays(time, np.ones((batch, 3)), amount, rate)


def test_advance_returns_well_formed_interval_stats(model, start):
    state, params = start
    sim = NeuralSimulator(model, dt=0.5, bounds=BOUNDS)
    t0 = np.zeros(B)
    t1 = np.linspace(0.0, 8.0, B)  # per-patient intervals, the first one empty
    res = sim.advance(state, params, t0, t1, key=jax.random.key(0), events=_events(B), rates={1: 5.0}, save_every=3)
    s, k = res.stats, len(BOUNDS)
    assert set(res.state) == set(model.state_names)
    for name in ("obs_start", "obs_end", "obs_min", "obs_max"):
        assert getattr(s, name)["conc"].shape == (B,)
    for name in ("log_survival", "grid_violation", "end_violation", "time_outside", "first_outside", "depth"):
        assert getattr(s, name).shape == (B, k)
    lo, hi = s.obs_min["conc"], s.obs_max["conc"]
    assert np.all(lo <= s.obs_start["conc"]) and np.all(s.obs_start["conc"] <= hi)
    assert np.all(lo <= s.obs_end["conc"]) and np.all(s.obs_end["conc"] <= hi)
    assert np.all(s.log_survival <= 0) and np.all(np.isfinite(s.log_survival))
    p = -np.expm1(s.log_survival)
    assert np.all(p[s.grid_violation] == 1.0)  # a grid point outside means a certain crossing
    assert np.all(s.grid_violation[s.end_violation])
    assert np.all(s.time_outside >= 0) and np.all(s.time_outside <= (t1 - t0)[:, None] + 1e-9)
    inside = np.isfinite(s.first_outside)
    assert np.array_equal(inside, s.grid_violation)
    assert np.all(s.first_outside[inside] > np.broadcast_to(t0[:, None], inside.shape)[inside])
    assert np.all(s.depth[~s.grid_violation] == 0) and np.all(s.depth[s.grid_violation] > 0)
    # upper-bound violations agree with the running maximum
    np.testing.assert_array_equal(s.grid_violation[:, 0] | (s.obs_start["conc"] > 6.0), hi > 6.0)
    # the empty interval is an exact no-op
    for n in model.state_names[:-1]:
        assert res.state[n][0] == state[n][0]
    assert s.log_survival[0].tolist() == [0.0, 0.0]
    # saved path: starts at t0, ends at t1, observables in range
    assert res.path.time.shape == res.path.values["conc"].shape
    np.testing.assert_allclose(res.path.time[:, -1], t1)
    assert np.all(res.path.values["conc"] >= lo[:, None] - 1e-6)


def test_results_do_not_depend_on_chunk_size(model, start):
    state, params = start
    key = jax.random.key(4)
    a = NeuralSimulator(model, dt=0.5, bounds=BOUNDS).advance(state, params, 0.0, 3.0, key=key, events=_events(B))
    b = NeuralSimulator(model, dt=0.5, bounds=BOUNDS, chunk_size=7).advance(
        state, params, 0.0, 3.0, key=key, events=_events(B)
    )
    # Same noise per patient; only BLAS blocking differs with the batch size, so the paths agree
    # to float32 rounding (a few ulp per step over 6 steps).
    for n in model.state_names:
        np.testing.assert_allclose(a.state[n], b.state[n], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.stats.log_survival, b.stats.log_survival, rtol=1e-4, atol=1e-7)


def test_bad_input_is_named(model, start):
    state, params = start
    sim = NeuralSimulator(model, dt=0.5)
    with pytest.raises(KeyError, match="latent_00"):
        sim.advance({k: v for k, v in state.items() if k != "latent_00"}, params, 0.0, 1.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="CMT 5"):
        sim.advance(state, params, 0.0, 1.0, key=jax.random.key(0), rates={5: 1.0})
    with pytest.raises(ValueError, match="t1 must be >= t0"):
        sim.advance(state, params, 1.0, 0.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="glucose"):
        NeuralSimulator(model, dt=0.5, bounds=(Bound("glucose_mg_dL", 70.0, "lower"),))


def test_stepper_matches_torchsde_on_the_same_brownian_path(model, start):
    """Our Euler loop and torchsde's ``sdeint`` (method="euler") on the prior SDE, same increments.

    Doses on grid points make the two input conventions coincide, so the paths agree to float32
    rounding accumulated over 12 steps.
    """
    import torchsde

    state, params = start
    n, h = 12, 0.5
    key = jax.random.key(9)
    events = DoseEvents.from_arrays(np.tile([0.0, 2.5], (B, 1)), np.ones((B, 2)), np.tile([320.0, 100.0], (B, 1)))
    res = NeuralSimulator(model, dt=h).advance(state, params, 0.0, n * h, key=key, events=events)
    z0 = torch.tensor(np.stack([state[k] for k in model.latent_names], 1))
    e = torch.tensor(np.stack([params[k] for k in model.embedding_names], 1))
    delta = torch.tensor(np.stack([params[k] for k in model.delta_names], 1))
    times = torch.arange(n + 1, dtype=torch.float32) * h
    filters = filter_values(
        times[None].expand(B, -1),
        torch.tensor([[0.0, 2.5]]).expand(B, -1),
        torch.zeros(B, 2, dtype=torch.long),
        torch.tensor([[320.0, 100.0]]).expand(B, -1),
        torch.zeros(B, 2),
        torch.ones(B, 2, dtype=torch.bool),
        model.filter_time_constants,
    )
    inputs = model.inputs(filters)

    class PriorSDE(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, s, z):
            k = round(float(s))
            return h * model.dynamics.prior_drift(z, inputs[:, k], e, delta)

        def g(self, s, z):
            return math.sqrt(h) * model.dynamics.diffusion(z)

    noise = torch.tensor(brownian_normals(key, B, n, model.config.latent_dim))
    with torch.no_grad():
        ys = torchsde.sdeint(PriorSDE(), z0, torch.arange(n + 1.0), method="euler", dt=1.0, bm=GridBrownian(noise))
    ours = np.stack([res.state[k] for k in model.latent_names], 1)
    np.testing.assert_allclose(ours, ys[-1].numpy(), rtol=1e-4, atol=1e-5)
    expected_filter = 320 * np.exp(-n * h / float(model.filter_time_constants[0, 0].detach())) + 100 * np.exp(
        -(n * h - 2.5) / float(model.filter_time_constants[0, 0].detach())
    )
    np.testing.assert_allclose(res.state["dose_cmt1"], expected_filter, rtol=1e-5)


def test_jax_simulator_runs_the_exported_model_with_the_same_numbers(model, start):
    """The exported JAX model in the mechanistic simulator against the torch stepper, same noise.

    Without input both are the same Euler-Maruyama recursion on the same counter-based
    increments: they agree to float32 rounding. Under a constant infusion the dose filter is
    exact in torch and Euler in JAX; Euler's error on ``a' = -a/T + R`` stays below
    ``a * dt / T`` (first order), and the latent paths move by less than that.
    """
    state, params = start
    phys = export_model(model)
    theta = {p.name: params.get(p.name, np.zeros(B, np.float32)) for p in phys.parameters}
    key = jax.random.key(2)
    dt = 0.1
    jax_sim = Simulator(phys, dt=dt, bounds=BOUNDS, scheme="euler")
    torch_sim = NeuralSimulator(model, dt=dt, bounds=BOUNDS)
    ours = torch_sim.advance(state, params, 0.0, 3.0, key=key)
    theirs = jax_sim.advance(state, theta, 0.0, 3.0, key=key)
    for n in model.latent_names:
        np.testing.assert_allclose(ours.state[n], np.asarray(theirs.state[n]), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(
        -np.expm1(ours.stats.log_survival), -np.expm1(np.asarray(theirs.stats.log_survival)), atol=1e-4
    )
    np.testing.assert_array_equal(ours.stats.grid_violation, np.asarray(theirs.stats.grid_violation))
    ours = torch_sim.advance(state, params, 0.0, 3.0, key=key, rates={1: 40.0})
    theirs = jax_sim.advance(state, theta, 0.0, 3.0, key=key, rates={1: 40.0})
    tc = float(model.filter_time_constants[0, 0].detach())
    exact = 40.0 * tc * (1 - math.exp(-3.0 / tc))
    np.testing.assert_allclose(ours.state["dose_cmt1"], exact, rtol=1e-5)
    assert np.all(np.abs(np.asarray(theirs.state["dose_cmt1"]) - exact) < exact * dt / tc)
    gap = max(np.abs(ours.state[n] - np.asarray(theirs.state[n])).max() for n in model.latent_names)
    assert 0 < gap < dt / tc
