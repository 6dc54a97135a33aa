"""The closed loop as a path problem: virtual patients under a policy, for splitting.

Every path is the real medsim option loop (:func:`medsim.policies.rollout.rollout`: measure, act,
:meth:`~medsim.simulate.Simulator.advance`) for a virtual patient, repeated over the rows of a
batch. Rows differ in their patient (drawn by the first increment) and their noise: the process and measurement
noise of interaction ``k`` come from the counter-based streams of an index the path problem
chooses (``rollout``'s ``noise_index``), hashed from the row's ``k``-th pair of "increments". A
clone that shares its donor's increments up to interaction ``k`` therefore replays the donor's
noise, measurements and the policy's decisions up to ``k`` exactly, and draws fresh noise after:
the policy acts inside the cloned paths. This is what adaptive multilevel splitting needs
(:func:`medsim.policies.risk.rare.ams.ams`); subset simulation and importance sampling need increments
that enter the dynamics continuously and do not apply here.

Scores are per interaction: for a lower bound ``log(b / min y)`` over the interval (for an upper
bound ``log(max y / b)``; the observable's bridge scale when it is linear: ``(b - min y) / b``),
``>= 0`` exactly at a grid violation; the crossing probability is the simulator's bridge-corrected
one, ``1 - exp(sum_k log_survival_k)``.

Where it runs is chosen as :func:`medsim.policies.rollout_device.choose_loop` chooses the rollout's
loop (``loop=`` among the rollout options, default ``"auto"``): a policy with an array step gets a
pure-JAX path function (:mod:`medsim.policies.risk.rare.closed_loop_compiled`), so the splitting
loop and the closed loop are one compiled program; any other policy (a Python ``act``), or
``loop="host"``, runs :func:`~medsim.policies.rollout.rollout` on the host, called from the compiled
splitting loop by ``jax.pure_callback`` (one call per clone batch, all replicas together). Both
give the same scores and crossing probabilities on the same increments (up to float32 rounding).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtr

from medsim.policies.noise_index import NoiseTable
from medsim.policies.protocol import Policy
from medsim.policies.risk.rare.problem import PathProblem
from medsim.population.virtual import VirtualPopulation
from medsim.simulate.types import Bound

_GOLDEN = np.uint32(0x9E3779B1)


def noise_ids(increments: np.ndarray) -> np.ndarray:
    """Stream index per row and interaction from two float32 increments: ``(B, K, 2) -> (B, K)``.

    The bits of the two draws are mixed into 32 bits (a multiplicative hash), so that rows
    sharing the draws of interaction ``k`` share its noise and rows that do not almost never do
    (a collision of two of 1e5 rows at one interaction has probability ~1e-6).
    """
    bits = np.ascontiguousarray(increments.astype(np.float32)).view(np.uint32)
    with np.errstate(over="ignore"):
        return bits[..., 0] * _GOLDEN ^ bits[..., 1]


def closed_loop_problem(
    model,
    population: VirtualPopulation,
    policy: Policy,
    *,
    bound: Bound,
    horizon: float,
    dt: float,
    seed: int,
    interactions: int,
    segments: int = 1,
    name: str | None = None,
    **rollout_options: Any,
) -> PathProblem:
    """A :class:`PathProblem` whose paths are closed-loop rollouts of virtual patients.

    Parameters
    ----------
    model : PhysiologyModel
    population : VirtualPopulation
        The virtual patients. With one, every path is that patient; with ``N``, each path's
        patient is drawn uniformly by its first increment (``Phi(xi_00)``), which every clone
        copies from its donor, so the estimate is the population mean ``mean_i p_i`` with the
        search for failures spread over patients and noise together.
    policy : Policy
        A deterministic policy (a stochastic policy's coin flips are keyed by row, not replayed).
    bound : Bound
        The safety bound whose crossing is the rare event.
    horizon, dt, seed
        As in :func:`medsim.policies.rollout.rollout`.
    interactions : int
        Most interactions per path (the rollout's ``max_interactions``).
    segments : int
        Noise segments per interaction (the compiled path function only): the problem has
        ``T = interactions * segments`` steps, each interval is advanced in ``segments`` pieces
        with their own noise, so that a clone can branch inside an interval (where a policy looks
        rarely, the path's lowest point would otherwise be copied whole and clones tie with their
        donor). The same law of the paths; other random numbers than the rollout's where > 1.
    rollout_options
        Further :func:`~medsim.policies.rollout.rollout` options (``scenario``, ``scheme``,
        ``measurement_noise``, ``target``, ``loop``; the compiled path function takes these,
        any other option runs the host rollout). A scenario must give every row the same events (e.g. a
        :class:`~medsim.policies.scenarios.MealScenario` with ``time_sd_h=0, size_cv=0``): a row's
        events must not depend on its position in the batch.

    Returns
    -------
    PathProblem
        With ``T = interactions * segments`` steps and 2 channels; for
        :func:`~medsim.policies.risk.rare.ams.ams`.

    Raises
    ------
    ValueError
        For ``segments`` other than an int >= 1, or > 1 where the host rollout must run the loop
        (a policy without an array step, ``loop="host"``, a scenario with infusions).
    """
    from medsim.policies.rollout import rollout

    n_patients = population.n_patients
    upper = bound.side == "upper"
    K = int(interactions)
    label = name or f"{policy.name}: {bound.observable} {'>' if upper else '<'} {bound.value:g}"
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"segments: expected an int >= 1, got {segments!r}")
    options = (horizon, dt, seed, K, segments, label, rollout_options)
    compiled = _compiled_problem(model, population, policy, bound, *options)
    if compiled is not None:
        return compiled
    if segments > 1:
        raise ValueError(
            f"segments={segments}: only the compiled path function splits an interval, and policy "
            f"{policy.name!r} runs on the host here (no array step, loop='host', or scenario infusions)"
        )
    log_scale = model.observable(bound.observable).bridge_scale == "log"

    def host(inc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lead = inc.shape[:-2]
        flat = np.asarray(inc).reshape(-1, K, 2)
        b = flat.shape[0]
        ids = noise_ids(flat)
        u = ndtr(flat[:, 0, 0].astype(np.float64))
        who = np.minimum((u * n_patients).astype(np.int64), n_patients - 1)

        res = rollout(
            model,
            population.take(who),
            policy,
            bounds=(bound,),
            horizon=horizon,
            dt=dt,
            seed=seed,
            n_paths_saved=0,
            chunk_size=max(b, 1),
            max_interactions=K,
            noise_index=NoiseTable(ids),  # a table: the compiled loop runs it too
            **rollout_options,
        )
        y = np.asarray(res.obs_max[bound.observable] if upper else res.obs_min[bound.observable], np.float64)
        v = float(bound.value)
        if log_scale:
            with np.errstate(divide="ignore"):
                score = np.log(y / v) if upper else np.log(v / np.maximum(y, 1e-300))
        else:
            score = (y - v) / abs(v) if upper else (v - y) / abs(v)
        score = np.where(res.mask, score, -np.inf)
        log_surv = np.where(res.mask, res.log_survival[..., 0], 0.0).sum(axis=1)
        out = np.full((b, K), -np.inf)
        out[:, : score.shape[1]] = score
        crossing = -np.expm1(log_surv)
        return out.astype(np.float32).reshape(*lead, K), crossing.astype(np.float32).reshape(lead)

    def paths(inc: jax.Array, params: Any) -> tuple[jax.Array, jax.Array]:
        shapes = (
            jax.ShapeDtypeStruct(inc.shape[:-1], jnp.float32),
            jax.ShapeDtypeStruct(inc.shape[:-2], jnp.float32),
        )
        return jax.pure_callback(host, shapes, inc, vmap_method="expand_dims")

    return PathProblem(paths, K, 2, label)


_COMPILED_OPTIONS = frozenset({"scenario", "scheme", "measurement_noise", "target", "loop"})


def runs_compiled(model, policy: Policy, *, horizon: float, **rollout_options: Any) -> bool:
    """Whether :func:`closed_loop_problem` gets the pure-JAX path function for these arguments
    (else the host rollout, which takes ``segments=1`` only): ``loop`` other than ``"host"``
    (:func:`medsim.policies.rollout_device.choose_loop`), a policy with an array step and no
    per-patient ``prepare``, a scenario of boluses, and only the options the compiled loop takes."""
    return _scenario_events(model, policy, horizon, rollout_options) is not False


def _scenario_events(model, policy, horizon, options):
    """One row's scenario events (None: no scenario) where the compiled path function applies, else False."""
    from medsim.policies.protocol import for_model
    from medsim.policies.risk.rare.closed_loop_compiled import compiled_capable
    from medsim.policies.rollout_device import choose_loop

    if choose_loop(options.get("loop", "auto"), policy) == "host" or not set(options) <= _COMPILED_OPTIONS:
        return False
    scenario = options.get("scenario")
    scen = (
        None if scenario is None else scenario.events(np.zeros(1, np.int64), float(horizon), time_unit=model.time_unit)
    )
    return scen if compiled_capable(for_model(policy, model), scen) else False


def _compiled_problem(
    model, population, policy, bound, horizon, dt, seed, K, segments, label, options
) -> PathProblem | None:
    """The problem on the pure-JAX path function, or None where the host rollout must run it."""
    from medsim.policies.protocol import for_model
    from medsim.policies.risk.rare.closed_loop_compiled import compiled_paths
    from medsim.policies.rollout_setup import _Setup
    from medsim.simulate import budget

    if population.model.name != model.name:
        raise ValueError(f"population is for model {population.model.name!r}, not {model.name!r}")
    scen = _scenario_events(model, policy, horizon, options)
    if scen is False:
        return None
    policy = for_model(policy, model)
    setup = _Setup(
        model,
        (bound,),
        horizon,
        dt,
        seed,
        options.get("scenario"),
        options.get("measurement_noise", True),
        options.get("target"),
        None,
        options.get("scheme", "milstein"),
        budget.DEFAULT_MAX_INTERACTIONS,
    )
    x0 = {k: jnp.asarray(v, jnp.float32) for k, v in population.initial_state().items()}
    theta = {k: jnp.asarray(v, jnp.float32) for k, v in population.simulation_parameters().items()}
    setup.sim.check_step(x0, theta, patients=np.arange(population.n_patients))  # as the rollout checks first
    paths, params = compiled_paths(setup, population, policy, bound, scen, seed, K, segments)
    return PathProblem(paths, K * segments, 2, label, params)
