"""Decoder from the latent state to observables, and the residual (measurement) error model.

For observable ``j`` with normalisation ``(loc_j, scale_j)`` (:class:`ObservableSpec`)::

    l_j(z, e) = loc_j + scale_j * (W_2 tanh(W_1 [z, e] + b_1) + b_2)_j        (link scale)
    y_j       = exp(l_j)   if the observable is positive, else l_j               (noise-free value)
    Y_j ~ Normal(y_j, add_j^2 + (prop_j * y_j)^2)                               (a measurement)

The link scale ``l`` is also the coordinate in which the interval statistics evaluate the
Brownian-bridge crossing probability: ``log y`` for positive quantities (the mechanistic models'
``bridge_scale="log"``), ``y`` otherwise. One hidden layer keeps the Jacobian ``dl/dz`` in closed
form (``scale * W_2 diag(1 - tanh^2) W_1``), which the simulator needs at every sub-step to push
the latent diffusion through the decoder.

The residual error is the NONMEM/nlmixr2 "combined" additive + proportional model in natural
units (:class:`medsim.models.base.ResidualError`), with trained ``add``, ``prop`` (point
estimates). Natural units rather than log space because measurements at or near zero (pre-dose
samples, values below quantification) are common in PK cohorts and have no logarithm, and so
that rollouts draw measurement noise exactly as for the mechanistic models.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import softplus

from medsim.models.neural.config import ObservableSpec


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


class Decoder(nn.Module):
    """Latent state (and embedding) -> observables, with the combined residual error.

    Parameters
    ----------
    latent_dim, embedding_dim, width : int
    observables : tuple of ObservableSpec
    """

    def __init__(self, latent_dim: int, embedding_dim: int, width: int, observables: tuple[ObservableSpec, ...]):
        super().__init__()
        self.latent_dim = latent_dim
        self.hidden_layer = nn.Linear(latent_dim + embedding_dim, width)
        self.output_layer = nn.Linear(width, len(observables))
        self.register_buffer("loc", torch.tensor([o.loc for o in observables], dtype=torch.float32))
        self.register_buffer("scale", torch.tensor([o.scale for o in observables], dtype=torch.float32))
        self.register_buffer("positive", torch.tensor([o.positive for o in observables], dtype=torch.bool))
        self.raw_add = nn.Parameter(
            torch.tensor([_inverse_softplus(o.residual_add) for o in observables], dtype=torch.float32)
        )
        self.raw_prop = nn.Parameter(
            torch.tensor([_inverse_softplus(o.residual_prop) for o in observables], dtype=torch.float32)
        )

    def link(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Link-scale values ``l``: (..., d), (..., n_e) -> (..., n_obs)."""
        hidden = torch.tanh(self.hidden_layer(torch.cat([z, e], dim=-1)))
        return self.loc + self.scale * self.output_layer(hidden)

    def link_and_jacobian(self, z: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Link values and ``dl/dz`` in closed form: (B, d), (B, n_e) -> (B, n_obs), (B, n_obs, d)."""
        hidden = torch.tanh(self.hidden_layer(torch.cat([z, e], dim=-1)))
        link = self.loc + self.scale * self.output_layer(hidden)
        # dl/dz = scale * W_2 diag(1 - tanh^2) W_1[:, :d]
        slope = (1.0 - hidden**2)[:, None, :] * self.output_layer.weight[None]  # (B, n_obs, H)
        jacobian = self.scale[None, :, None] * (slope @ self.hidden_layer.weight[:, : self.latent_dim])
        return link, jacobian

    def natural(self, link: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Noise-free observable values in their units from link-scale values.

        ``link`` is (..., n_obs), or any shape with ``index`` (same shape) naming the observable.
        """
        positive = self.positive if index is None else self.positive[index]
        # Clamp before exp only to keep float32 finite; trained values are far inside.
        return torch.where(positive, torch.exp(link.clamp(max=80.0)), link)

    @property
    def residual_add(self) -> torch.Tensor:
        """Additive residual SD per observable (observable unit), (n_obs,)."""
        return softplus(self.raw_add)

    @property
    def residual_prop(self) -> torch.Tensor:
        """Proportional residual CV per observable, (n_obs,)."""
        return softplus(self.raw_prop)

    def residual_sd(self, value: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Measurement SD at noise-free ``value``.

        ``value`` is (..., n_obs), or any shape with ``index`` (same shape) naming the observable.
        """
        add, prop = self.residual_add, self.residual_prop
        if index is not None:
            add, prop = add[index], prop[index]
        return torch.sqrt(add**2 + (prop * value) ** 2)

    def log_likelihood(self, value: torch.Tensor, index: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        """Gaussian log density of ``measured`` given noise-free ``value`` of observable ``index``."""
        sd = self.residual_sd(value, index)
        return -0.5 * ((measured - value) / sd) ** 2 - torch.log(sd) - 0.5 * math.log(2 * math.pi)
