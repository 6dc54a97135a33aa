"""Neural-CDE encoder: reads a subject's irregular record into a hidden state at every knot.

``dh = F_theta(h) dX(t)`` (Kidger et al. 2020, eq. 4) with ``X`` the interpolated record
(:mod:`medsim.models.neural.interpolation`): time, each observable's last value and count, and
each dose compartment's cumulative amount. ``F`` ends in ``tanh`` as in Kidger et al. §3.2, which
bounds the response to any one increment. The initial state ``h_0`` is a function of the first
knot and of the standardised covariates, so two subjects with no measurements yet differ only
through their covariates.

The CDE is integrated segment by segment in the segment parameter ``s`` with the explicit
midpoint rule (``substeps`` per segment), so zero-length segments and padding (zero increments)
cost nothing special and the hidden state at knot ``k`` depends on the record up to knot ``k``
only (causal), which is what lets one pass yield both the state at a forecast origin and at the
end of a training window.
"""

from __future__ import annotations

import torch
from torch import nn

from medsim.models.neural.interpolation import ControlPath


class CDEEncoder(nn.Module):
    """Neural CDE over a :class:`ControlPath`.

    Parameters
    ----------
    n_channels : int
        Channels ``C`` of the control path.
    n_covariates : int
        Standardised covariates conditioning ``h_0``.
    hidden : int
        Size of the CDE state ``h``.
    width : int
        Width of the vector-field network.
    substeps : int
        Midpoint sub-steps per segment.
    """

    def __init__(self, n_channels: int, n_covariates: int, hidden: int, width: int, substeps: int = 1) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.hidden = hidden
        self.substeps = substeps
        self.initial = nn.Linear(n_channels + n_covariates, hidden)
        self.field = nn.Sequential(
            nn.Linear(hidden, width),
            nn.Softplus(),
            nn.Linear(width, hidden * n_channels),
            nn.Tanh(),
        )

    def vector_field(self, h: torch.Tensor) -> torch.Tensor:
        """``F(h)``: (B, hidden) -> (B, hidden, C)."""
        return self.field(h).reshape(h.shape[0], self.hidden, self.n_channels)

    def forward(self, path: ControlPath, covariates: torch.Tensor, *, until: int | None = None) -> torch.Tensor:
        """Hidden state at every knot.

        Parameters
        ----------
        path : ControlPath
            Batch of interpolated records, (B, K, C).
        covariates : (B, n_covariates) tensor
            Standardised covariates.
        until : int, optional
            Stop after knot ``until`` (states beyond it are not computed).

        Returns
        -------
        (B, K', hidden) tensor
            ``h`` at knots ``0..K'-1`` with ``K' = K`` or ``until + 1``.
        """
        h = torch.tanh(self.initial(torch.cat([path.values[:, 0], covariates], dim=-1)))
        states = [h]
        last = path.n_segments if until is None else min(until, path.n_segments)
        step = 1.0 / self.substeps
        for segment in range(last):
            for sub in range(self.substeps):
                s0 = sub * step
                k1 = torch.einsum("bhc,bc->bh", self.vector_field(h), path.derivative(segment, s0)) * step
                mid = h + 0.5 * k1
                k2 = torch.einsum("bhc,bc->bh", self.vector_field(mid), path.derivative(segment, s0 + 0.5 * step))
                h = h + k2 * step
            states.append(h)
        return torch.stack(states, dim=1)
