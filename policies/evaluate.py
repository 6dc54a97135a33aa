"""Evaluate policies on virtual patients: population → rollouts (common random numbers) → risk report.

The one function behind ``medsim risk`` and ``medsim demo``; it neither prints nor writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medsim.policies.loading import build_policies
from medsim.policies.protocol import Policy, PolicyContext
from medsim.policies.result import RolloutResult, check_on_failure
from medsim.policies.risk import RiskReport, risk_report
from medsim.policies.risk.rare.followup import with_rare_followup
from medsim.policies.rollout import rollout_many
from medsim.policies.scenarios import MealScenario, Scenario
from medsim.policies.spec import SafetySpec, convert_time
from medsim.policies.streamed import DEFAULT_RECORDED, StreamedRollout, streamed_rollout
from medsim.population import PosteriorDraws, VirtualPopulation, sample_population
from medsim.simulate import budget

Progress = Callable[[float, float], None]

#: What a rollout keeps (``statistics``): ``"rows"`` every interaction of every patient; ``"stream"``
#: per-patient sums of every patient and the rows of the first ``recorded`` ones
#: (:mod:`medsim.policies.streamed`); ``"auto"`` rows unless they would exceed the memory limit.
STATISTICS: tuple[str, ...] = ("auto", "rows", "stream")


def check_statistics(statistics: str, recorded: int) -> None:
    """ValueError naming the choices for an unknown ``statistics`` or ``recorded < 1``."""
    if statistics not in STATISTICS:
        raise ValueError(f"statistics: expected one of {STATISTICS}, got {statistics!r}")
    if int(recorded) < 1:
        raise ValueError(f"recorded: expected at least 1 patient to record, got {recorded}")


def default_scenario(model, name: str, seed: int) -> Scenario | None:
    """The disturbance scenario ``name`` (``auto``, ``meals`` or ``none``) for ``model``.

    ``auto`` gives announced meals for models that declare a meal compartment (``model.meal_cmt``)
    and nothing otherwise.

    Raises
    ------
    ValueError
        For an unknown name, or meals on a model without a meal compartment.
    """
    meal_model = model.meal_cmt is not None
    if name == "none" or (name == "auto" and not meal_model):
        return None
    if name in ("meals", "auto"):
        if not meal_model:
            raise ValueError(f"scenario 'meals' needs a model with a meal compartment; {model.name!r} has none")
        return MealScenario(seed=seed, cmt=model.meal_cmt)
    raise ValueError(f"scenario must be auto, meals or none, got {name!r}")


def resolve_scenario(model, scenario: Scenario | str | None, seed: int) -> Scenario | None:
    """``scenario`` itself, or the named one of :func:`default_scenario` (``"auto"``, ``"meals"``,
    ``"none"``): where a name becomes a scenario."""
    return default_scenario(model, scenario, seed) if isinstance(scenario, str) else scenario


def sub_step(model, dt: float | None) -> float:
    """The simulator sub-step of an evaluation: ``dt``, or 1 minute in ``model.time_unit``.

    Raises
    ------
    ValueError
        If ``dt`` is not > 0.
    """
    step = float(dt) if dt is not None else convert_time(1.0, "min", model.time_unit)
    if not step > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    return step


def policy_context(
    model, spec: SafetySpec, *, draws: PosteriorDraws | None = None, dt: float | None = None, scheme: str = "milstein"
) -> PolicyContext:
    """What policies built from specs for an evaluation of ``spec`` on ``model`` are given: the
    bounds, the posterior draws, the sub-step (:func:`sub_step`) and the scheme."""
    return PolicyContext(model=model, bounds=spec.bounds, draws=draws, dt=sub_step(model, dt), scheme=scheme)


def evaluate_policies(
    draws: PosteriorDraws | None,
    policies: Sequence[Policy | str],
    spec: SafetySpec,
    *,
    n: int,
    seed: int,
    mode: str = "population",
    subject: str | None = None,
    dt: float | None = None,
    scenario: Scenario | str | None = "auto",
    patients_per_draw: int | None = None,
    support: Mapping[str, tuple[float, float]] | None = None,
    provenance: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    population: VirtualPopulation | None = None,
    scheme: str = "milstein",
    max_interactions: int | None = None,
    max_memory: int | None = None,
    client: Any = None,
    loop: str = "auto",
    on_failure: str = "stop",
    statistics: str = "auto",
    recorded: int = DEFAULT_RECORDED,
) -> tuple[RiskReport, list[RolloutResult | StreamedRollout]]:
    """Sample ``n`` virtual patients and evaluate every policy on them.

    Parameters
    ----------
    draws : PosteriorDraws or None
        Posterior (or prior) draws; ``draws.model`` is the physiology model. ``None`` together with
        ``population`` (e.g. neural-model patients): posterior-aware policies are then unavailable.
    policies : sequence of Policy or str
        The policies (objects such as ``PID(every=60.0)``), or their specs such as
        ``"tdm:target=10"``, built here for this model, bounds, draws, ``dt`` and scheme
        (:func:`policy_context`, :func:`medsim.policies.loading.build_policies`). Workers of a
        ``client`` rebuild policies from specs, so a distributed evaluation takes spec strings.
    spec : SafetySpec
        Bounds, horizon, epsilon and delta (already validated against the model).
    n, seed : int
        Number of virtual patients and the seed of everything random.
    mode, subject : str
        ``"population"`` (new patients) or ``"personalized"`` (twins of ``subject``).
    dt : float, optional
        Simulator sub-step in the model's time unit (default: 1 minute).
    scenario : Scenario, str or None
        Disturbances: a scenario (e.g. :class:`~medsim.policies.scenarios.MealScenario`), ``None``
        for none, or a name of :func:`default_scenario` (``"auto"``, ``"meals"``, ``"none"``).
    support : mapping, optional
        Ranges the fitted cohort supported (observables and treatments), for the out-of-support flag.
    provenance : mapping, optional
        Posterior file, data hash, fit diagnostics; merged into the report's provenance.
    progress : callable(done, total), optional
        Called with the fraction of policies done (``total`` = number of policies).
    population : VirtualPopulation, optional
        Evaluate on these patients instead of sampling ``n`` from ``draws``.
    scheme : str
        Simulator scheme: ``"milstein"`` (default), ``"euler"`` or ``"exponential"`` (for stiff
        first-order rates such as fast absorption; see :mod:`medsim.simulate.schemes`).
    max_interactions, max_memory : int, optional
        Limits on the work of each policy's rollout (interaction intervals per patient, bytes);
        checked before sampling and simulating (:func:`medsim.policies.rollout.rollout`).
    client : distributed.Client, optional
        Run the rollouts on this Dask cluster: patients (and with them posterior draws) are
        sharded over its workers and the results merged in order, so the report is identical to
        the one computed in this process (:mod:`medsim.policies.distribute`; needs the ``dask`` extra).
    loop : {"auto", "device", "host"}
        Where each policy's option loop runs (:func:`medsim.policies.rollout.rollout`): ``"auto"`` compiles
        it whole for policies with an array step (the built-ins) and runs the others in Python;
        the report's provenance (``settings["loop"]``) says which loop ran for each policy.
    on_failure : {"stop", "count"}
        A virtual patient the simulator cannot simulate (a non-finite or runaway state, an unusable
        option): ``"stop"`` raises the error naming it; ``"count"`` freezes it where it failed and
        counts it as violating every bound from then on in every risk estimate (the report leads
        with a warning and lists the failed patients; :mod:`medsim.policies.failures`). Recorded
        in the report's provenance (``settings["on_failure"]``).
    statistics : {"auto", "rows", "stream"}
        What each policy's rollout keeps (:data:`STATISTICS`). ``"rows"``: every interaction of
        every patient (memory grows with patients x interactions). ``"stream"``: the compiled
        loop's per-patient sums for every patient and every interaction of the first
        ``recorded`` patients (:mod:`medsim.policies.streamed`; built-in policies only, monitoring
        from time 0); the risk curves, margins, support flag, glucose metrics, AGP and fan charts
        then come from those patients and the report says so. ``"auto"``: rows, unless they would
        exceed ``max_memory`` and the policy can stream.
    recorded : int
        Patients recorded in full when streaming.

    Returns
    -------
    (RiskReport, list of RolloutResult or StreamedRollout)

    Raises
    ------
    PolicySpecError
        For a bad policy spec or an object that is not a policy;
        :class:`~medsim.policies.protocol.MissingObservableError` (a subclass) for a glucose
        controller on a model without glucose.
    DistributionError
        For policy objects with a ``client`` (workers need spec strings).
    WorkLimitError
        When the population or a rollout would exceed ``max_memory`` or ``max_interactions``.
    """
    if draws is None and population is None:
        raise ValueError("evaluate_policies needs posterior draws or a virtual population")
    check_on_failure(on_failure)
    check_statistics(statistics, recorded)
    model = population.model if population is not None else draws.model
    context = policy_context(model, spec, draws=draws, dt=dt, scheme=scheme)
    step = context.dt
    given, policies = list(policies), build_policies(policies, context=context)
    scenario = resolve_scenario(model, scenario, seed)
    for policy in policies if statistics == "stream" else ():
        why = unstreamable(model, policy, spec)
        if why is not None:
            raise ValueError(f"statistics='stream' (medsim risk: --statistics stream): {why}")
    if population is None:
        # Parameters, covariates, random effects and states of every patient, float64, a few copies.
        width = len(model.parameters) + len(model.covariates) + len(model.state_names) + 8
        budget.check_work(
            interactions=0,
            memory=4.0 * 8 * width * n,
            max_interactions=max_interactions,
            max_memory=max_memory,
            detail=f"{n} virtual patients of {model.name}",
            memory_option="max_memory (medsim risk: --max-memory)",
        )
        population = sample_population(
            draws, n, mode=mode, subject=subject, seed=seed, patients_per_draw=patients_per_draw
        )
    if client is not None:
        results = _on_cluster(
            client, draws, population, given, policies, spec, dt=step, seed=seed, scenario=scenario, support=support,
            scheme=scheme, max_interactions=max_interactions, max_memory=max_memory, progress=progress, loop=loop,
            on_failure=on_failure, statistics=statistics, recorded=recorded,
        )  # fmt: skip
    else:
        results = run_policies(
            population,
            policies,
            spec,
            dt=step,
            seed=seed,
            scenario=scenario,
            support=support,
            scheme=scheme,
            max_interactions=max_interactions,
            max_memory=max_memory,
            progress=progress,
            loop=loop,
            on_failure=on_failure,
            statistics=statistics,
            recorded=recorded,
        )
    full = {
        **dict(provenance or {}),
        "seed": seed,
        "model": {"name": model.name, "version": model.version},
        "population": f"{mode}{'' if subject is None else ' ' + subject}, n={population.n_patients}",
        "dt": f"{step:g} {model.time_unit}",
        "scheme": scheme,
        "loop": "; ".join(f"{r.policy}: {r.provenance.get('loop', 'host')}" for r in results),
        "on_failure": on_failure,
        "statistics": "; ".join(f"{r.policy}: {r.provenance.get('statistics', 'rows')}" for r in results),
    }
    report = risk_report(list(results), spec, provenance=full, model=model)
    # Closed-loop splitting where the plain estimate saw too few violations (spec key rare=).
    report = with_rare_followup(
        report,
        results,
        policies,
        population,
        dt=step,
        seed=seed,
        scenario=scenario,
        scheme=scheme,
    )
    return report, list(results)


def run_policies(
    population: VirtualPopulation,
    policies: Sequence[Policy],
    spec: SafetySpec,
    *,
    dt: float,
    seed: int,
    scenario: Scenario | str | None = "auto",
    support: Mapping[str, tuple[float, float]] | None = None,
    scheme: str = "milstein",
    max_interactions: int | None = None,
    max_memory: int | None = None,
    progress: Progress | None = None,
    first_patient: int = 0,
    chunk_size: int | None = None,
    pad_to: int | None = None,
    loop: str = "auto",
    on_failure: str = "stop",
    statistics: str = "rows",
    recorded: int = DEFAULT_RECORDED,
) -> list[RolloutResult | StreamedRollout]:
    """The closed loop of every policy on ``population`` (common random numbers), no report.

    What :func:`evaluate_policies` runs in this process, and each Dask worker on its shard of
    patients (``first_patient``, ``chunk_size`` and ``pad_to`` as in
    :func:`medsim.policies.rollout.rollout`). ``scenario``, ``statistics`` and ``recorded`` as in
    :func:`evaluate_policies`. ``progress(done, total)`` gets the fraction of policies done.
    ``on_failure`` as in :func:`evaluate_policies`.
    """
    check_statistics(statistics, recorded)
    model = population.model
    scenario = resolve_scenario(model, scenario, seed)
    chunking = {} if chunk_size is None else {"chunk_size": int(chunk_size)}
    options = dict(
        bounds=spec.bounds,
        horizon=spec.horizon,
        dt=dt,
        seed=seed,
        scenario=scenario,
        target=spec.target,
        scheme=scheme,
        max_interactions=max_interactions,
        max_memory=max_memory,
        on_failure=on_failure,
        support=dict(support) if support else None,
    )
    out: list[RolloutResult | StreamedRollout] = []
    for i, policy in enumerate(policies):

        def each(done: float, total: float, i: int = i) -> None:
            if progress is not None:
                progress(i + (done / total if total > 0 else 1.0), float(len(policies)))

        def streamed(policy: Policy = policy, each: Progress = each) -> StreamedRollout:
            return streamed_rollout(model, population, policy, **options, recorded=recorded, progress=each)

        if statistics == "stream":
            out.append(streamed())
            continue
        try:
            out.append(
                rollout_many(
                    model,
                    population,
                    [policy],
                    **options,
                    progress=each,
                    first_patient=first_patient,
                    pad_to=pad_to,
                    loop=loop,
                    **chunking,
                )[0]
            )
        except budget.WorkLimitError as err:
            if statistics == "rows":
                raise
            stream_instead(err, model, policy, spec)
            out.append(streamed())
    return out


def stream_instead(refusal: budget.WorkLimitError, model, policy: Policy, spec: SafetySpec) -> None:
    """``statistics="auto"``: return when ``policy`` can stream per-patient sums instead of the rows
    ``refusal`` refused; otherwise raise ``refusal`` (a limit other than memory), or a
    :class:`~medsim.simulate.budget.WorkLimitError` that adds why it cannot stream."""
    if refusal.what != "memory":
        raise refusal
    why = unstreamable(model, policy, spec)
    if why is not None:
        raise budget.WorkLimitError(
            f"{refusal}; keeping per-patient sums instead (statistics='stream') is not possible here: {why}",
            what=refusal.what,
            estimate=refusal.estimate,
            limit=refusal.limit,
        ) from None


def unstreamable(model, policy: Policy, spec: SafetySpec) -> str | None:
    """Why ``policy`` cannot be evaluated on per-patient sums (None when it can): a policy without
    an array step (the compiled loop reduces the sums), or a spec that monitors from a later time."""
    from medsim.policies.protocol import for_model
    from medsim.policies.rollout_device import choose_loop

    if spec.monitor_from > 0:
        return (
            f"the spec monitors from {spec.monitor_from:g} {spec.time_unit or model.time_unit} on, but streamed "
            "statistics cover the whole horizon; record every interaction (statistics='rows') for a monitoring window"
        )
    try:
        choose_loop("device", for_model(policy, model))
    except ValueError as err:
        return str(err)
    return None


def _on_cluster(
    client, draws, population, given, policies, spec, *, dt, seed, scenario, support, scheme, max_interactions,
    max_memory, progress, loop, on_failure, statistics, recorded,
) -> list[RolloutResult | StreamedRollout]:  # fmt: skip
    """:func:`run_policies` of ``population`` sharded over ``client``'s workers: recorded rollouts
    merged from the workers' rows, or streamed rollouts from their per-patient sums (the first
    ``recorded`` patients recorded here), as ``statistics`` decides for the whole population."""
    from medsim.policies.distribute import rollouts_on_cluster, streams_on_cluster
    from medsim.policies.protocol import for_model
    from medsim.policies.rollout_device import choose_loop
    from medsim.policies.streamed import rows_refusal

    model = population.model
    support = dict(support) if support else None
    options = dict(bounds=spec.bounds, horizon=spec.horizon, dt=dt, seed=seed, scenario=scenario, scheme=scheme)
    options |= dict(max_interactions=max_interactions)
    kinds = []
    for policy in policies:
        kind = "rows" if statistics != "stream" else "stream"
        if statistics == "auto":
            # Decided here for the whole population: a worker checks only its shard.
            refusal = rows_refusal(model, population, policy, **options, target=spec.target, max_memory=max_memory)
            if refusal is not None:
                stream_instead(refusal, model, policy, spec)
                kind = "stream"
        kinds.append(kind)
    out: list[RolloutResult | StreamedRollout | None] = [None] * len(policies)
    total = float(len(policies))
    rows = [i for i, k in enumerate(kinds) if k == "rows"]
    if rows:
        # Decided here for the whole population, as one process would: a worker's shard is smaller,
        # and "auto" there could pick another loop than the one-process run.
        loops = [choose_loop(loop, for_model(policies[i], model), population.n_patients) for i in rows]
        merged = rollouts_on_cluster(
            client, draws, population, [given[i] for i in rows], spec, dt=dt, seed=seed, scenario=scenario,
            support=support, scheme=scheme, max_interactions=max_interactions, max_memory=max_memory,
            progress=None if progress is None else lambda done, _: progress(done, total), loops=loops,
            on_failure=on_failure,
        )  # fmt: skip
        for i, result in zip(rows, merged, strict=True):
            out[i] = result
    streamed = [i for i, k in enumerate(kinds) if k == "stream"]
    if streamed:
        sums = streams_on_cluster(
            client, draws, population, [given[i] for i in streamed], spec, dt=dt, seed=seed, scenario=scenario,
            scheme=scheme, max_interactions=max_interactions, on_failure=on_failure,
            progress=None if progress is None else lambda done, _: progress(len(rows) + done, total),
        )  # fmt: skip
        for i, s in zip(streamed, sums, strict=True):
            out[i] = streamed_rollout(
                model, population, policies[i], **options, target=spec.target, support=support,
                max_memory=max_memory, recorded=recorded, on_failure=on_failure, sums=s,
            )  # fmt: skip
    return out
