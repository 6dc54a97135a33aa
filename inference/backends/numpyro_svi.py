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
small scale, or where :func:`ode_start` puts it (:func:`run_svi_starts`). Draws come from the
fitted guide. The whole ELBO trace is returned; the checks on
it are in :mod:`medsim.inference.diagnostics`. A step whose ELBO or gradient is not finite (a
particle drawn where the model cannot be evaluated) is rejected: the optimiser keeps its state,
the trace records NaN, and the checks count such steps (numpyro's ``SVI.stable_update``).

Starts (:data:`STARTS`): ``"prior"`` is the prior medians; ``"ode"`` first fits the ODE limit
(every process-noise scale at 0, the same prior otherwise) and starts at that guide's median. In the
ODE limit the random effects alone must explain how subjects differ, so the start carries their
spread; from the prior medians an SDE fit can instead explain each subject by a slow disturbance
held in the filter and let a between-subject SD shrink (``docs/fitting.md``, "Slow disturbances and
between-subject SDs"). Several starts: each is fitted, the highest ELBO is kept, and every start's
ELBO and population sites are recorded, so the diagnostics can say when equally good optima
disagree (:func:`medsim.inference.svi_diagnostics.start_checks`).

Coarse first steps (``coarse``, ``coarse_steps``): the early steps of a long fit only move the
guide towards the optimum, far from it, where the likelihood's discretisation error (a few tenths
of a nat on a 12-patient glucose cohort at half the filter's RK4 steps) is small against how far
the guide still has to go. They can run on the same cohort prepared with fewer filter steps per
interval (half the gradient's cost), and the run ends on the fit's own filter, so the guide it
returns, its ELBO and every check are those of the exact likelihood. The Adam state and its
step-size schedule carry on across the switch as in one run. ``docs/fitting.md``, "Coarse first
steps", has the measurements.

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
STARTS = ("prior", "ode")
INIT_SCALE = 0.05
ODE_START_DRAWS = 200
"""Draws taken from the ODE-limit guide of an ``"ode"`` start (only its median is used)."""
MIN_FINAL_STEPS = 20
"""Fewest steps a fit with coarse first steps takes on its own filter (the trace checks need 2 per window)."""


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


def site_summary(data: FitData, constrained: dict) -> dict[str, list]:
    """Each population site's draws (any leading shape) as ``[median, sd, log]``: median and SD on
    the log scale where every draw is positive (``log`` true), else on the site's own scale; the
    scale on which two fits' sites are compared (:func:`medsim.inference.svi_diagnostics.start_checks`)."""
    out = {}
    for s in data.priors.sites:
        if s.sampled_site not in constrained:
            continue
        x = np.asarray(constrained[s.sampled_site], np.float64).ravel()
        x = np.abs(x) if s.signed else x
        log = bool(np.all(x > 0))
        z = np.log(x) if log else x
        out[s.site] = [float(np.median(z)), float(np.std(z)), log]
    return out


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
    init_values: dict | None = None,
    coarse: FitData | None = None,
    coarse_steps: int = 0,
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
    init_values : dict sampled site -> value, optional
        Where the guide starts (constrained values of the sampled sites); default
        :func:`start_values`, the prior medians.

    Returns
    -------
    SamplerOutput
        ``samples`` with shape (1, draws, ...); ``sample_stats`` empty; ``info["elbo"]`` is the
        mean ELBO (nats) over the last 10 % of steps, ``info["elbo_trace"]`` every step's (the
        first ``info["coarse_steps"]`` of them the coarse filter's),
        ``info["spread_check"]`` the test of the fitted guide's spread (:mod:`medsim.inference.svi_spread`),
        ``info["median"]`` the guide's median of every sampled site and ``info["sites"]`` the
        population sites' :func:`site_summary`.
    """
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import Adam

    if draws < 1 or steps < 1 or particles < 1:
        raise ValueError(f"need draws, steps and particles >= 1; got {draws}, {steps}, {particles}")
    if not 0.0 < decay <= 1.0 or not learning_rate > 0.0:
        raise ValueError(f"need learning_rate > 0 and 0 < decay <= 1; got {learning_rate}, {decay}")
    coarse_steps = int(coarse_steps) if coarse is not None else 0
    if not 0 <= coarse_steps <= max_coarse_steps(steps):
        raise ValueError(
            f"coarse_steps must be in [0, {max_coarse_steps(steps)}] for {steps} steps (at least "
            f"{steps - max_coarse_steps(steps)} must remain on the fit's own filter); got {coarse_steps}"
        )
    model = partial(hierarchical_model, data)
    auto = make_guide(model, guide, start_values(data) if init_values is None else init_values, rank=rank)
    schedule = lambda i: learning_rate * decay ** (i / steps)  # noqa: E731
    optimizer, elbo = Adam(schedule), Trace_ELBO(num_particles=particles)
    svi = SVI(model, auto, optimizer, elbo)
    # One guide, optimiser and schedule for both phases: the state passes from one SVI to the other.
    phases = [(svi, steps)]
    if coarse_steps:
        phases = [
            (SVI(partial(hierarchical_model, coarse), auto, optimizer, elbo), coarse_steps),
            (svi, steps - coarse_steps),
        ]
    # The SVI state carries its own key (split from key_init) for the ELBO particles.
    key_init, key_draws = jax.random.split(jax.random.key(seed))
    counter = ProgressCounter(progress, steps, every=chunk)
    start = time.perf_counter()
    state = phases[0][0].init(key_init)
    if coarse_steps:
        svi.init(key_init)  # sets up its own parameter transforms; the state is the coarse phase's
    losses = []
    for phase, phase_steps in phases:
        state = _run_steps(phase, state, phase_steps, chunk, losses, counter)
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
    offset = coarse_offset(data, coarse, auto, params) if coarse_steps else None
    median = {k: np.asarray(v) for k, v in auto.median(params).items()}
    sites = site_summary(data, constrained)
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
        "coarse_steps": coarse_steps,
        "coarse_substeps": int(coarse.timeline.substeps) if coarse_steps else None,
        "coarse_offset": offset,
        "elbo": float(np.nanmean(tail)) if np.isfinite(tail).any() else float("nan"),
        # standard error of that mean (each step's estimate draws its own particles)
        "elbo_se": float(np.nanstd(tail.astype(np.float64)) / np.sqrt(max(1, np.isfinite(tail).sum()))),
        "rejected_steps": int(np.isnan(trace).sum()),
        "elbo_trace": trace,
        "spread_check": spread,
        "median": median,
        "sites": sites,
    }
    return SamplerOutput(samples=samples, sample_stats={}, wall_time_s=wall, info=info)


def max_coarse_steps(steps: int) -> int:
    """Most of ``steps`` that may run on a coarse filter: at least ``max(MIN_FINAL_STEPS, steps // 10)``
    end the run on the fit's own, so the reported ELBO (the last 10 %) and the trace checks are its."""
    return max(0, steps - max(MIN_FINAL_STEPS, steps // 10))


def coarse_offset(data: FitData, coarse: FitData, auto, params: dict) -> dict:
    """How far the optimum on the ``coarse`` filter lies from the one on ``data``'s, in the fitted
    guide's posterior SDs: the check that coarse first steps were a start near the answer.

    At a Gaussian guide's optimum ``E_q[grad log p] = 0``, so moving from one log density to
    another shifts the optimum's location by about ``Sigma (grad log p_coarse - grad log p)``,
    ``Sigma`` the guide's covariance; both gradients are taken at the guide's location (on the
    unconstrained scale). Returns the largest shift over the coordinates in their own SDs
    (``max_sd``, its ``coordinate``, the median over coordinates) and the two filters' log
    densities' difference there (``log_density_difference``, nats; coarse minus exact). One
    Newton step on a posterior that is not Gaussian: an estimate good to a factor of about 2,
    which is what :func:`medsim.inference.svi_diagnostics.coarse_checks` needs of it.
    """
    from medsim.inference.hierarchical import potential_fn
    from medsim.inference.svi_spread import coordinate_names

    loc = params["auto_loc"]
    if "auto_scale_tril" in params:
        cov = params["auto_scale_tril"] @ params["auto_scale_tril"].T
    else:
        factor, scale = params["auto_cov_factor"], params["auto_scale"]
        cov = factor @ factor.T + jnp.diag(jnp.square(scale))

    def value_and_grad(d):
        potential = potential_fn(d)
        return jax.jit(jax.value_and_grad(lambda z: potential(auto._unpack_latent(z))))(loc)

    (u_exact, g_exact), (u_coarse, g_coarse) = value_and_grad(data), value_and_grad(coarse)
    cov, diff = np.asarray(cov, float), np.asarray(g_exact, float) - np.asarray(g_coarse, float)  # U = -log p
    shift = np.abs(cov @ diff) / np.sqrt(np.diagonal(cov))
    names = {s.sampled_site: s.site for s in data.priors.sites}
    names |= {data.priors.eta_site(p): f"eta_{p}" for p in data.priors.random_effects}
    worst = int(np.argmax(shift))
    return {
        "max_sd": round(float(shift[worst]), 4),
        "coordinate": coordinate_names(auto, names)[worst],
        "median_sd": round(float(np.median(shift)), 4),
        "log_density_difference": round(float(u_exact - u_coarse), 3),
    }


def _run_steps(svi, state, steps: int, chunk: int, losses: list, counter: ProgressCounter):
    """``steps`` optimisation steps of ``svi`` from ``state``, in compiled chunks of ``chunk``
    (progress reported between them); each step's loss is appended to ``losses``."""
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

    done = 0
    while done < steps:
        n = min(length, steps - done)
        state, loss = run_chunk(state, np.int32(n))
        losses.append(np.asarray(loss)[:n])
        done += n
        counter.add(n)
    return state


def parse_starts(value) -> tuple[str, ...]:
    """SVI starts given as ``"prior,ode"`` or a sequence of names: distinct names from :data:`STARTS`.

    Raises
    ------
    ValueError
        Naming the value and what was expected.
    """
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in names]
    if not names or any(n not in STARTS for n in names) or len(set(names)) != len(names):
        raise ValueError(f"SVI start: expected distinct names from {', '.join(STARTS)} (e.g. prior,ode); got {value!r}")
    return tuple(names)


def ode_start(data: FitData, *, seed: int = 0, progress: Progress | None = None, **options) -> tuple[dict, dict]:
    """Start values for an SVI fit of ``data`` from an SVI fit of its ODE limit.

    The ODE limit has the same prior with every process-noise scale at 0
    (:meth:`~medsim.inference.priors.PriorSpec.ode_limit`) and the same random-effect coordinates;
    its guide's median gives every site the two share, the process-noise scales start at their
    prior medians. ``options`` go to :func:`run_svi` (steps, learning rate, guide, ...).

    Returns
    -------
    values : dict
        For ``run_svi(init_values=...)``.
    record : dict
        The ODE-limit fit's ELBO, steps, wall time, ELBO-trace problems (a start that did not
        converge is still a start; the record says so) and population sites (:func:`site_summary`).
    """
    import dataclasses

    from medsim.inference.svi_diagnostics import elbo_checks

    if not data.priors.process_noise:
        raise ValueError("an 'ode' start needs a fit with process noise: this one is the ODE limit already")
    ode = dataclasses.replace(data, priors=data.priors.ode_limit())
    options = {k: v for k, v in options.items() if k != "draws"}
    if options.get("coarse") is not None:  # the coarse filter on the same ODE-limit prior
        options["coarse"] = dataclasses.replace(options["coarse"], priors=ode.priors)
    out = run_svi(ode, draws=ODE_START_DRAWS, seed=seed, progress=progress, **options)
    values = start_values(data)
    values.update({k: v for k, v in out.info["median"].items() if k in values})
    _, problems, _ = elbo_checks(out.info["elbo_trace"][out.info["coarse_steps"] :])
    record = {
        "elbo_ode_limit": out.info["elbo"] if np.isfinite(out.info["elbo"]) else None,
        "steps": out.info["steps"],
        "wall_time_s": float(out.wall_time_s),
        "problems": problems,
        "sites": out.info["sites"],
    }
    return values, record


def run_svi_starts(
    data: FitData,
    starts: tuple[str, ...] = ("prior",),
    *,
    seed: int = 0,
    progress: Progress | None = None,
    **options,
) -> SamplerOutput:
    """:func:`run_svi` from each of ``starts`` (:data:`STARTS`), keeping the highest ELBO.

    Every start's fit uses ``seed`` and ``options``. With more than one start (or an ``"ode"``
    start) ``info["starts"]`` lists, per start, its ELBO, population sites (:func:`site_summary`)
    and wall time, the kept one first; the kept fit's wall time includes every start's. A start
    whose fit diverged is recorded with its error while another succeeds.

    Raises
    ------
    ValueError
        An unknown or repeated start, or ``"ode"`` for a fit without process noise.
    SviDivergedError
        Every start diverged.
    """
    starts = parse_starts(starts)
    steps = int(options.get("steps", 5000))
    sizes = [2 if s == "ode" else 1 for s in starts]  # an "ode" start fits twice: its ODE limit, then the SDE
    stages, offsets = sum(sizes), np.cumsum([0, *sizes])[:-1]

    def stage_progress(stage: int):
        if progress is None:
            return None
        return lambda n, total: progress(int(stage) * steps + n, stages * steps)

    fits, records = {}, []
    wall = 0.0
    for start, stage in zip(starts, offsets, strict=True):
        record: dict = {"start": start}
        try:
            init = None
            if start == "ode":
                init, record["ode_limit"] = ode_start(data, seed=seed, progress=stage_progress(stage), **options)
                wall += record["ode_limit"]["wall_time_s"]
                stage += 1
            out = run_svi(data, seed=seed, progress=stage_progress(stage), init_values=init, **options)
        except SviDivergedError as err:
            if len(starts) == 1:
                raise
            records.append({**record, "elbo": None, "error": str(err)})  # another start may still succeed
            continue
        wall += out.wall_time_s
        elbo = out.info["elbo"]  # None when no step of the tail was finite: the record stays strict JSON
        finite = bool(np.isfinite(elbo))
        record.update(
            elbo=elbo if finite else None,
            elbo_se=out.info["elbo_se"] if finite else None,
            sites=out.info["sites"],
            wall_time_s=float(out.wall_time_s),
        )
        fits[len(records)] = out
        records.append(record)
    if not fits:
        raise SviDivergedError(
            "SVI diverged from every start: " + "; ".join(f"{r['start']}: {r['error']}" for r in records)
        )
    elbos = np.array([np.nan if r["elbo"] is None else r["elbo"] for r in records], float)
    best = int(np.nanargmax(elbos)) if np.isfinite(elbos).any() else min(fits)
    kept = fits[best]
    info = dict(kept.info)
    info["start"] = starts[best]
    if starts != ("prior",):
        info["starts"] = [records[best]] + [r for i, r in enumerate(records) if i != best]
    return SamplerOutput(samples=kept.samples, sample_stats={}, wall_time_s=wall, info=info)
