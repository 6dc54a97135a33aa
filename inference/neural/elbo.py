"""Evidence lower bound of the neural patient model on forecasting windows.

For one window with history ``H``, planned doses ``u`` and targets ``y`` (Li et al. 2020,
"Scalable gradients for stochastic differential equations", AISTATS, eq. 9, conditioned on the
history as in a conditional VAE)::

    log p(y | H, u) >= E_q[ sum_i log p(y_i | z(t_i), e) ]
                       - KL( q(z(t_c), e | H, y) || p(z(t_c), e | H) )
                       - E_q[ 0.5 * int |(f_q - f_p) / g|^2 dt ]          (Girsanov, path KL)

and, once per data set, ``- KL(q(delta) || N(0, I))`` for the Bayesian drift-weight subspace,
spread over the ``N`` training windows as ``KL / N`` per window. The path KL is integrated by
torchsde as an extra state (``sdeint(..., logqp=True)``) with Euler-Maruyama on the training
grid. The torchsde solve runs in *step units* (``s = t / h``, ``dt = 1``): drift and diffusion
are multiplied by ``h`` and ``sqrt(h)``, which leaves the path law and the Girsanov term
unchanged and keeps the solver's clock on exact integers.

Windows overlap (every observation is a target of several windows), so the sum of window
bounds is a pseudo-likelihood bound, not a bound on the joint density of a subject's series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchsde
from torchsde import BaseBrownian

from medsim.models.neural.dose_filter import filter_values
from medsim.models.neural.model import NeuralPatientModel, gaussian_kl
from medsim.models.neural.windows import WindowBatch


class GridBrownian(BaseBrownian):
    """Brownian motion on the integer grid ``0..n`` from given standard-normal increments.

    ``W(t)`` is piecewise linear between grid points (only grid-aligned queries occur with a
    unit step). Using explicit increments makes a solve reproducible from a torch generator and
    lets a test drive torchsde and the medsim stepper with the same noise.
    """

    __slots__ = ("_cumulative", "_shape")

    def __init__(self, increments: torch.Tensor) -> None:
        """``increments``: (n, B, channels) standard normals (unit-length steps)."""
        zero = torch.zeros_like(increments[:1])
        self._cumulative = torch.cat([zero, torch.cumsum(increments, dim=0)], dim=0)
        self._shape = tuple(increments.shape[1:])

    def _at(self, t: torch.Tensor | float) -> torch.Tensor:
        t = float(t)
        n = self._cumulative.shape[0] - 1
        k = min(max(math.floor(t), 0), n - 1)
        w = min(max(t - k, 0.0), 1.0)
        return (1 - w) * self._cumulative[k] + w * self._cumulative[k + 1]

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if return_U or return_A:
            raise ValueError("GridBrownian provides increments only (no space-time Levy area)")
        if tb is None:
            return self._at(ta)
        return self._at(tb) - self._at(ta)

    def __repr__(self) -> str:
        return f"GridBrownian(steps={self._cumulative.shape[0] - 1}, shape={self._shape})"

    @property
    def dtype(self):
        return self._cumulative.dtype

    @property
    def device(self):
        return self._cumulative.device

    @property
    def shape(self):
        return self._shape

    @property
    def levy_area_approximation(self):
        return "none"


class WindowSDE(torch.nn.Module):
    """torchsde view of a batch's posterior (``f``) and prior (``h``) latent SDEs in step units."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(
        self,
        model: NeuralPatientModel,
        inputs: torch.Tensor,
        embedding: torch.Tensor,
        delta: torch.Tensor,
        context: torch.Tensor,
        step: float,
    ) -> None:
        super().__init__()
        self.model = model
        self.inputs = inputs  # (n + 1, B, n_filters), normalised, on the grid
        self.embedding = embedding
        self.delta = delta
        self.context = context
        self.step = step
        self.n_steps = inputs.shape[0] - 1

    def _index(self, s: torch.Tensor) -> int:
        return min(max(math.floor(float(s) + 1e-6), 0), self.n_steps)

    def f(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        k = self._index(s)
        fraction = torch.full((z.shape[0], 1), k / self.n_steps, dtype=z.dtype, device=z.device)
        dyn = self.model.dynamics
        return self.step * dyn.posterior_drift(z, self.inputs[k], self.embedding, self.delta, self.context, fraction)

    def h(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        k = self._index(s)
        return self.step * self.model.dynamics.prior_drift(z, self.inputs[k], self.embedding, self.delta)

    def g(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return math.sqrt(self.step) * self.model.dynamics.diffusion(z)


@dataclass(frozen=True)
class WindowTerms:
    """Per-window terms of the bound (each (B,), nats) and the number of targets."""

    log_likelihood: torch.Tensor
    kl_initial: torch.Tensor
    kl_path: torch.Tensor
    n_targets: torch.Tensor

    def elbo(self, kl_weight: float = 1.0) -> torch.Tensor:
        """Per-window bound, with the KL terms weighted by ``kl_weight`` (annealing)."""
        return self.log_likelihood - kl_weight * (self.kl_initial + self.kl_path)


def grid_inputs(model: NeuralPatientModel, batch: WindowBatch, times: torch.Tensor) -> torch.Tensor:
    """Normalised dose-filter inputs at relative ``times`` (T,) for every window: (T, B, n_filters)."""
    grid = times[None, :].expand(batch.size, -1)
    values = filter_values(
        grid,
        batch.dose_time,
        batch.dose_index,
        batch.dose_amount,
        batch.dose_rate,
        batch.dose_mask,
        model.filter_time_constants,
    )
    return model.inputs(values).transpose(0, 1)


def window_terms(model: NeuralPatientModel, batch: WindowBatch, *, generator: torch.Generator) -> WindowTerms:
    """One-sample Monte Carlo estimate of the bound's terms for every window of ``batch``.

    Parameters
    ----------
    model : NeuralPatientModel
    batch : WindowBatch
    generator : torch.Generator
        Source of every random number (initial state, weight draw, Brownian increments).
    """
    config = model.config
    n_steps = config.n_steps
    step = config.horizon / n_steps
    device = batch.knot_value.device
    rows = torch.arange(batch.size, device=device)
    hidden = model.encode(batch)
    h_cut, h_end = hidden[rows, batch.cut_index], hidden[rows, batch.last_index]
    prior_mean, prior_sd = model.initial_prior(h_cut)
    post_mean, post_sd = model.initial_posterior(h_cut, h_end)
    # Random numbers come from the CPU generator and are moved: the same seed, the same draws.
    eps = torch.randn(post_mean.shape, generator=generator).to(device)
    z0, embedding = model.split_state(post_mean + post_sd * eps)
    kl_initial = gaussian_kl(post_mean, post_sd, prior_mean, prior_sd)
    delta = model.dynamics.sample_delta(batch.size, generator=generator)
    times = torch.arange(n_steps + 1, device=device, dtype=torch.float32) * step
    sde = WindowSDE(model, grid_inputs(model, batch, times), embedding, delta, model.context(h_cut, h_end), step)
    noise = torch.randn(n_steps, batch.size, config.latent_dim + 1, generator=generator).to(device)
    ys, log_ratio = torchsde.sdeint(
        sde,
        z0,
        torch.arange(n_steps + 1, device=device, dtype=torch.float32),
        method="euler",
        dt=1.0,
        bm=GridBrownian(noise),
        logqp=True,
    )
    kl_path = log_ratio.sum(dim=0)
    # Latent state at each target time: linear interpolation between grid points.
    position = (batch.target_time / step).clamp(0.0, float(n_steps))
    k = position.floor().clamp(max=n_steps - 1).long()
    w = (position - k)[..., None]
    path = ys.permute(1, 0, 2)  # (B, n + 1, d)
    z_left = torch.gather(path, 1, k[..., None].expand(-1, -1, config.latent_dim))
    z_right = torch.gather(path, 1, (k + 1)[..., None].expand(-1, -1, config.latent_dim))
    z_target = (1 - w) * z_left + w * z_right
    e_target = embedding[:, None, :].expand(-1, z_target.shape[1], -1)
    link = model.decoder.link(z_target, e_target)
    link = torch.gather(link, 2, batch.target_obs[..., None])[..., 0]
    value = model.decoder.natural(link, batch.target_obs)
    log_lik = model.decoder.log_likelihood(value, batch.target_obs, batch.target_value)
    log_lik = torch.where(batch.target_mask, log_lik, torch.zeros_like(log_lik)).sum(dim=1)
    return WindowTerms(log_lik, kl_initial, kl_path, batch.target_mask.sum(dim=1))
