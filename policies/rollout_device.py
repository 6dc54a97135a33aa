"""The rollout's compiled chunk: which loop runs, and the compiled loop's chunk as a RolloutResult.

:func:`medsim.policies.rollout.rollout` runs each chunk either in its Python option loop or, for policies
with an ``array_step``, in the compiled loop of :mod:`medsim.policies.device_loop`; this module is the
glue between the two (the same checks, limits, progress and result assembly as the host loop).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import jax
import numpy as np

from medsim.policies import device_loop
from medsim.policies.protocol import Policy, for_model
from medsim.policies.result import RolloutResult
from medsim.policies.rollout_assemble import assemble, scenario_totals, support_fraction
from medsim.population.virtual import VirtualPopulation
from medsim.simulate.plan import bucket_batch
from medsim.transfer import to_device

LOOPS = ("auto", "device", "host")

# "auto" compiles the loop from this many patients on. Compiling costs seconds per policy
# configuration (the policy's parameters are constants of the program); below this size the
# Python loop usually finishes sooner (measured in benchmarks/README.md, "Closed loop").
AUTO_MIN_PATIENTS = 4096

# Most patients per compiled chunk of streaming_rollout (its memory is O(chunk x bounds)).
STREAMING_CHUNK = 65536


def choose_loop(loop: str, policy: Policy, n_patients: int | None = None, noise_index: object = None) -> str:
    """``"device"`` or ``"host"`` for ``loop`` in :data:`LOOPS` (``"auto"``: the compiled loop when
    the policy has an array step and there are at least :data:`AUTO_MIN_PATIENTS` patients, or
    ``n_patients`` is not given). A ``noise_index`` other than a
    :class:`~medsim.policies.noise_index.NoiseTable` (a Python function) runs on the host only.

    Raises
    ------
    ValueError
        For an unknown ``loop``, or ``"device"`` with a policy that has no array step or a
        ``noise_index`` that is not a table.
    """
    from medsim.policies.noise_index import NoiseTable

    if loop not in LOOPS:
        raise ValueError(f"loop: expected one of {LOOPS}, got {loop!r}")
    capable = device_loop.supports_device(policy)
    if loop == "device" and not capable:
        raise ValueError(
            f"loop='device': policy {policy.name!r} has no array step (array_step(state, obs, xp)); "
            "use loop='host' or 'auto'"
        )
    tabled = noise_index is None or isinstance(noise_index, NoiseTable)
    if loop == "device" and not tabled:
        raise ValueError(
            "loop='device' takes noise_index as a NoiseTable (medsim.policies.noise_index), not a "
            "Python function; use loop='host' (or 'auto')"
        )
    if loop == "auto" and n_patients is not None and n_patients < AUTO_MIN_PATIENTS:
        return "host"
    return "device" if loop != "host" and capable and tabled else "host"


class _Hooks:
    """The host loop's limits and progress, called by the compiled loop between blocks."""

    def __init__(self, setup, policy, scen, n_real, progress, done):
        self.setup, self.policy, self.scen, self.n_real = setup, policy, scen, n_real
        self._progress, self._done = progress, done

    def check_work(self, interval: float) -> None:
        from medsim.policies.rollout_setup import check_first_interval

        check_first_interval(self.setup, self.policy, interval, self.scen)

    def check_interactions(self, done: int) -> None:
        from medsim.policies.rollout_setup import check_interaction_count

        check_interaction_count(self.setup, self.policy, done)

    def progress(self, t: np.ndarray) -> None:
        if self._progress is not None:
            self._progress(*self._done(float(np.sum(t[: self.n_real]))))


def check_first_option(setup, pop: VirtualPopulation, policy: Policy, patient, x, theta, scen) -> None:
    """:func:`check_first_interval` from the policy's first option, computed as the loops do at
    time 0 (a loop that compiles first checks the work before compiling)."""
    from medsim.policies.protocol import Observation
    from medsim.policies.rollout_setup import _measure, check_first_interval
    from medsim.policies.scenarios import announced_at
    from medsim.population.streams import Stream

    n = pop.n_patients
    true = {o: np.broadcast_to(np.asarray(v, np.float64), (n,)) for o, v in setup.observe(x, theta).items()}
    active = np.ones(n, bool)
    t, k = np.zeros(n), np.zeros(n, np.int64)
    announced = {}
    if scen is not None and setup.scenario.announced:
        announced = announced_at(scen, t, setup.tol)
    obs = Observation(
        time=t,
        measured=_measure(setup, pop, true, patient, k, active),
        announced=announced,
        covariates={c: np.asarray(v, np.float64) for c, v in pop.covariates.items()},
        active=active,
        patient=patient,
        index=k,
        subject=np.asarray(pop.subject),
        time_unit=setup.model.time_unit,
        horizon=setup.horizon,
    )
    policy_seed = int(np.random.SeedSequence([setup.seed, int(Stream.POLICY)]).generate_state(1)[0])
    _, option = policy.act(policy.init(n, seed=policy_seed), obs, rng=np.random.default_rng(0))
    option = option.validated(n, setup.model, active, policy.name)
    check_first_interval(setup, policy, float(np.min(option.interval, initial=np.inf)), scen)


def device_chunk(
    setup,
    pop: VirtualPopulation,
    policy: Policy,
    offset: int,
    n_real: int,
    n_paths: int,
    save_every: int | None,
    progress,
    done: float,
    total: float,
    *,
    host: Callable[..., RolloutResult],
) -> RolloutResult:
    """One chunk in the compiled loop, as :func:`medsim.policies.host_loop.run_chunk` would return it.

    ``host`` is the host loop's chunk function: with ``on_failure="stop"`` it re-runs a chunk in
    which the compiled loop flagged something to refuse (so the error names the patient), and it
    simulates the first ``n_paths`` patients again to save their paths (counter-based streams make
    them the same patients with the same noise; with ``on_failure="count"`` frozen where the
    compiled loop froze them).
    """
    from medsim.policies.rollout_setup import chunk_scenario

    n = pop.n_patients
    patient = offset + np.arange(n, dtype=np.int64)
    theta = {k: to_device(v, np.float32) for k, v in pop.simulation_parameters().items()}
    x = {k: to_device(v, np.float32) for k, v in pop.initial_state().items()}
    scen = chunk_scenario(setup, policy, patient, x, theta)
    if not device_loop.device_capable(setup, scen):
        return host(setup, pop, policy, offset, n_real, n_paths, save_every, progress, done, total)
    check_first_option(setup, pop, policy, patient, x, theta, scen)  # before compiling the loop
    hooks = _Hooks(setup, policy, scen, n_real, progress, lambda t: (done + t, total))
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The saved paths' host loop needs nothing from the compiled loop: it runs beside it (its
        # tracing is Python work, the compiled loop's run is not), and is used only if nothing
        # was flagged, so errors are those of the compiled loop and of the host loop after it.
        paths = pool.submit(_saved_paths, setup, pop, policy, offset, n_paths, save_every, total, host)
        rows, outside_target, _, failures, trace = device_loop.run_chunk(
            setup, pop, policy, offset, n_real, scen, True, hooks
        )
        count = setup.on_failure == "count"
        if failures.any and not count:
            paths.exception()  # wait; whatever the paths' loop met, the whole chunk's host loop names it
            return host(setup, pop, policy, offset, n_real, n_paths, save_every, progress, done, total)
        saved = paths.result()
    rows = [
        row._replace(
            out_of_support=support_fraction(setup, row.out_of_support, row.treatment, row.t_end - row.t_start, row.mask)
        )
        for row in rows
    ]
    real = pop.take(slice(0, n_real))
    trace = {o: v[:n_real] for o, v in trace.items()}
    result = assemble(
        setup,
        real,
        policy,
        rows,
        outside_target[:n_real],
        [],
        n_real,
        scenario_events=scen,
        trace=trace,
        failures=failures.take(n_real) if count else None,
    )
    if saved is not None:
        result = replace(result, path_time=saved.path_time, path=saved.path)
    return result


def _saved_paths(setup, pop, policy, offset, n_paths, save_every, total, host) -> RolloutResult | None:
    """The first ``n_paths`` patients of a chunk in the host loop, saving their paths (None for 0).

    Padded with inactive copies of the last patient to a power of two: a width the simulator takes
    as it is (no slicing and padding programs) and the one the random streams draw at.
    """
    if n_paths <= 0:
        return None
    width = min(pop.n_patients, 1 << max(3, (n_paths - 1).bit_length()))
    first = pop.take(np.minimum(np.arange(width), n_paths - 1))
    return host(setup, first, policy, offset, n_paths, n_paths, save_every, None, 0.0, total)


def streaming_width(n: int, chunk_size: int = STREAMING_CHUNK, n_devices: int | None = None) -> int:
    """Patients per compiled chunk of :func:`streaming_rollout` for ``n`` patients on ``n_devices``
    local devices (default: this process's): each device's share bucketed as the simulator buckets
    batches (at most 25 % padding, few shapes), at most ``chunk_size``."""
    devices = len(jax.local_devices()) if n_devices is None else int(n_devices)
    return bucket_batch(-(-int(n) // devices), int(chunk_size))


class _Quiet:
    """Hooks without progress (limits only)."""

    def __init__(self, setup, policy, scen):
        self._hooks = _Hooks(setup, policy, scen, 0, None, None)

    def check_work(self, interval: float) -> None:
        self._hooks.check_work(interval)

    def check_interactions(self, done: int) -> None:
        self._hooks.check_interactions(done)

    def progress(self, t: np.ndarray) -> None:
        return None


def streaming_rollout(
    model,
    population: VirtualPopulation,
    policy: Policy,
    *,
    bounds,
    horizon: float,
    dt: float,
    seed: int,
    scenario=None,
    measurement_noise: bool = True,
    target=None,
    scheme: str = "milstein",
    max_interactions: int | None = None,
    chunk_size: int = STREAMING_CHUNK,
    on_failure: str = "stop",
    first_patient: int = 0,
    pad_to: int | None = None,
    progress=None,
):
    """Per-patient :class:`~medsim.policies.streaming.StreamingSums` of ``policy`` on ``population``,
    reduced inside the compiled loop: memory ``O(N J)`` whatever the number of interactions.

    Arguments as for :func:`medsim.policies.rollout.rollout`; the sums are those of the rollout on the
    same seed (:func:`medsim.policies.streaming.sums_events` gives its
    :class:`~medsim.policies.risk.events.PatientEvents`).

    ``on_failure`` as for :func:`~medsim.policies.rollout.rollout`: with ``"count"`` the sums of a
    patient the simulator refuses stop where its refused interval started, and the sums'
    ``failed_time`` / ``failure_reason`` record it. ``progress(done, total)``, optional, is called
    with the share of patients done as each chunk finishes.

    Chunks of :func:`streaming_width` patients (at most ``chunk_size``) go round-robin to the local
    devices; ``first_patient`` and ``pad_to`` make ``population`` a shard of a larger one
    (:func:`medsim.policies.distribute.streams_on_cluster`): patient ``i`` draws from the streams
    of patient ``first_patient + i``, and every chunk holds ``pad_to`` patients (the last one
    padded), the whole population's width, so the shard runs the whole population's compiled
    programs and its sums equal, bit for bit, the whole population's rows
    ``first_patient, first_patient + 1, ...``.

    Raises
    ------
    ValueError
        For a policy without an array step, a scenario with infusions, ``chunk_size`` or ``pad_to``
        below 1, or a negative ``first_patient``.
    """
    from medsim.policies.failures import check_on_failure
    from medsim.policies.rollout_setup import _Setup, chunk_scenario
    from medsim.simulate import budget

    choose_loop("device", policy)
    if int(chunk_size) < 1 or (pad_to is not None and int(pad_to) < 1):
        raise ValueError(f"chunk_size and pad_to must be >= 1, got {chunk_size} and {pad_to}")
    if int(first_patient) < 0:
        raise ValueError(f"first_patient must be >= 0, got {first_patient}")
    policy = for_model(policy, model)  # model defaults (e.g. the glucose observable) from the model
    limit = budget.DEFAULT_MAX_INTERACTIONS if max_interactions is None else int(max_interactions)
    setup = _Setup(model, bounds, horizon, dt, seed, scenario, measurement_noise, target, None, scheme, limit)
    n = population.n_patients
    setup.n_total, setup.streaming = n, True
    setup.on_failure = check_on_failure(on_failure)
    devices = jax.local_devices()
    # Chunks go round-robin to the local devices (e.g. one CPU device per core), one thread each.
    width = streaming_width(n, chunk_size, len(devices)) if pad_to is None else int(pad_to)

    def run(offset: int):
        from medsim.policies.failures import hinted
        from medsim.policies.host_loop import run_chunk as host_chunk

        with jax.default_device(devices[(offset // width) % len(devices)]):
            n_real = min(width, n - offset)
            chunk = population.take(np.minimum(np.arange(offset, offset + width), n - 1))
            first = int(first_patient) + offset  # global index: a shard's patients keep their streams
            patient = first + np.arange(width, dtype=np.int64)
            theta = {k: to_device(v, np.float32) for k, v in chunk.simulation_parameters().items()}
            x = {k: to_device(v, np.float32) for k, v in chunk.initial_state().items()}
            scen = chunk_scenario(setup, policy, patient, x, theta)
            if not device_loop.device_capable(setup, scen):
                raise ValueError("streaming_rollout: the compiled loop takes scenarios of boluses only")
            check_first_option(setup, chunk, policy, patient, x, theta, scen)
            hooks = _Quiet(setup, policy, scen)
            run_chunk = device_loop.run_chunk
            _, target, sums, failures, _ = run_chunk(setup, chunk, policy, first, n_real, scen, False, hooks)
            if failures.any and setup.on_failure == "stop":  # the host loop names the patient and what went wrong
                with hinted():
                    host_chunk(setup, chunk, policy, first, n_real, 0, None, None, 0.0, 1.0)
            given = scenario_totals(scen, setup.horizon, width)
            scenario_dose = np.stack([given.get(c, np.zeros(width)) for c in setup.cmts], axis=1)
            failed = dict(failed_time=failures.time, failure_reason=failures.reason)
            sums = sums._replace(**failed, outside_target=target, scenario_dose=scenario_dose)
            done.append(n_real)
            if progress is not None:
                progress(sum(done) / n, 1.0)
            return jax.tree_util.tree_map(lambda a: a[:n_real], sums)

    offsets, done = range(0, n, width), []
    if len(devices) == 1 or len(offsets) == 1:
        parts = [run(offset) for offset in offsets]
    else:
        with ThreadPoolExecutor(max_workers=len(devices)) as pool:
            parts = list(pool.map(run, offsets))
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)
