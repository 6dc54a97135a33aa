"""Posterior draws in the form the virtual-population sampler needs.

``inference`` produces posteriors (ArviZ InferenceData on disk); ``medsim`` must not import
``inference``, so the sampler takes this plain, validated container of arrays instead. Chains
are flattened: ``D`` draws in all, ``S`` fitted subjects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.models.prior import parameter_prior
from medsim.population.individuals import PRIOR_DRAW
from medsim.population.streams import Stream, patient_named_normal


@dataclass(frozen=True)
class PosteriorDraws:
    """Draws of population and individual parameters.

    Attributes
    ----------
    model : PhysiologyModel
    population : mapping parameter -> (D,)
        Every model parameter's population value (typical values of structural parameters,
        covariate effects, process-noise scales).
    omega : mapping structural parameter -> (D,)
        Between-subject SD of the log-normal random effect (0 or absent = no BSV).
    eta : mapping structural parameter -> (D, S)
        Fitted subjects' random effects.
    residual : mapping name -> (D,)
        Residual-error parameters named ``"<observable>_add"`` / ``"<observable>_prop"``.
    subject_ids : tuple of str, length S
    covariates : mapping covariate -> (S,)
        Fitted subjects' covariates (resampled for new population patients).
    provenance : mapping
        Model name/version, data hash, seed, backend, versions, diagnostics summary.
    state : mapping state -> (D, S)
        Filtered state mean of each fitted subject after its record's last event (the extended
        Kalman filter's ``E[x(t_last) | data]`` under each draw); empty when not known.
    state_cov : (D, S, n, n) or None
        Its covariance, states in ``model.state_names`` order.
    state_time : (S,) or None
        Time of each subject's last event (model time unit): where a twin's forecast starts.
    """

    model: PhysiologyModel
    population: Mapping[str, np.ndarray]
    omega: Mapping[str, np.ndarray]
    eta: Mapping[str, np.ndarray] = field(default_factory=dict)
    residual: Mapping[str, np.ndarray] = field(default_factory=dict)
    subject_ids: tuple[str, ...] = ()
    covariates: Mapping[str, np.ndarray] = field(default_factory=dict)
    provenance: Mapping = field(default_factory=dict)
    state: Mapping[str, np.ndarray] = field(default_factory=dict)
    state_cov: np.ndarray | None = None
    state_time: np.ndarray | None = None

    def __post_init__(self) -> None:
        missing = [p.name for p in self.model.parameters if p.name not in self.population]
        if missing:
            raise ValueError(f"posterior draws for model {self.model.name!r} lack population parameters {missing}")
        sizes = {k: np.shape(v)[0] for k, v in self.population.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"population draws have different lengths: {sizes}")
        d = self.n_draws
        s = len(self.subject_ids)
        for name, arr in self.eta.items():
            if np.shape(arr) != (d, s):
                raise ValueError(f"eta_{name} has shape {np.shape(arr)}, expected (draws, subjects) = {(d, s)}")
        for name, arr in self.covariates.items():
            if np.shape(arr) != (s,):
                raise ValueError(f"covariate {name} has shape {np.shape(arr)}, expected (subjects,) = {(s,)}")
        if self.state:
            n = len(self.model.state_names)
            if sorted(self.state) != sorted(self.model.state_names):
                names = self.model.state_names
                raise ValueError(f"filtered state names {sorted(self.state)} are not the model's {names}")
            for name, arr in self.state.items():
                if np.shape(arr) != (d, s):
                    raise ValueError(f"filtered state {name} has shape {np.shape(arr)}, expected {(d, s)}")
            if np.shape(self.state_cov) != (d, s, n, n):
                raise ValueError(f"state_cov has shape {np.shape(self.state_cov)}, expected {(d, s, n, n)}")
            if np.shape(self.state_time) != (s,):
                raise ValueError(f"state_time has shape {np.shape(self.state_time)}, expected {(s,)}")

    @property
    def n_draws(self) -> int:
        return int(np.shape(next(iter(self.population.values())))[0])

    @property
    def n_subjects(self) -> int:
        return len(self.subject_ids)

    @classmethod
    def from_prior(cls, model: PhysiologyModel, n_draws: int, *, seed: int) -> PosteriorDraws:
        """Draws of the population values from the model's prior (no data), for simulation before any fit.

        Typical values, covariate effects and process-noise scales are drawn from the same prior a
        fit uses (:mod:`medsim.models.prior`). The BSV SDs are held at the model's literature
        values rather than drawn from their weakly informative half-normal: a prior-predictive
        population should spread patients as the literature does, not as wide as the fit's prior
        allows. Residual errors likewise take the model's values.

        Draw ``d`` of parameter ``p`` is a counter-based draw of the ``SAMPLING`` stream (draw
        index ``d``, named by ``p``): the first draws are the same for any ``n_draws``.
        """
        names = [p.name for p in model.parameters]
        z = patient_named_normal(int(seed), Stream.SAMPLING, np.arange(n_draws), PRIOR_DRAW, names)
        population = {p.name: parameter_prior(p).from_normal(z[:, j]) for j, p in enumerate(model.parameters)}
        omega = {p.name: np.full(n_draws, p.bsv) for p in model.structural if p.bsv > 0}
        residual = model.residual_values(n_draws)
        return cls(
            model=model,
            population=population,
            omega=omega,
            residual=residual,
            provenance={"source": "prior", "seed": seed},
        )
