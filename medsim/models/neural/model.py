"""The neural patient model: CDE encoder -> latent SDE driven by treatments -> decoder.

Generative story of one forecast from origin ``t_c`` (a :mod:`window <medsim.models.neural.windows>`)::

    (z(t_c), e) ~ N(mu_p(h(t_c)), diag sd_p(h(t_c))^2)       conditional prior given the history
    delta       ~ q(delta)                                    Bayesian drift-weight subspace
    dz = f_p(z, u(t), e; delta) dt + g(z) dW                  latent SDE, u = dose filters
    Y(t_i) ~ Normal(y(z(t_i), e), add^2 + (prop * y)^2)      decoder + residual error

``h(t_c)`` is the neural-CDE state after reading the record up to ``t_c`` (and the covariates).
With an empty history this is the *population* distribution of a new patient's latent state and
embedding; with a subject's record it is that subject's *personalized* (digital-twin)
distribution. In training, the approximate posterior over ``(z(t_c), e)`` also reads the window's
future (``h`` at the window's end) and the posterior drift adds a context-dependent correction;
both are dropped at forecast time. See :mod:`medsim.inference.neural.elbo` for the objective.

State and parameter names used at the simulator boundary
--------------------------------------------------------
* states: ``latent_00 ... latent_{d-1}`` (dimensionless latent coordinates) and
  ``dose_cmt<c>`` (the dose filter of compartment ``c``: amount in the compartment's unit);
* per-patient parameters: ``embedding_00 ...`` (static random effect, dimensionless) and
  ``weight_delta_00 ...`` (coordinates of the drift-weight perturbation of the patient's
  posterior draw).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import softplus

from medsim.models.neural.config import NeuralConfig
from medsim.models.neural.decoder import Decoder
from medsim.models.neural.dynamics import LatentDynamics
from medsim.models.neural.encoder import CDEEncoder
from medsim.models.neural.interpolation import ControlPath
from medsim.models.neural.windows import WindowBatch

_MIN_SD = 1e-4


class NeuralPatientModel(nn.Module):
    """Bayesian neural-CDE / latent-SDE patient model (see the module docstring).

    Parameters
    ----------
    config : NeuralConfig
        Architecture, units and normalisation. Weights are initialised from torch's global
        generator: call ``torch.manual_seed`` first for a reproducible initialisation.
    """

    def __init__(self, config: NeuralConfig) -> None:
        super().__init__()
        self.config = config
        n_state = config.latent_dim + config.embedding_dim
        self.encoder = CDEEncoder(
            config.n_channels,
            len(config.covariates),
            config.cde_hidden,
            config.hidden,
            substeps=1 if config.interpolation == "linear" else 2,
        )
        self.prior_head = nn.Linear(config.cde_hidden, 2 * n_state)
        self.posterior_head = nn.Linear(2 * config.cde_hidden, 2 * n_state)
        self.context_head = nn.Linear(2 * config.cde_hidden, config.context_dim)
        self.dynamics = LatentDynamics(
            latent_dim=config.latent_dim,
            n_inputs=config.n_filters,
            embedding_dim=config.embedding_dim,
            context_dim=config.context_dim,
            width=config.hidden,
            rank=config.weight_rank,
            time_scale=config.time_scale,
            weight_prior_scale=config.weight_prior_scale,
            min_diffusion=config.min_diffusion,
        )
        self.decoder = Decoder(config.latent_dim, config.embedding_dim, config.hidden, config.observables)
        initial = torch.log(torch.tensor([d.time_constant for d in config.doses], dtype=torch.float32))
        self.log_filter_time = nn.Parameter(initial.reshape(-1, 1))
        scale = [d.amount_scale for d in config.doses]
        self.register_buffer("input_scale", torch.tensor(scale, dtype=torch.float32).reshape(-1))

    # ------------------------------------------------------------------ names
    @property
    def latent_names(self) -> tuple[str, ...]:
        return tuple(f"latent_{i:02d}" for i in range(self.config.latent_dim))

    @property
    def filter_names(self) -> tuple[str, ...]:
        return tuple(f"dose_cmt{d.cmt}" for d in self.config.doses)

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.latent_names + self.filter_names

    @property
    def embedding_names(self) -> tuple[str, ...]:
        return tuple(f"embedding_{i:02d}" for i in range(self.config.embedding_dim))

    @property
    def delta_names(self) -> tuple[str, ...]:
        return tuple(f"weight_delta_{i:02d}" for i in range(self.config.weight_rank))

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return self.embedding_names + self.delta_names

    @property
    def observable_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.config.observables)

    # ------------------------------------------------------------------ pieces
    @property
    def filter_time_constants(self) -> torch.Tensor:
        """(n_doses, 1) dose-filter time constants in the model time unit."""
        return torch.exp(self.log_filter_time)

    def inputs(self, filters: torch.Tensor) -> torch.Tensor:
        """Normalised drift inputs ``u`` from filter values in amount units (..., n_filters)."""
        if filters.shape[-1] == 0:
            return filters
        return filters / self.input_scale

    def encode(self, batch: WindowBatch, *, history_only: bool = False) -> torch.Tensor:
        """CDE state at every knot of the batch's windows, (B, K, cde_hidden)."""
        path = ControlPath.build(batch.knot_time, batch.knot_value, self.config.interpolation)
        until = int(batch.cut_index.max()) if history_only else None
        return self.encoder(path, batch.covariates, until=until)

    @staticmethod
    def _gaussian(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, sd_raw = raw.chunk(2, dim=-1)
        return mean, softplus(sd_raw) + _MIN_SD

    def initial_prior(self, h_cut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional prior of ``(z(t_c), e)`` given the history: mean, sd, each (B, d + n_e)."""
        return self._gaussian(self.prior_head(h_cut))

    def initial_posterior(self, h_cut: torch.Tensor, h_end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate posterior of ``(z(t_c), e)`` given history and window: mean, sd."""
        return self._gaussian(self.posterior_head(torch.cat([h_cut, h_end], dim=-1)))

    def context(self, h_cut: torch.Tensor, h_end: torch.Tensor) -> torch.Tensor:
        """Context of the posterior drift (training only), (B, context_dim)."""
        return torch.tanh(self.context_head(torch.cat([h_cut, h_end], dim=-1)))

    def split_state(self, zeta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split ``(z, e)`` samples into latent state (.., d) and embedding (.., n_e)."""
        return zeta[..., : self.config.latent_dim], zeta[..., self.config.latent_dim :]

    def n_weights(self) -> int:
        """Number of trained scalars."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def describe(self) -> dict:
        """JSON-serialisable summary (for provenance and ``medsim models``-style listings)."""
        return {
            "name": self.config.name,
            "kind": "neural-cde-latent-sde",
            "time_unit": self.config.time_unit,
            "observables": [{"name": o.name, "unit": o.unit, "cmts": list(o.cmts)} for o in self.config.observables],
            "doses": [{"cmt": d.cmt, "unit": d.unit} for d in self.config.doses],
            "states": list(self.state_names),
            "parameters": list(self.parameter_names),
            "n_weights": self.n_weights(),
            "filter_time_constants": self.filter_time_constants.detach().cpu().tolist(),
            "residual_add": self.decoder.residual_add.detach().cpu().tolist(),
            "residual_prop": self.decoder.residual_prop.detach().cpu().tolist(),
        }


def gaussian_kl(mean_q: torch.Tensor, sd_q: torch.Tensor, mean_p: torch.Tensor, sd_p: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean_q, sd_q^2) || N(mean_p, sd_p^2))`` summed over the last axis (nats)."""
    ratio = (sd_q / sd_p) ** 2
    return 0.5 * torch.sum(ratio + ((mean_q - mean_p) / sd_p) ** 2 - 1.0 - torch.log(ratio), dim=-1)
