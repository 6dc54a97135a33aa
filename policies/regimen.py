"""The model's declared regimen as an open-loop policy: what ``medsim simulate`` gives prior patients.

Each model file declares the regimen virtual patients get when the user names none
(:meth:`~medsim.models.base.PhysiologyModel.default_regimen`: doses at fixed times, amounts that
may depend on a patient's weight or basal rate, and constant infusion rates), and the bounds it
is judged against (``safety_limits``). :class:`DeclaredRegimen` gives that regimen through the
policy protocol, so that it runs in the one closed loop (:func:`medsim.policies.rollout.rollout`)
and its risk comes from the one estimator set (:func:`medsim.policies.risk.risk_report`).

Interactions happen every ``look_every`` time units (a measurement each time) and at every dose
time; the treatment never depends on what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.policies.protocol import Observation, Option, next_on_grid
from medsim.population.virtual import VirtualPopulation
from medsim.simulate.types import Bound


def declared_bounds(model: PhysiologyModel) -> tuple[Bound, ...]:
    """The model's declared safety limits (``PhysiologyModel.safety_limits``) as bounds, in their order."""
    return tuple(Bound(lim.observable, lim.value, lim.side) for lim in model.safety_limits)


@dataclass(frozen=True, eq=False)
class DeclaredRegimen:
    """The regimen a model declares, for the patients of one virtual population.

    Build it with :meth:`for_population`. Patient ``i`` of the population (``Observation.patient``)
    gets amount ``amount[e, i]`` of dose ``e`` into compartment ``cmt[e]`` at ``time[e]``, and
    infusion ``rate[c][i]`` into compartment ``c`` throughout.

    Attributes
    ----------
    time : (E,) float
        Dose times (model time unit), sorted.
    cmt : (E,) int
        Dose compartments.
    amount : (E, N) float
        Dose amounts per patient (dose unit of the compartment).
    rate : mapping cmt -> (N,) float
        Constant infusion rates (dose unit per time unit).
    look_every : float
        Time between interactions without a dose (model time unit); a measurement is taken at
        every interaction.
    """

    time: np.ndarray
    cmt: np.ndarray
    amount: np.ndarray
    rate: dict[int, np.ndarray] = field(default_factory=dict)
    look_every: float = 1.0
    name: str = "declared_regimen"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.look_every) and self.look_every > 0):
            raise ValueError(f"declared_regimen: look_every must be finite and > 0, got {self.look_every}")

    @classmethod
    def for_population(cls, population: VirtualPopulation, horizon: float, *, look_every: float) -> DeclaredRegimen:
        """The model's ``default_regimen`` over ``[0, horizon)`` for every patient of ``population``.

        Parameters
        ----------
        population : VirtualPopulation
            Its parameters and covariates set the amounts (a regimen may depend on weight or
            basal rate).
        horizon : float
            Model time unit.
        look_every : float
            Interaction (and measurement) interval between doses, model time unit.
        """
        model, n = population.model, population.n_patients
        rows, rates = model.default_regimen(population.simulation_parameters(), horizon)
        rows = sorted(rows, key=lambda r: float(r[0]))
        time = np.asarray([float(r[0]) for r in rows], np.float64)
        cmt = np.asarray([int(r[1]) for r in rows], np.int64)
        amount = np.stack([np.broadcast_to(np.asarray(r[2], np.float64), (n,)) for r in rows]) if rows else None
        rate = {int(c): np.broadcast_to(np.asarray(r, np.float64), (n,)).copy() for c, r in rates.items()}
        return cls(
            time=time,
            cmt=cmt,
            amount=np.zeros((0, n)) if amount is None else amount,
            rate=rate,
            look_every=float(look_every),
        )

    @property
    def _tol(self) -> float:
        # Interaction times are sums of float intervals; a relative tolerance absorbs rounding.
        return 1e-6 * max(1.0, self.look_every)

    def init(self, n: int, *, seed: int) -> None:
        """Memoryless: the regimen is a function of time and patient."""
        return None

    def act(self, state: None, obs: Observation, *, rng: np.random.Generator) -> tuple[None, Option]:
        """The doses due at ``obs.time`` (summed per compartment), each patient's rates, and the time
        to the next dose or look, whichever comes first."""
        t = np.asarray(obs.time, np.float64)
        # Padded rows of a chunk carry indices past the population; they are inactive.
        who = np.minimum(np.asarray(obs.patient, np.int64), self.amount.shape[1] - 1)
        tol = self._tol
        due = np.abs(self.time[:, None] - t[None, :]) <= tol  # (E, n)
        bolus = {}
        for c in np.unique(self.cmt):
            rows = self.cmt == c
            bolus[int(c)] = np.where(due[rows], self.amount[rows][:, who], 0.0).sum(axis=0)
        later = np.where(self.time[:, None] > t[None, :] + tol, self.time[:, None], np.inf)
        next_dose = later.min(axis=0, initial=np.inf)
        following = np.minimum(next_dose, next_on_grid(t, 0.0, self.look_every, tol))
        rate = {c: r[who] for c, r in self.rate.items()}
        return None, Option(interval=following - t, bolus=bolus, rate=rate)
