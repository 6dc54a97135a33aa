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

Both loops. The particles are drawn on the host once per chunk, from the patients' indices,
covariates and subjects (:meth:`SafeTiming.prepare`, which both rollout loops call before the
first step); everything after that is one array step (``array_step``): the base policy's array
step, then the filter and the forecasts, whose particles are advanced by the simulator's interval
kernel (:func:`medsim.policies.device_interval.advance_doses`, planned as
:meth:`medsim.simulate.Simulator.advance` plans an interval) with keys folded from the same
counter-based streams. The host loop evaluates that step with XLA
(:func:`medsim.policies.array_step.host_step`) and the compiled loop of
:mod:`medsim.policies.device_loop` traces it, so both give the same numbers on the same seed.
With a base policy that has no array step (``replay``, a Python function) the base acts on the
host and the filter runs as the same jitted function; the compiled loop then does not apply.
Particles whose simulated state is not finite get no weight at the next measurement (the
simulator's own checks, which would raise, do not run inside a compiled step).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models.base import PhysiologyModel, residual_key
from medsim.policies.array_step import host_step, isolated
from medsim.policies.device_interval import advance_doses
from medsim.policies.protocol import Observation, Option, Policy, PolicyContext, for_model, spec_string
from medsim.population.draws import PosteriorDraws
from medsim.population.individuals import draw_individuals
from medsim.population.streams import Stream, patient_base_keys, patient_uniform
from medsim.simulate.types import Bound

F32, F64 = jnp.float32, jnp.float64

# Counter offsets of the particle streams (interaction k uses 4k + offset; parameters use a
# counter no interaction reaches).
_PROPAGATE, _FORECAST, _RESAMPLE = 0, 1, 2
_PARAMETERS = 2**31


@dataclass(frozen=True, eq=False)
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
    _kernel: Any = field(default=None, init=False, repr=False, compare=False)

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
        sim, _ = compiled_simulator(self.model, self.dt, self.bounds, self.scheme)
        # The interval kernel (built here: its set-up probes the model eagerly, outside any trace).
        object.__setattr__(self, "_kernel", sim.interval_kernel())

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
    def _sample_particles(self, patient: np.ndarray, covariates: dict, subject: np.ndarray, seed: int) -> dict:
        n, m, draws, model = patient.size, self.particles, self.draws, self.model
        ids = (patient[:, None] * m + np.arange(m)[None, :]).ravel()
        u = patient_uniform(seed, Stream.POLICY, ids, _PARAMETERS)[:, 0]
        d = np.minimum((u * draws.n_draws).astype(np.int64), draws.n_draws - 1)
        s_idx = _subject_index(np.asarray(draws.subject_ids, dtype=str), np.repeat(np.asarray(subject, str), m))
        cov = {c: np.repeat(np.asarray(v, np.float64), m) for c, v in covariates.items()}
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
        theta = {k: np.broadcast_to(np.asarray(v, np.float32), (n * m,)).copy() for k, v in theta.items()}
        residual = {}
        for obs_name, err in model.residual.items():
            add = draws.residual.get(residual_key(obs_name, "add"))
            prop = draws.residual.get(residual_key(obs_name, "prop"))
            residual[obs_name] = (
                np.full(n * m, err.add, np.float64) if add is None else np.asarray(add, np.float64)[d],
                np.full(n * m, err.prop, np.float64) if prop is None else np.asarray(prop, np.float64)[d],
            )
        x = model.initial_state({k: jnp.asarray(v) for k, v in theta.items()})
        x = {k: np.broadcast_to(np.asarray(v, np.float32), (n * m,)).copy() for k, v in x.items()}
        return {
            "x": x,
            "theta": theta,
            "residual": residual,
            # Key data of (seed, POLICY, particle id) and (seed, POLICY, patient), before the counter.
            "key": np.asarray(patient_base_keys(seed, Stream.POLICY, ids)),
            "patient_key": np.asarray(patient_base_keys(seed, Stream.POLICY, patient)),
        }

    def _advance(self, p: dict, t0, t1, bolus: dict, rate: dict, counter):
        """Particles advanced over ``[t0, t1)`` (per patient) with boluses at ``t0`` (traced)."""
        m = self.particles
        keys = _fold(p["key"], jnp.repeat(counter, m))
        rep = {c: jnp.repeat(v, m) for c, v in bolus.items()}
        rates = {c: jnp.repeat(v, m) for c, v in rate.items()}
        t0, t1 = jnp.repeat(t0, m), jnp.repeat(t1, m)
        return advance_doses(self._kernel, self.model, p["x"], p["theta"], t0, t1, rep, rates, keys, self.dt)

    def _reweight(self, p: dict, measured: dict, k) -> dict:
        """Bootstrap-filter update: weight by the measurement's likelihood, resample systematically."""
        m = self.particles
        n = p["patient_key"].shape[0]
        loglik = jnp.zeros((n, m))
        pred = {k_: v.astype(F64) for k_, v in self.model.observe(p["x"], p["theta"]).items()}
        for name, y in measured.items():
            if name not in self.model.residual:
                continue
            add, prop = p["residual"][name]
            sd = self.model.residual[name].sd(pred[name], add=add, prop=prop).astype(F64)
            y = jnp.repeat(y.astype(F64), m)
            term = (-0.5 * ((y - pred[name]) / sd) ** 2 - jnp.log(sd)).reshape(n, m)
            # Not measured: no information; a particle whose prediction is not finite: no weight.
            term = jnp.where(jnp.isnan(y).reshape(n, m), 0.0, jnp.where(jnp.isfinite(term), term, -1e300))
            loglik = loglik + term
        w = jnp.exp(loglik - loglik.max(axis=1, keepdims=True))
        w = w / w.sum(axis=1, keepdims=True)
        # Systematic resampling: one uniform per patient (as patient_uniform draws it), M evenly spaced points.
        keys = _fold(p["patient_key"], 4 * k + _RESAMPLE)
        u = jax.vmap(lambda key: jax.random.uniform(key, (1,), F32, minval=1e-7, maxval=1.0))(keys)[:, 0].astype(F64)
        points = (u[:, None] + jnp.arange(m)[None, :]) / m
        pick = (jnp.cumsum(w, axis=1)[:, None, :] < points[:, :, None]).sum(axis=2)
        flat = (jnp.arange(n)[:, None] * m + jnp.minimum(pick, m - 1)).ravel()
        return {
            **p,
            "x": {k_: v[flat] for k_, v in p["x"].items()},
            "theta": {k_: v[flat] for k_, v in p["theta"].items()},
            "residual": {k_: (a[flat], b[flat]) for k_, (a, b) in p["residual"].items()},
        }

    # ------------------------------------------------------------------ protocol
    @property
    def array_capable(self) -> bool:
        """The base policy has an array step (then so does ``safe_timing``: the compiled loop runs it)."""
        from medsim.policies.device_loop import supports_device

        return supports_device(self.base)

    def init(self, n: int, *, seed: int) -> dict[str, Any]:
        """State: the base policy's state; particles are sampled by :meth:`prepare`, from the patients."""
        return {"base": self.base.init(n, seed=seed), "seed": int(seed), "particles": None, "last": None}

    def prepare(self, state: dict[str, Any], patient: np.ndarray, covariates: dict, subject: np.ndarray) -> dict:
        """The state with each patient's particles drawn (on the host, before the first step; a
        state already prepared is returned as it is). Called by both loops."""
        if state["particles"] is not None:
            return state
        n = np.asarray(patient).size
        zeros = np.zeros(n)
        cmts = sorted(self.model.dose_targets)
        particles = self._sample_particles(np.asarray(patient, np.int64), covariates, subject, int(state["seed"]))
        last = {"time": zeros, "bolus": {c: zeros for c in cmts}, "rate": {c: zeros for c in cmts}}
        # Leaves as the step hands them back (arrays), so later calls reuse the compiled step.
        return {**state, "seed": np.asarray(state["seed"], np.int64), "particles": particles, "last": last}

    def act(self, state: dict[str, Any], obs: Observation, *, rng: np.random.Generator):
        if self.array_capable:
            return host_step(self, state, obs)
        state = self.prepare(state, obs.patient, obs.covariates, obs.subject)
        base_state, option = self.base.act(state["base"], obs, rng=rng)
        n = obs.n
        given = {
            "interval": np.broadcast_to(np.asarray(option.interval, np.float64), (n,)),
            "bolus": {c: np.broadcast_to(np.asarray(v, np.float64), (n,)) for c, v in option.bolus.items()},
            "rate": {c: np.broadcast_to(np.asarray(v, np.float64), (n,)) for c, v in option.rate.items()},
        }
        fields = {"time": obs.time, "measured": dict(obs.measured), "announced": dict(obs.announced)}
        fields["index"] = obs.index
        own = {"particles": state["particles"], "last": state["last"]}
        with jax.enable_x64(True):
            args = jax.tree_util.tree_map(jnp.asarray, (own, fields, given))
            own, interval = jax.tree_util.tree_map(np.asarray, _host_particle_step(self, *args))
        return {**state, **own, "base": base_state}, Option(interval=interval, bolus=option.bolus, rate=option.rate)

    def array_step(self, state: dict[str, Any], obs: Observation, xp: Any):
        """The base policy's array step, then the particle filter and forecasts (``xp`` is
        ``jax.numpy``: the particles are simulated by the simulator's interval kernel inside the
        trace, from the same counter-based streams). The state must be :meth:`prepare`-d."""
        from medsim.policies.array_step import observation_fields, step_expr

        if state["particles"] is None:
            raise ValueError("safe_timing: array_step needs a prepared state (SafeTiming.prepare)")
        fields = observation_fields(obs)
        base = partial(step_expr, self.base, obs.time_unit, obs.horizon)
        base_state, given = isolated(base, state["base"], fields)
        own = {"particles": state["particles"], "last": state["last"]}
        own_fields = {k: fields[k] for k in ("time", "measured", "announced", "index")}
        own, interval = isolated(self._particle_step, own, own_fields, given)
        new_state = {**state, **own, "base": base_state}
        return new_state, Option(interval=interval, bolus=given["bolus"], rate=given["rate"])

    def _particle_step(self, own: dict, fields: dict, given: dict):
        """Propagate, reweight and resample the particles, forecast the candidates (traced)."""
        p, last = own["particles"], own["last"]
        t = fields["time"].astype(F64)
        k = fields["index"].astype(jnp.int64)
        state = self._advance(p, last["time"], t, last["bolus"], last["rate"], 4 * k + _PROPAGATE).x
        p = self._reweight({**p, "x": state}, fields["measured"], k)
        n = t.shape[0]
        cmts = sorted(self.model.dose_targets)
        zero = jnp.zeros(n, F64)
        bolus = {c: jnp.broadcast_to(given["bolus"].get(c, zero), (n,)).astype(F64) for c in cmts}
        for c, a in fields["announced"].items():  # disturbances announced now act at this time too
            bolus[c] = bolus[c] + a.astype(F64)
        rate = {c: jnp.broadcast_to(given["rate"].get(c, zero), (n,)).astype(F64) for c in cmts}
        chosen = self._choose(p, t, bolus, rate, given["interval"].astype(F64), k)
        return {"particles": p, "last": {"time": t, "bolus": bolus, "rate": rate}}, chosen

    def _choose(self, p, t, bolus, rate, base_interval, k):
        """Largest candidate (capped by the base interval) whose predicted risk is <= eps."""
        n, m = t.shape[0], self.particles
        grid = jnp.asarray(self.grid, F64)
        prev = jnp.concatenate([jnp.zeros(1, F64), grid[:-1]])

        # One forecast sub-interval per candidate, scanned (one kernel in the compiled program).
        def forecast(carry, g):
            x, log_surv, chosen = carry
            dose = {c: jnp.where(g == 0, v, 0.0) for c, v in bolus.items()}  # the bolus is given at t
            counter = 4 * k + _FORECAST + 2**20 * g
            res = self._advance({**p, "x": x}, t + prev[g], t + grid[g], dose, rate, counter)
            log_surv = log_surv + res.stats.log_survival.astype(F64).sum(axis=1)
            risk = 1.0 - jnp.exp(log_surv).reshape(n, m).mean(axis=1)
            return (res.x, log_surv, jnp.where(risk <= self.eps, grid[g], chosen)), None

        start = (p["x"], jnp.zeros(n * m, F64), jnp.full(n, self.grid[0], F64))
        (_, _, chosen), _ = jax.lax.scan(forecast, start, jnp.arange(len(self.grid)))
        # Never later than the base policy's next interaction; at least the smallest candidate unless
        # the base policy itself comes back sooner.
        return jnp.minimum(chosen, base_interval)


def _fold(base_words, counter) -> jax.Array:
    """Keys ``fold_in(base, counter)`` (as :func:`medsim.population.streams.patient_keys` derives them)."""
    counter = jnp.asarray(counter).astype(jnp.uint32)
    return jax.vmap(lambda kd, c: jax.random.fold_in(jax.random.wrap_key_data(kd), c))(base_words, counter)


@partial(jax.jit, static_argnums=0)
def _host_particle_step(policy: SafeTiming, own, fields, given):
    return isolated(policy._particle_step, own, fields, given)


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
