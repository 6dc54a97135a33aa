"""Stochastic variational inference (numpyro): the fast, approximate alternative to NUTS.

The guide is a multivariate normal on the unconstrained scale over all sites, so posterior
correlations between typical values, BSV SDs and random effects are kept (a mean-field guide
would understate the uncertainty of derived quantities): full covariance
(``AutoMultivariateNormal``, ``guide="mvn"``) or a diagonal plus a rank-``r`` factor
(``AutoLowRankMultivariateNormal``, ``guide="lowrank"``), whose cost grows linearly rather than
quadratically with the number of coordinates (large cohorts).

The ELBO is maximised with Adam, whose step size decays exponentially from ``learning_rate``
to ``learning_rate * decay`` over the run: the late small steps average out the gradient noise
of the ELBO estimate, which otherwise leaves the guide's location jittering by about one step's
worth around the optimum. The guide starts at the prior medians (random effects at 0) with a
small scale. Draws come from the fitted guide. The whole ELBO trace is returned; the checks on
it are in :mod:`medsim.inference.diagnostics`. A step whose ELBO or gradient is not finite (a
particle drawn where the model cannot be evaluated) is rejected: the optimiser keeps its state,
the trace records NaN, and the checks count such steps (numpyro's ``SVI.stable_update``).

Coordinates: SVI is meant to run on the non-centred random effects and the log process-noise
scales (:func:`medsim.inference.fitting.fit` sets them; ``docs/fitting.md``, "SVI").
"""

from __future__ import annotations

import time
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from medsim.inference.backends.numpyro_nuts import SamplerOutput
from medsim.inference.backends.progress import Progress, ProgressCounter
from medsim.inference.hierarchical import hierarchical_model, with_random_effects
from medsim.inference.problem import FitData
from medsim.inference.svi_diagnostics import ADVICE

GUIDES = ("mvn", "lowrank")
INIT_SCALE = 0.05


class SviDivergedError(ValueError):
    """The optimiser left the guide without a valid distribution (parameters not finite or degenerate)."""


def make_guide(model, kind: str, init_values: dict, *, rank: int | None = None):
    """The numpyro autoguide ``kind`` (one of :data:`GUIDES`) started at ``init_values``."""
    from numpyro.infer import init_to_value
    from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoMultivariateNormal

    init = init_to_value(values=init_values)
    if kind == "mvn":
        return AutoMultivariateNormal(model, init_loc_fn=init, init_scale=INIT_SCALE)
    if kind == "lowrank":
        return AutoLowRankMultivariateNormal(model, init_loc_fn=init, init_scale=INIT_SCALE, rank=rank)
    raise ValueError(f"unknown SVI guide {kind!r}; choose one of {GUIDES}")


def start_values(data: FitData) -> dict[str, np.ndarray | float]:
    """Where the guide starts: every population site at its prior median, random effects at 0."""
    values: dict[str, np.ndarray | float] = {s.sampled_site: float(s.median()) for s in data.priors.sites}
    values.update({data.priors.eta_site(p): np.zeros(data.n_subjects, np.float32) for p in data.priors.random_effects})
    return values


def spread_check(data: FitData, auto, params: dict, key: jax.Array) -> dict:
    """:func:`medsim.inference.svi_spread.spread_gradients` of the fitted guide, with its coordinates' names."""
    from medsim.inference.hierarchical import potential_fn
    from medsim.inference.svi_spread import coordinate_names, spread_gradients, spread_record

    names = {s.sampled_site: s.site for s in data.priors.sites}
    names |= {data.priors.eta_site(p): f"eta_{p}" for p in data.priors.random_effects}
    mean, se = spread_gradients(potential_fn(data), auto._unpack_latent, params, key)
    return spread_record(mean, se, coordinate_names(auto, names))


def run_svi(
    data: FitData,
    *,
    draws: int = 1000,
    steps: int = 5000,
    learning_rate: float = 0.01,
    decay: float = 0.1,
    particles: int = 1,
    guide: Literal["mvn", "lowrank"] = "mvn",
    rank: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    chunk: int = 250,
) -> SamplerOutput:
    """Fit a multivariate-normal guide and draw from it.

    Parameters
    ----------
    data : FitData
    draws : int
        Draws taken from the fitted guide (returned as one "chain").
    steps : int
        Optimisation steps.
    learning_rate : float
        Adam's first step size.
    decay : float in (0, 1]
        Adam's last step size is ``learning_rate * decay`` (exponential schedule; 1: constant).
    particles : int
        Monte Carlo draws per ELBO gradient (more: less gradient noise, proportionally slower).
    guide : {"mvn", "lowrank"}
        Full-covariance or low-rank-plus-diagonal multivariate normal.
    rank : int, optional
        Rank of the ``"lowrank"`` guide (numpyro's default: about the square root of the number
        of coordinates).
    seed : int
    progress : callable(done, total), optional
        Receives optimisation steps completed.
    chunk : int
        Steps per compiled ``lax.scan`` call (progress is reported between chunks).

    Returns
    -------
    SamplerOutput
        ``samples`` with shape (1, draws, ...); ``sample_stats`` empty; ``info["elbo"]`` is the
        mean ELBO (nats) over the last 10 % of steps, ``info["elbo_trace"]`` every step's and
        ``info["spread_check"]`` the test of the fitted guide's spread (:mod:`medsim.inference.svi_spread`).
    """
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import Adam

    if draws < 1 or steps < 1 or particles < 1:
        raise ValueError(f"need draws, steps and particles >= 1; got {draws}, {steps}, {particles}")
    if not 0.0 < decay <= 1.0 or not learning_rate > 0.0:
        raise ValueError(f"need learning_rate > 0 and 0 < decay <= 1; got {learning_rate}, {decay}")
    model = partial(hierarchical_model, data)
    auto = make_guide(model, guide, start_values(data), rank=rank)
    schedule = lambda i: learning_rate * decay ** (i / steps)  # noqa: E731
    svi = SVI(model, auto, Adam(schedule), Trace_ELBO(num_particles=particles))
    # The SVI state carries its own key (split from key_init) for the ELBO particles.
    key_init, key_draws = jax.random.split(jax.random.key(seed))
    counter = ProgressCounter(progress, steps, every=chunk)
    start = time.perf_counter()
    state = svi.init(key_init)

    length = min(chunk, steps)

    @jax.jit
    def run_chunk(state, n):
        # Every call has the same length, so the update compiles once whatever ``steps`` is; the
        # last call's steps from ``n`` on leave the state as it is (their losses are dropped).
        loss = jax.eval_shape(svi.update, state)[1]

        def step(s, i):
            # stable_update rejects a step whose ELBO or gradient is not finite (loss NaN, state kept):
            # one particle drawn where the model cannot be evaluated must not poison the guide.
            return jax.lax.cond(i < n, svi.stable_update, lambda s: (s, jnp.full(loss.shape, jnp.nan, loss.dtype)), s)

        return jax.lax.scan(step, state, jnp.arange(length))

    losses = []
    done = 0
    while done < steps:
        n = min(length, steps - done)
        state, loss = run_chunk(state, np.int32(n))
        losses.append(np.asarray(loss)[:n])
        done += n
        counter.add(n)
    params = svi.get_params(state)
    diverged = (
        f"SVI diverged: after {steps} steps at learning rate {learning_rate:g} the guide is not a valid distribution"
    )
    if not all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(params)):
        raise SviDivergedError(f"{diverged} (parameters not finite); {ADVICE}")
    try:
        constrained = auto.sample_posterior(key_draws, params, sample_shape=(draws,))
    except ValueError as err:  # e.g. a Cholesky factor whose diagonal underflowed to 0
        raise SviDivergedError(f"{diverged} ({err}); {ADVICE}") from err
    spread = spread_check(data, auto, params, jax.random.fold_in(key_draws, 1))
    samples = with_random_effects(data, {k: np.asarray(v)[None] for k, v in constrained.items()})
    wall = time.perf_counter() - start
    counter.finish()
    trace = -np.concatenate(losses)  # NaN where a step was rejected
    tail = trace[-max(1, steps // 10) :]
    info = {
        "guide": type(auto).__name__ + (f"(rank={rank})" if guide == "lowrank" and rank else ""),
        "optimizer": f"Adam({learning_rate} -> {learning_rate * decay:g}, exponential)",
        "guide_kind": guide,
        "rank": rank,
        "learning_rate": learning_rate,
        "particles": particles,
        "steps": steps,
        "elbo": float(np.nanmean(tail)) if np.isfinite(tail).any() else float("nan"),
        "rejected_steps": int(np.isnan(trace).sum()),
        "elbo_trace": trace,
        "spread_check": spread,
    }
    return SamplerOutput(samples=samples, sample_stats={}, wall_time_s=wall, info=info)
