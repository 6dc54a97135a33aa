"""The closed-loop rollout: virtual patients under a policy, simulated between interactions.

The option loop of ``docs/architecture.md``, for one chunk of patients at a time::

    x = initial state of each patient;  t = 0
    for k = 0, 1, ...  (while some patient is before the horizon)
        y_k      = observe(x) + residual error   (only where the previous option asked to measure)
        option_k = policy.act(state, Observation(t, y_k, announced meals, covariates, ...))
        t1       = min(t + option.interval, next announced disturbance, horizon)
        x, stats = simulator.advance(x, [t, t1), boluses at t, rates over [t, t1), disturbances)
        record stats_k

The Python loop runs once per interaction; each ``advance`` is one compiled call over the whole
chunk, and patients that reached the horizon get ``t1 = t`` (a no-op). Each patient keeps its
own clock: interactions are not synchronised across patients.

Random numbers are per patient and counter-based (:mod:`medsim.population.streams`): the
process noise of interaction ``k`` of patient ``i`` is keyed by ``(seed, PROCESS, i, k)``, its
measurement noise by ``(seed, MEASUREMENT, i, k)``. Results therefore do not depend on
``chunk_size``, and policies evaluated with the same seed on the same population share
parameters, initial states, scenario and the noise of their ``k``-th interaction (common random
numbers). Process noise is indexed by interaction, not by absolute time: once two policies'
schedules diverge their Brownian paths differ.

Before the first sub-step each chunk is checked: the work (interactions from the horizon and the
first interval the policy asks for, memory of the per-interaction statistics) against
``max_interactions`` / ``max_memory`` (:mod:`medsim.simulate.budget`), and ``dt`` against the
scheme's stability limit for these patients (:mod:`medsim.simulate.stability`). Every interval's
result is checked by the simulator (finite, inside the states' physical ranges) and every
observation by the same :func:`medsim.simulate.checks.check_finite`, so no NaN or blown-up
patient reaches the risk estimates: with ``on_failure="stop"`` the rollout raises naming the
patient; with ``"count"`` the patient is frozen where the refused interval started (the interval
is simulated again without it) and recorded as failed (:mod:`medsim.policies.failures`).

Efficacy and support are measured with extra bounds handed to the simulator (its exact
trapezoid time-outside on the sub-step grid): the target range ``lo <= y <= hi`` becomes
``y >= lo`` and ``y <= hi``; each support range likewise. They are not part of the result's
``bounds``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.policies.failures import check_on_failure, hinted
from medsim.policies.host_loop import Progress, run_chunk
from medsim.policies.paths import join_paths
from medsim.policies.protocol import Policy, for_model
from medsim.policies.result import RolloutResult
from medsim.policies.rollout_assemble import merge_all
from medsim.policies.rollout_setup import _Setup
from medsim.policies.scenarios import Scenario
from medsim.population.virtual import VirtualPopulation
from medsim.simulate import budget
from medsim.simulate.types import Bound

NoiseIndex = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _rollout(
    setup: _Setup,
    population: VirtualPopulation,
    policy: Policy,
    *,
    chunk_size: int,
    n_paths_saved: int,
    progress: Progress | None,
    path_points: int = 400,
    first_patient: int = 0,
    pad_to: int | None = None,
    loop: str = "auto",
) -> RolloutResult:
    from medsim.policies.rollout_device import choose_loop, device_chunk

    which = choose_loop(loop, policy, population.n_patients, setup.noise_index)
    run = run_chunk if which == "host" else partial(device_chunk, host=run_chunk)
    n = population.n_patients
    setup.n_total = n
    total = float(n) * setup.horizon
    # Save about `path_points` points per path over the horizon (in simulator sub-steps).
    save_every = max(1, round(setup.horizon / (path_points * setup.sim.dt))) if n_paths_saved > 0 else None
    # Chunks have a bucketed width (a power of two, at most chunk_size); the last one is padded.
    step = min(int(chunk_size), 1 << max(3, (n - 1).bit_length()))
    width = max(step, int(pad_to or 0))
    parts = []
    for offset in range(0, n, step):
        n_real = min(step, n - offset)
        chunk = population.take(np.minimum(np.arange(offset, offset + width), n - 1))
        first = first_patient + offset  # global index: a shard's patients keep their random streams
        n_paths = int(np.clip(n_paths_saved - first, 0, n_real))
        done = float(offset) * setup.horizon
        with hinted(setup.on_failure == "stop"):  # say how to count such patients instead
            parts.append(run(setup, chunk, policy, first, n_real, n_paths, save_every, progress, done, total))
    result = merge_all(parts)
    path_time, path = join_paths(parts)
    from medsim import __version__

    provenance = {
        "model": setup.model.name,
        "model_version": setup.model.version,
        "population": dict(population.provenance),
        "population_seed": population.seed,
        "dt": float(setup.sim.dt),
        "scheme": str(getattr(setup.sim, "scheme", "")),
        "measurement_noise": setup.noise,
        "target_range": setup.target,
        "support": setup.support,
        "scenario": repr(setup.scenario),
        "loop": which,
        "on_failure": setup.on_failure,
        "medsim_version": __version__,
    }
    return replace(result, path_time=path_time, path=path, provenance=provenance)


def rollout(
    model: PhysiologyModel,
    population: VirtualPopulation,
    policy: Policy,
    *,
    bounds: Sequence[Bound],
    horizon: float,
    dt: float,
    seed: int,
    scenario: Scenario | None = None,
    measurement_noise: bool = True,
    n_paths_saved: int = 50,
    chunk_size: int = 8192,
    progress: Progress | None = None,
    support: Mapping[str, tuple[float, float]] | None = None,
    target: Any = None,
    scheme: str = "milstein",
    max_interactions: int | None = None,
    max_memory: int | None = None,
    first_patient: int = 0,
    pad_to: int | None = None,
    noise_index: NoiseIndex | None = None,
    loop: str = "auto",
    on_failure: str = "stop",
) -> RolloutResult:
    """Simulate ``population`` under ``policy`` up to ``horizon`` (see the module docstring).

    Parameters
    ----------
    model : PhysiologyModel
        The population's model.
    population : VirtualPopulation
        ``N`` virtual patients.
    policy : Policy
    bounds : sequence of Bound
        Safety bounds to monitor (``J``); the result's per-bound arrays follow this order.
    horizon : float
        Simulated period (model time unit), starting at 0.
    dt : float
        Simulator sub-step (model time unit).
    seed : int
        Seed of every random number (process and measurement noise, policy coin flips).
    scenario : Scenario, optional
        Disturbances (e.g. :class:`~medsim.policies.scenarios.MealScenario`).
    measurement_noise : bool
        Add residual error (each patient's draw of the residual parameters) to measurements.
    n_paths_saved : int
        Observables of the first this many patients are saved on a grid of about 400 points
        over the horizon (fan charts); consecutive intervals repeat their shared end point.
    chunk_size : int
        Patients simulated together; memory grows with it, results do not depend on it.
    progress : callable(done, total), optional
        Called after each interaction with the simulated patient-time done and in total.
    support : mapping key -> (low, high), optional
        Ranges seen in the fitted cohort for observables (by name) and treatments
        (``"bolus_cmt1"``, ``"rate_cmt1"``). ``out_of_support[n, k]`` is the fraction of the
        interval during which an observable lay outside its range (the simulator's grid
        time-outside; the largest fraction over observables, a lower bound on their union), set
        to 1 where the interval's treatment was outside its range (a bolus given outside it, or
        a rate outside it).
    target : (observable, low, high) or TargetRange, optional
        Efficacy range (default :func:`target_range`); gives ``time_in_range``,
        ``time_below_range`` and ``time_above_range`` (fractions of the horizon) in ``efficacy``,
        next to ``total_dose_cmt<c>``.
    scheme : str
        Simulator scheme (``"milstein"``, ``"euler"`` or ``"exponential"``).
    max_interactions : int, optional
        Most interaction intervals per patient (default
        :data:`medsim.simulate.budget.DEFAULT_MAX_INTERACTIONS`). Checked before simulating
        (the horizon divided by the first interval the policy asks for, or the number of announced
        scenario events) and during the run (a policy that never reaches the horizon).
    max_memory : int, optional
        Most bytes the rollout may plan to keep (per-interaction statistics of every patient);
        default :func:`medsim.simulate.budget.default_max_memory`.
    first_patient : int
        Index of ``population``'s first patient in a larger population this one is a shard of
        (:mod:`medsim.policies.distribute`): patient ``i`` draws from the streams of patient
        ``first_patient + i``, its chunks start where the whole population's would, and only the
        saved paths of the first ``n_paths_saved`` patients of the whole population are kept,
        so merging the shards' results in order gives the whole population's result.
    pad_to : int, optional
        Compiled width of every chunk (default: the population's own, a power of two up to
        ``chunk_size``). The last, shorter shard of a population pads to the width of the others,
        so that every worker runs the same compiled programs.
    noise_index : callable(patient, k) -> (n,) int, optional
        The index whose counter-based streams give the process and measurement noise of each
        patient's ``k``-th interaction (default: the patient's own index). Rare-event splitting
        (:mod:`medsim.policies.risk.rare.closed_loop`) uses it to replay a path's noise up to an
        interaction and draw fresh noise after it. Indices must lie in ``[0, 2**32)``. The
        compiled loop takes it as a :class:`~medsim.policies.noise_index.NoiseTable` (any other
        callable runs in the host loop).
    loop : {"auto", "device", "host"}
        Where the option loop runs: ``"device"`` compiles it whole (:mod:`medsim.policies.device_loop`,
        for policies with an ``array_step``: the built-ins), ``"host"`` runs it in Python around
        one compiled ``advance`` per interaction (any policy). ``"auto"`` picks the compiled loop
        when the policy supports it and the population is large enough for the compilation to pay
        (:data:`medsim.policies.rollout_device.AUTO_MIN_PATIENTS`), and ``noise_index`` is None or
        a :class:`~medsim.policies.noise_index.NoiseTable` (glucose traces are recorded by both
        loops). Both give the same numbers on the same
        seed; the result's ``provenance["loop"]`` says which ran.
    on_failure : {"stop", "count"}
        What a patient the simulator refuses does to the rollout (:mod:`medsim.policies.failures`):
        ``"stop"`` raises the error naming it; ``"count"`` freezes it where the refused interval
        started and records it in ``failed_time`` / ``failure_reason`` (risk estimates count it as
        violating every bound from then on). Recorded in ``provenance["on_failure"]``.

    Returns
    -------
    RolloutResult

    Raises
    ------
    PolicyError
        If the policy returns an unusable option (naming the field and patient).
    MissingObservableError
        For a built-in glucose controller without ``observable=`` on a model without glucose
        (:mod:`medsim.policies.builtin.glucose_controller`).
    ValueError
        On inconsistent arguments (wrong model, bad support keys, non-positive horizon).
    WorkLimitError
        When the planned interactions or memory exceed ``max_interactions`` / ``max_memory``
        (before simulating; the message gives the estimate and how to raise the limit).
    UnstableStepError
        When ``dt`` is beyond the scheme's stability limit for some patient (before simulating).
    NonFiniteStateError, RunawayStateError
        When a simulated value is not finite or a state leaves its physical range, naming the
        patient, its parameters and the time (``on_failure="stop"``).
    """
    if population.model.name != model.name:
        raise ValueError(f"population is for model {population.model.name!r}, not {model.name!r}")
    if not (math.isfinite(horizon) and horizon > 0):
        raise ValueError(f"horizon must be finite and > 0, got {horizon}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if int(first_patient) < 0:
        raise ValueError(f"first_patient must be >= 0, got {first_patient}")
    limit = budget.DEFAULT_MAX_INTERACTIONS if max_interactions is None else int(max_interactions)
    if limit < 1:
        raise ValueError(f"max_interactions must be >= 1, got {max_interactions}")
    policy = for_model(policy, model)  # model defaults (e.g. the glucose observable) from the model
    setup = _Setup(
        model, bounds, horizon, dt, seed, scenario, measurement_noise, target, support, scheme, limit, max_memory
    )
    setup.noise_index = noise_index
    setup.on_failure = check_on_failure(on_failure)
    return _rollout(
        setup,
        population,
        policy,
        chunk_size=int(chunk_size),
        n_paths_saved=n_paths_saved,
        progress=progress,
        first_patient=int(first_patient),
        pad_to=pad_to,
        loop=loop,
    )


def rollout_many(
    model: PhysiologyModel, population: VirtualPopulation, policies: Sequence[Policy], **options: Any
) -> list[RolloutResult]:
    """Evaluate several policies on the same virtual patients with common random numbers.

    ``options`` are :func:`rollout`'s keyword arguments; the compiled simulator is shared (see
    :func:`compiled_simulator`). Every policy sees the same parameters, initial states, scenario
    and per-patient noise at its ``k``-th interaction, so differences between policies are not
    swamped by Monte Carlo noise (common random numbers, Glasserman 2003, *Monte Carlo Methods in
    Financial Engineering*, §4.2).

    Returns
    -------
    list of RolloutResult
        In the order of ``policies``.
    """
    if not policies:
        raise ValueError("rollout_many needs at least one policy")
    return [rollout(model, population, p, **options) for p in policies]
