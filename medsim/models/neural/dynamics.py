"""The latent SDE: prior drift with a Bayesian weight subspace, posterior drift, diffusion.

In model time ``t`` (unit ``time_unit``) and with ``T = time_scale``::

    prior      dz = f_p(z, u, e; delta) dt + g(z) dW
    posterior  dz = [f_p(z, u, e; delta) + c(z, u, e, ctx, t) / T] dt + g(z) dW     (training only)

    f_p = (W(delta) phi(z, u, e) + b - softplus(kappa) * z) / T
    W(delta) = W_0 + sigma_w * sum_r delta_r M_r
    g_i(z) = (softplus(alpha_i + beta_i z_i) + g_min) / sqrt(T)

``u`` are the normalised dose-filter values (:mod:`medsim.models.neural.dose_filter`), ``e`` the
patient's static embedding and ``phi`` a two-layer tanh network. The mean-reversion term
``-softplus(kappa) z`` and the bounded ``phi`` keep long rollouts from diverging (an
Ornstein-Uhlenbeck backbone, as in the OU weight prior of Hess et al. 2024, here on the state).

Bayesian part: ``delta`` (``r`` numbers) has prior ``N(0, I)`` and a mean-field Gaussian
variational posterior; ``M_r`` are fixed random directions of unit Frobenius norm (subspace
inference, Izmailov et al. 2019, UAI). All other weights are point estimates. The diffusion is
diagonal and each ``g_i`` depends on ``z_i`` only, so the noise is "diagonal" in torchsde's sense
and the Girsanov log-ratio ``0.5 |(f_q - f_p) / g|^2`` is well defined (``g >= g_min``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import softplus


class LatentDynamics(nn.Module):
    """Drift and diffusion networks of the latent SDE.

    Parameters
    ----------
    latent_dim, n_inputs, embedding_dim, context_dim, width, rank : int
        ``d``, number of dose-filter inputs, embedding size, posterior-context size, network
        width and dimension ``r`` of the Bayesian weight subspace.
    time_scale : float
        ``T`` (model time unit).
    weight_prior_scale : float
        ``sigma_w``.
    min_diffusion : float
        ``g_min``.
    """

    def __init__(
        self,
        latent_dim: int,
        n_inputs: int,
        embedding_dim: int,
        context_dim: int,
        width: int,
        rank: int,
        time_scale: float,
        weight_prior_scale: float,
        min_diffusion: float,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.rank = rank
        self.time_scale = float(time_scale)
        self.weight_prior_scale = float(weight_prior_scale)
        self.min_diffusion = float(min_diffusion)
        features = latent_dim + n_inputs + embedding_dim
        self.body = nn.Sequential(nn.Linear(features, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
        self.out = nn.Linear(width, latent_dim)
        directions = torch.randn(rank, latent_dim, width)
        norms = directions.flatten(1).norm(dim=1).clamp(min=1e-12)
        self.register_buffer("directions", directions / norms[:, None, None])
        # softplus(0.55) ~ 1: relaxation over about one time scale at initialisation.
        self.reversion = nn.Parameter(torch.full((latent_dim,), 0.55))
        self.diffusion_offset = nn.Parameter(torch.full((latent_dim,), -1.0))
        self.diffusion_slope = nn.Parameter(torch.zeros(latent_dim))
        self.correction = nn.Sequential(
            nn.Linear(features + context_dim + 1, width),
            nn.Tanh(),
            nn.Linear(width, latent_dim),
        )
        # Variational posterior q(delta) = N(mean, sd^2), starting near the prior's scale.
        self.delta_mean = nn.Parameter(torch.zeros(rank))
        self.delta_log_sd = nn.Parameter(torch.full((rank,), math.log(0.5)))

    # ------------------------------------------------------------------ Bayesian weight subspace
    def sample_delta(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` reparametrised draws of ``delta`` from ``q(delta)``, shape (n, r)."""
        # Draw on the generator's device (CPU) so a seed gives the same numbers on any device.
        eps = torch.randn(n, self.rank, generator=generator).to(self.delta_mean.device)
        return self.delta_mean + torch.exp(self.delta_log_sd) * eps

    def kl_delta(self) -> torch.Tensor:
        """``KL(q(delta) || N(0, I))`` (closed form, nats)."""
        var = torch.exp(2 * self.delta_log_sd)
        return 0.5 * torch.sum(var + self.delta_mean**2 - 1.0 - 2 * self.delta_log_sd)

    # ------------------------------------------------------------------ drift and diffusion
    def prior_drift(self, z: torch.Tensor, u: torch.Tensor, e: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``f_p``: (B, d) per model time unit; ``u`` (B, n_inputs), ``e`` (B, n_e), ``delta`` (B, r)."""
        phi = self.body(torch.cat([z, u, e], dim=-1))
        out = self.out(phi)
        if self.rank:
            projected = torch.einsum("rdh,bh->brd", self.directions, phi)
            out = out + self.weight_prior_scale * torch.einsum("br,brd->bd", delta, projected)
        return (out - softplus(self.reversion) * z) / self.time_scale

    def perturbation(self, delta: torch.Tensor) -> torch.Tensor | None:
        """``sigma_w * sum_r delta_r M_r`` per patient, (B, d, width); None without a subspace."""
        if not self.rank:
            return None
        return self.weight_prior_scale * torch.einsum("br,rdh->bdh", delta, self.directions)

    def prior_drift_perturbed(
        self, z: torch.Tensor, u: torch.Tensor, e: torch.Tensor, perturbation: torch.Tensor | None
    ) -> torch.Tensor:
        """:meth:`prior_drift` with the weight perturbation precomputed (:meth:`perturbation`).

        Equal to ``prior_drift(z, u, e, delta)``; cheaper when one patient takes many steps.
        """
        phi = self.body(torch.cat([z, u, e], dim=-1))
        out = self.out(phi)
        if perturbation is not None:
            out = out + torch.bmm(perturbation, phi[:, :, None])[:, :, 0]
        return (out - softplus(self.reversion) * z) / self.time_scale

    def posterior_drift(
        self,
        z: torch.Tensor,
        u: torch.Tensor,
        e: torch.Tensor,
        delta: torch.Tensor,
        context: torch.Tensor,
        time_fraction: torch.Tensor,
    ) -> torch.Tensor:
        """``f_q = f_p + c / T``; ``context`` (B, context_dim), ``time_fraction`` (B, 1) in [0, 1]."""
        c = self.correction(torch.cat([z, u, e, context, time_fraction], dim=-1))
        return self.prior_drift(z, u, e, delta) + c / self.time_scale

    def diffusion(self, z: torch.Tensor) -> torch.Tensor:
        """Diagonal ``g(z)``: (B, d), per sqrt(model time unit)."""
        g = softplus(self.diffusion_offset + self.diffusion_slope * z) + self.min_diffusion
        return g / math.sqrt(self.time_scale)
