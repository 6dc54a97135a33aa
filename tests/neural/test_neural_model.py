"""The model and its bound: shapes, gradients, seeds, and the Girsanov KL against a direct sum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medsim.inference.neural.elbo import GridBrownian, WindowSDE, grid_inputs, window_terms
from medsim.models.neural import NeuralPatientModel
from medsim.models.neural.windows import make_windows


@pytest.fixture(scope="module")
def batch(cohort, config):
    windows = make_windows(cohort.subjects, config)
    return windows.batch(np.arange(len(windows)))


def test_encoder_and_heads_have_the_documented_shapes(model, batch, config):
    hidden = model.encode(batch)
    b, k = batch.knot_value.shape[:2]
    assert hidden.shape == (b, k, config.cde_hidden)
    mean, sd = model.initial_prior(hidden[:, 0])
    assert mean.shape == sd.shape == (b, config.latent_dim + config.embedding_dim)
    assert torch.all(sd > 0)
    # causality: the state at a knot does not depend on later knots
    cut = model.encode(batch, history_only=True)
    rows = torch.arange(b)
    torch.testing.assert_close(cut[rows, batch.cut_index], hidden[rows, batch.cut_index])


def test_bound_terms_are_finite_and_kls_non_negative(model, batch):
    terms = window_terms(model, batch, generator=torch.Generator().manual_seed(0))
    for value in (terms.log_likelihood, terms.kl_initial, terms.kl_path):
        assert value.shape == (batch.size,) and torch.all(torch.isfinite(value))
    assert torch.all(terms.kl_initial >= 0) and torch.all(terms.kl_path >= 0)
    assert torch.equal(terms.n_targets, batch.target_mask.sum(dim=1))


def test_gradients_reach_every_trainable_parameter(config, batch):
    torch.manual_seed(1)
    fresh = NeuralPatientModel(config)
    terms = window_terms(fresh, batch, generator=torch.Generator().manual_seed(0))
    loss = -terms.elbo().mean() + fresh.dynamics.kl_delta() / batch.size
    loss.backward()
    silent = [n for n, p in fresh.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert silent == []


def test_same_seed_same_numbers(model, batch):
    a = window_terms(model, batch, generator=torch.Generator().manual_seed(5))
    b = window_terms(model, batch, generator=torch.Generator().manual_seed(5))
    c = window_terms(model, batch, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.log_likelihood, b.log_likelihood) and torch.equal(a.kl_path, b.kl_path)
    assert not torch.equal(a.kl_path, c.kl_path)


def test_torchsde_logqp_equals_the_girsanov_sum(model, batch, config):
    """torchsde's extra log-ratio state against 0.5 * sum |(f_q - f_p) / g|^2 h on our own Euler path.

    Both integrate the same Euler-Maruyama recursion with the same increments, so they agree to
    float32 rounding (relative 1e-4 over 16 steps).
    """
    import torchsde

    gen = torch.Generator().manual_seed(2)
    n = config.n_steps
    h = config.horizon / n
    hidden = model.encode(batch)
    rows = torch.arange(batch.size)
    h_cut, h_end = hidden[rows, batch.cut_index], hidden[rows, batch.last_index]
    mean, sd = model.initial_posterior(h_cut, h_end)
    z0, e = model.split_state(mean + sd * torch.randn(mean.shape, generator=gen))
    delta = model.dynamics.sample_delta(batch.size, generator=gen)
    inputs = grid_inputs(model, batch, torch.arange(n + 1, dtype=torch.float32) * h)
    context = model.context(h_cut, h_end)
    sde = WindowSDE(model, inputs, e, delta, context, h)
    noise = torch.randn(n, batch.size, config.latent_dim + 1, generator=gen)
    with torch.no_grad():
        ys, log_ratio = torchsde.sdeint(
            sde,
            z0,
            torch.arange(n + 1, dtype=torch.float32),
            method="euler",
            dt=1.0,
            bm=GridBrownian(noise),
            logqp=True,
        )
        z, kl = z0, torch.zeros(batch.size)
        dyn = model.dynamics
        for k in range(n):
            frac = torch.full((batch.size, 1), k / n)
            fq = dyn.posterior_drift(z, inputs[k], e, delta, context, frac)
            fp = dyn.prior_drift(z, inputs[k], e, delta)
            g = dyn.diffusion(z)
            kl = kl + 0.5 * torch.sum(((fq - fp) / g) ** 2, dim=1) * h
            z = z + fq * h + g * math.sqrt(h) * noise[k, :, : config.latent_dim]
    torch.testing.assert_close(log_ratio.sum(0), kl, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ys[-1], z, rtol=1e-4, atol=1e-5)
