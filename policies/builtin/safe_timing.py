"""``safe_timing``: treatment from a base policy, next look as late as the posterior allows.

The adaptive interaction timing of interaction-limited safe continuous-time RL (arXiv
2606.01051): the treatment comes from a base policy (``fixed``, ``tdm``...), and the time until
the next measurement is the largest candidate ``c`` in ``grid`` for which the predicted
probability of leaving the safe set before ``c`` stays at or below ``eps``.

Prediction. Each patient carries ``particles`` particles: parameters drawn from the posterior
draws the policy is given (a draw index, new random effects ``eta ~ N(0, omega_d)`` or, for a
personalized patient whose subject is in the draws, that subject's ``eta[d]``, and the patient's
known covariates) and a state. At every interaction the particles are

1. propagated with the simulator from the previous interaction with the treatment that was
   actually given (and the disturbances announced then);
2. weighted by the likelihood of the new measurement under each particle's residual error and
   resampled (systematic resampling: a bootstrap particle filter, Gordon et al. 1993), so their
   states are consistent with what was just measured;
3. simulated forward through the candidate grid under the base policy's new option. The
   predicted violation probability before ``c_g`` is ``1 - mean_p prod exp(log_survival)`` over
   the sub-intervals up to ``c_g`` and the bounds: the Brownian-bridge-corrected crossing
   probabilities of the simulator's interval statistics.

Approximations (all conservative or explicit):

* finite ``particles``: the probability estimate has Monte Carlo error of order
  ``sqrt(eps / particles)``; with few particles the chosen time is noisy;
* static parameters are resampled without rejuvenation, so parameter diversity shrinks over
  many interactions (sample impoverishment); the posterior predictive is then too narrow;
* bounds are combined as independent within a sub-step (survival = product over bounds);
* only the current option's treatment and disturbances already announced are simulated:
  unannounced disturbances (meals nobody entered) are not predicted;
* the next look is never later than the base policy's next interaction (so no dose is missed)
  and never earlier than the smallest candidate, even when that candidate's risk exceeds ``eps``.

Random numbers are per patient and counter-based (stream ``POLICY``, particle index
``patient * particles + m``), so the policy is reproducible and independent of chunking; the
particles' parameters are drawn by :func:`medsim.population.individuals.draw_individuals`, the
function every virtual-patient sampler uses.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models.base import PhysiologyModel, residual_key
from medsim.policies.protocol import Observation, Option, Policy, PolicyContext, for_model, spec_string
from medsim.population.draws import PosteriorDraws
from medsim.population.individuals import draw_individuals
from medsim.population.streams import Stream, patient_keys, patient_uniform
from medsim.simulate.types import Bound, DoseEvents

# Counter offsets of the particle streams (interaction k uses 4k + offset; parameters use a
# counter no interaction reaches).
_PROPAGATE, _FORECAST, _RESAMPLE = 0, 1, 2
_PARAMETERS = 2**31


@dataclass(frozen=True)
class SafeTiming:
    """Posterior-aware adaptive measurement timing around a base policy (see the module docstring).

    Parameters
    ----------
    base : Policy
        Gives the treatment (and the latest allowed next interaction).
    model : PhysiologyModel
    draws : PosteriorDraws
        Posterior (or prior) draws the particles are sampled from.
    bounds : tuple of Bound
        Safe set.
    eps : float
        Largest acceptable predicted violation probability before the next look.
    grid : tuple of float
        Candidate times until the next look (model time unit), increasing.
    particles : int
        Particles per patient.
    dt : float
        Simulator sub-step for the predictions (model time unit).
    scheme : str
        Simulator scheme for the predictions (the rollout's, when built from a spec).
    """

    base: Policy
    model: PhysiologyModel
    draws: PosteriorDraws
    bounds: tuple[Bound, ...]
    eps: float = 0.05
    grid: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 12.0)
    particles: int = 64
    dt: float = 0.1
    scheme: str = "milstein"
    _sim: Any = field(default=None, init=False, repr=False, compare=False)
    _observe: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from medsim.policies.compiled import compiled_simulator

        grid = tuple(float(c) for c in self.grid)
        if not grid or not all(0 < c < np.inf for c in grid) or any(b <= a for a, b in itertools.pairwise(grid)):
            raise ValueError(f"safe_timing: grid must be positive and increasing, got {self.grid}")
        if not 0 < self.eps < 1:
            raise ValueError(f"safe_timing: eps must be in (0, 1), got {self.eps}")
        if not 0 < self.dt < np.inf:
            raise ValueError(f"safe_timing: dt must be positive and finite, got {self.dt}")
        if self.particles < 2:
            raise ValueError(f"safe_timing: particles must be >= 2, got {self.particles}")
        if not self.bounds:
            raise ValueError("safe_timing needs at least one safety bound")
        if self.draws.model.name != self.model.name:
            raise ValueError(f"safe_timing: draws are for {self.draws.model.name!r}, not {self.model.name!r}")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "bounds", tuple(self.bounds))
        sim, observe = compiled_simulator(self.model, self.dt, self.bounds, self.scheme)
        object.__setattr__(self, "_sim", sim)
        object.__setattr__(self, "_observe", observe)

    def for_model(self, model: PhysiologyModel) -> SafeTiming:
        """The base policy with what it takes from ``model`` (:func:`~medsim.policies.protocol.for_model`)."""
        base = for_model(self.base, model)
        return self if base is self.base else replace(self, base=base)

    @classmethod
    def from_spec(cls, raw: dict[str, str], context: PolicyContext) -> SafeTiming:
        """``safe_timing:eps=0.05,grid=1;2;4;8,particles=64,base=tdm,base.target=10`` (model, draws,
        bounds and default ``dt`` come from ``context``)."""
        from medsim.policies.loading import PolicySpecError, build_component, build_dataclass, split_components

        own, parts = split_components(raw, ("base",))
        if context.model is None or context.draws is None or not context.bounds:
            raise PolicySpecError("policy 'safe_timing' needs a model, posterior draws and safety bounds")
        base = build_component(own.pop("base", "fixed"), parts["base"], context)
        if context.dt is not None:
            own.setdefault("dt", str(context.dt))
        options = build_dataclass(_Options, "safe_timing", own)
        try:
            return cls(
                base=base,
                model=context.model,
                draws=context.draws,
                bounds=tuple(context.bounds),
                scheme=context.scheme,
                **vars(options),
            )
        except ValueError as err:
            raise PolicySpecError(str(err)) from None

    @property
    def name(self) -> str:
        own = {"eps": self.eps, "grid": self.grid, "particles": self.particles, "dt": self.dt}
        return spec_string("safe_timing", own) + f",base=({self.base.name})"

    # ------------------------------------------------------------------ particles
    def _sample_particles(self, obs: Observation, seed: int) -> dict[str, Any]:
        n, m, draws, model = obs.n, self.particles, self.draws, self.model
        ids = (obs.patient[:, None] * m + np.arange(m)[None, :]).ravel()
        u = patient_uniform(seed, Stream.POLICY, ids, _PARAMETERS)[:, 0]
        d = np.minimum((u * draws.n_draws).astype(np.int64), draws.n_draws - 1)
        s_idx = _subject_index(np.asarray(draws.subject_ids, dtype=str), np.repeat(np.asarray(obs.subject, str), m))
        cov = {c: np.repeat(np.asarray(v, np.float64), m) for c, v in obs.covariates.items()}
        structural = {p.name for p in model.structural}
        drawn = draw_individuals(
            model,
            {k: np.asarray(v)[d] for k, v in draws.population.items()},
            {k: np.asarray(v)[d] for k, v in draws.omega.items() if k in structural},
            cov,
            seed=seed,
            stream=Stream.POLICY,
            patient=ids,
            counter=_PARAMETERS + 1,
            fitted_eta={k: np.asarray(v)[d, np.maximum(s_idx, 0)] for k, v in draws.eta.items() if k in structural},
            fitted=s_idx >= 0,
        )
        theta = {**cov, **drawn.params}
        theta = {k: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (n * m,)) for k, v in theta.items()}
        residual = {}
        for obs_name, err in model.residual.items():
            add = draws.residual.get(residual_key(obs_name, "add"))
            prop = draws.residual.get(residual_key(obs_name, "prop"))
            residual[obs_name] = (
                np.full(n * m, err.add) if add is None else np.asarray(add)[d],
                np.full(n * m, err.prop) if prop is None else np.asarray(prop)[d],
            )
        x = {k: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (n * m,)) for k, v in model.initial_state(theta).items()}
        return {"x": x, "theta": theta, "residual": residual, "ids": ids}

    def _advance(self, p: dict, t0: np.ndarray, t1: np.ndarray, bolus: dict, rate: dict, key: jax.Array):
        m = self.particles
        cmts = sorted(self.model.dose_targets)
        zeros = np.zeros(t0.size)
        times = np.stack([np.where(bolus.get(c, zeros) > 0, t0, np.inf) for c in cmts], 1)
        amounts = np.stack([bolus.get(c, zeros) for c in cmts], 1)
        events = DoseEvents.from_arrays(
            np.repeat(times, m, 0), np.repeat(np.array([cmts] * t0.size), m, 0), np.repeat(amounts, m, 0)
        )
        rates = {c: jnp.asarray(np.repeat(rate.get(c, zeros), m), jnp.float32) for c in cmts}
        t0 = jnp.asarray(np.repeat(t0, m), jnp.float32)
        t1 = jnp.asarray(np.repeat(t1, m), jnp.float32)
        return self._sim.advance(p["x"], p["theta"], t0, t1, key=key, events=events, rates=rates)

    def _reweight(self, p: dict, obs: Observation, seed: int, counter: np.ndarray) -> dict:
        n, m = obs.n, self.particles
        loglik = np.zeros((n, m))
        pred = {k: np.asarray(v, np.float64) for k, v in self._observe(p["x"], p["theta"]).items()}
        for name, y in obs.measured.items():
            if name not in self.model.residual:
                continue
            add, prop = p["residual"][name]
            sd = np.asarray(self.model.residual[name].sd(jnp.asarray(pred[name]), add=add, prop=prop), np.float64)
            r = (np.repeat(np.asarray(y, np.float64), m) - pred[name]) / sd
            term = (-0.5 * r**2 - np.log(sd)).reshape(n, m)
            loglik += np.where(np.isnan(term), 0.0, term)
        w = np.exp(loglik - loglik.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        # Systematic resampling: one uniform per patient, M evenly spaced points.
        u = patient_uniform(seed, Stream.POLICY, obs.patient, counter)[:, 0]
        points = (u[:, None] + np.arange(m)[None, :]) / m
        pick = (np.cumsum(w, axis=1)[:, None, :] < points[:, :, None]).sum(axis=2)
        flat = (np.arange(n)[:, None] * m + np.minimum(pick, m - 1)).ravel()
        take = jnp.asarray(flat)
        return {
            "x": {k: v[take] for k, v in p["x"].items()},
            "theta": {k: v[take] for k, v in p["theta"].items()},
            "residual": {k: (a[flat], b[flat]) for k, (a, b) in p["residual"].items()},
            "ids": p["ids"],
        }

    # ------------------------------------------------------------------ protocol
    def init(self, n: int, *, seed: int) -> dict[str, Any]:
        """State: the base policy's state; particles are sampled at the first observation."""
        return {"base": self.base.init(n, seed=seed), "seed": int(seed), "particles": None, "last": None}

    def act(self, state: dict[str, Any], obs: Observation, *, rng: np.random.Generator):
        seed, n, m = state["seed"], obs.n, self.particles
        t = np.asarray(obs.time, np.float64)
        p = state["particles"] if state["particles"] is not None else self._sample_particles(obs, seed)
        k = np.asarray(obs.index, np.int64)
        if state["last"] is not None:
            t_prev, bolus_prev, rate_prev = state["last"]
            key = patient_keys(seed, Stream.POLICY, p["ids"], np.repeat(4 * k + _PROPAGATE, m))
            p = {**p, "x": self._advance(p, t_prev, t, bolus_prev, rate_prev, key).state}
        p = self._reweight(p, obs, seed, 4 * k + _RESAMPLE)
        base_state, option = self.base.act(state["base"], obs, rng=rng)
        base_interval = np.broadcast_to(np.asarray(option.interval, np.float64), (n,))
        bolus = {c: np.broadcast_to(np.asarray(v, np.float64), (n,)) for c, v in option.bolus.items()}
        for c, a in obs.announced.items():  # disturbances announced now act at this time too
            bolus[c] = bolus.get(c, 0.0) + np.asarray(a, np.float64)
        rate = {c: np.broadcast_to(np.asarray(v, np.float64), (n,)) for c, v in option.rate.items()}
        chosen = self._choose(p, t, bolus, rate, base_interval, seed, k)
        new_state = {"base": base_state, "seed": seed, "particles": p, "last": (t, bolus, rate)}
        return new_state, Option(interval=chosen, bolus=option.bolus, rate=option.rate)

    def _choose(self, p, t, bolus, rate, base_interval, seed, k) -> np.ndarray:
        """Largest candidate (capped by the base interval) whose predicted risk is <= eps."""
        n, m = t.size, self.particles
        log_surv = np.zeros(n * m)
        x, prev = p["x"], 0.0
        chosen = np.full(n, self.grid[0])
        for g, c in enumerate(self.grid):
            key = patient_keys(seed, Stream.POLICY, p["ids"], np.repeat(4 * k + _FORECAST, m) + 2**20 * g)
            res = self._advance({**p, "x": x}, t + prev, t + c, bolus if g == 0 else {}, rate, key)
            log_surv = log_surv + np.asarray(res.stats.log_survival, np.float64).sum(axis=1)
            risk = 1.0 - np.exp(log_surv).reshape(n, m).mean(axis=1)
            chosen = np.where(risk <= self.eps, c, chosen)
            x, prev = res.state, c
        # Never later than the base policy's next interaction; at least the smallest candidate unless
        # the base policy itself comes back sooner.
        return np.minimum(chosen, base_interval)


def _subject_index(fitted: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of each ``wanted`` id among the ``fitted`` subject ids, ``-1`` if absent (vectorised)."""
    if fitted.size == 0:
        return np.full(wanted.shape, -1)
    order = np.argsort(fitted)
    pos = np.minimum(np.searchsorted(fitted[order], wanted), fitted.size - 1)
    return np.where(fitted[order][pos] == wanted, order[pos], -1)


@dataclass(frozen=True)
class _Options:
    """The scalar parameters of ``safe_timing`` (converted from spec strings)."""

    eps: float = 0.05
    grid: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 12.0)
    particles: int = 64
    dt: float = 0.1
