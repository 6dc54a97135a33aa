"""The virtual population: N virtual patients ready to be simulated.

Each patient is a posterior draw index (its epistemic parameters), individual random effects
(its aleatoric between-subject draw), covariates, the resulting individual parameters and the
residual-error parameters of its draw. Its initial state is a pure function of its parameters
(:meth:`VirtualPopulation.initial_state`) and its random numbers are counter-based streams
indexed by its position in the population (:mod:`medsim.population.streams`), so a population
plus a seed fixes every number of a rollout.

Layout
------
Patients are grouped by posterior draw: patients ``[j * m, (j + 1) * m)`` share draw slot ``j``
(``m = patients_per_draw``; the last group may be shorter). Several patients per draw is on
purpose: the spread *within* a group is aleatoric (random effects, process and measurement
noise), the spread of group means *across* draws is epistemic (what the data do not pin down),
and the law of total variance needs at least two patients per draw to separate the two. For a
fixed budget ``n = draws x m`` the trade-off is: more draws resolve the epistemic spread better,
more patients per draw give each draw's risk a smaller Monte Carlo error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from medsim.models.base import PhysiologyModel, residual_key
from medsim.transfer import to_device

MODES = ("population", "personalized", "prior")
#: A parameter ``initial_<state>`` sets that state at rollout time 0 (twins that start from the
#: filtered state of their subject, and the neural twins' encoded start).
INITIAL_PREFIX = "initial_"


@dataclass(frozen=True)
class VirtualPopulation:
    """N virtual patients (see the module docstring for the layout).

    Attributes
    ----------
    model : PhysiologyModel
    draw : (N,) int
        Posterior draw index of each patient (``-1`` if not drawn from a posterior).
    subject : (N,) str
        Fitted subject a personalized patient twins; ``""`` for new (population) patients.
    params : mapping name -> (N,) float
        Individual parameters: every model parameter (structural ones include random effects and
        covariate effects) plus model-specific derived entries (e.g. ``BASAL``), in model units.
    covariates : mapping name -> (N,) float
        Covariates (the model's and any other cohort covariates, e.g. body weight).
    eta : mapping structural parameter -> (N,) float
        Random effects on the log scale (fitted subject's for twins, new draws otherwise).
    residual : mapping name -> (N,) float
        Residual-error parameters of the patient's draw (``"<observable>_add"`` /
        ``"<observable>_prop"``, the :class:`~medsim.population.draws.PosteriorDraws` names).
    mode : {"population", "personalized", "prior"}
    seed : int
        Seed the population was sampled with (resampling with it reproduces it exactly).
    patients_per_draw : int
    provenance : mapping
        Posterior provenance, sampling settings, package versions.
    """

    model: PhysiologyModel
    draw: np.ndarray
    subject: np.ndarray
    params: Mapping[str, np.ndarray]
    covariates: Mapping[str, np.ndarray] = field(default_factory=dict)
    eta: Mapping[str, np.ndarray] = field(default_factory=dict)
    residual: Mapping[str, np.ndarray] = field(default_factory=dict)
    mode: str = "population"
    seed: int = 0
    patients_per_draw: int = 1
    provenance: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = int(np.shape(self.draw)[0]) if np.ndim(self.draw) == 1 else -1
        if n < 0:
            raise ValueError(f"draw must be a 1-d array of draw indices, got shape {np.shape(self.draw)}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if np.shape(self.subject) != (n,):
            raise ValueError(f"subject has shape {np.shape(self.subject)}, expected ({n},)")
        missing = [p.name for p in self.model.parameters if p.name not in self.params]
        if missing:
            raise ValueError(f"virtual population for model {self.model.name!r} lacks parameters {missing}")
        groups = {"params": self.params, "covariates": self.covariates, "eta": self.eta, "residual": self.residual}
        for group, values in groups.items():
            for name, arr in values.items():
                if np.shape(arr) != (n,):
                    raise ValueError(f"{group}[{name!r}] has shape {np.shape(arr)}, expected ({n},)")
                bad = np.flatnonzero(~np.isfinite(np.asarray(arr, np.float64))) if group != "eta" else ()
                if len(bad):
                    i = int(bad[0])
                    raise ValueError(
                        f"patient {i}: {group} {name}={float(np.asarray(arr)[i]):g} is not finite ({len(bad)} of {n} "
                        f"patients); a virtual patient of model {self.model.name!r} needs finite {group}"
                    )
        for p in self.model.params_of_kind("structural"):
            # Structural parameters (volumes, clearances, rate constants) are positive by the
            # model's definition; a negative one would be simulated into a plausible-looking or
            # diverging trajectory instead of being named.
            values = np.asarray(self.params[p.name])
            bad = np.flatnonzero(~(values > 0))
            if bad.size:
                i = int(bad[0])
                raise ValueError(
                    f"params[{p.name!r}] is {values[i]:g} for patient {i} ({bad.size} of {n} patients); structural "
                    f"parameter {p.name} ({p.unit}) of model {self.model.name!r} must be > 0"
                )
        if self.patients_per_draw < 1:
            raise ValueError(f"patients_per_draw must be >= 1, got {self.patients_per_draw}")

    @classmethod
    def from_parameters(
        cls,
        model: PhysiologyModel,
        params: Mapping[str, np.ndarray],
        *,
        covariates: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
        provenance: Mapping | None = None,
    ) -> VirtualPopulation:
        """Wrap individual parameters (e.g. from :func:`~medsim.population.prior_population`).

        Patients get no posterior draw (``-1``), the model's default residual error and the
        model's reference covariates unless ``covariates`` are given.
        """
        theta = {k: np.asarray(v, np.float64) for k, v in params.items()}
        n = int(np.shape(next(iter(theta.values())))[0])
        cov = {c.name: np.full(n, float(c.reference)) for c in model.covariates}
        cov.update({k: np.broadcast_to(np.asarray(v, np.float64), (n,)).copy() for k, v in (covariates or {}).items()})
        residual = model.residual_values(n)
        return cls(
            model=model,
            draw=np.full(n, -1, np.int64),
            subject=np.full(n, "", dtype=object),
            params=theta,
            covariates=cov,
            residual=residual,
            mode="prior",
            seed=int(seed),
            provenance=dict(provenance or {}),
        )

    # ------------------------------------------------------------------ views
    @property
    def n_patients(self) -> int:
        return int(np.shape(self.draw)[0])

    def __len__(self) -> int:
        return self.n_patients

    def take(self, index: np.ndarray | slice) -> VirtualPopulation:
        """The sub-population ``index`` (e.g. a chunk ``slice(a, b)``), same seed and provenance."""

        def sub(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: np.asarray(v)[index] for k, v in values.items()}

        return VirtualPopulation(
            model=self.model,
            draw=np.asarray(self.draw)[index],
            subject=np.asarray(self.subject)[index],
            params=sub(self.params),
            covariates=sub(self.covariates),
            eta=sub(self.eta),
            residual=sub(self.residual),
            mode=self.mode,
            seed=self.seed,
            patients_per_draw=self.patients_per_draw,
            provenance=self.provenance,
        )

    def simulation_parameters(self) -> dict[str, np.ndarray]:
        """What the simulator's ``params`` needs: covariates overlaid by individual parameters, (N,) each."""
        return {
            **{k: np.asarray(v) for k, v in self.covariates.items()},
            **{k: np.asarray(v) for k, v in self.params.items()},
        }

    def initial_state(self) -> dict[str, np.ndarray]:
        """Each patient's state at time 0, (N,) per state.

        ``model.initial_state`` of its parameters, except for states given as parameters
        ``initial_<state>`` (a twin started from its subject's filtered state).
        """
        params = self.simulation_parameters()
        theta = {k: to_device(v, np.float32) for k, v in params.items()}
        x0 = dict(self.model.initial_state(theta))
        x0.update({k: params[f"{INITIAL_PREFIX}{k}"] for k in x0 if f"{INITIAL_PREFIX}{k}" in params})
        return {k: np.broadcast_to(np.asarray(v, np.float64), (self.n_patients,)).copy() for k, v in x0.items()}

    def residual_sd(self, observable: str, prediction: np.ndarray) -> np.ndarray:
        """Measurement-error SD of ``observable`` at ``prediction`` (N,), with each patient's draw."""
        err = self.model.residual[observable]
        add = self.residual.get(residual_key(observable, "add"))
        prop = self.residual.get(residual_key(observable, "prop"))
        return np.asarray(err.sd(jnp.asarray(prediction), add=add, prop=prop), np.float64)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write to netCDF atomically (see :func:`medsim.population.io.save_population`)."""
        from medsim.population.io import save_population

        return save_population(self, path)

    @staticmethod
    def load(path: str | Path, model: PhysiologyModel | None = None) -> VirtualPopulation:
        """Read a file written by :meth:`save` (see :func:`medsim.population.io.load_population`)."""
        from medsim.population.io import load_population

        return load_population(path, model=model)
