"""The option loop in Python, one chunk of patients at a time (the host loop).

The loop of :mod:`medsim.policies.rollout`'s docstring as written there: one compiled
:meth:`medsim.simulate.Simulator.advance` per interaction over the whole chunk, the policy's ``act``
called on the host, every interaction recorded as rows. It takes any policy; policies with an
array step can run the same loop compiled whole (:mod:`medsim.policies.device_loop`), with the
same numbers on the same seed. :mod:`medsim.policies.rollout` chooses the loop and assembles
the chunks.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from medsim.policies.failures import Failures, empty_row, refused_patient, stand_in, unusable
from medsim.policies.interaction import Interaction
from medsim.policies.protocol import Observation, Policy
from medsim.policies.result import NON_FINITE, PER_BOUND, UNUSABLE_OPTION, RolloutResult
from medsim.policies.rollout_assemble import assemble, support_fraction
from medsim.policies.rollout_setup import (
    _dose_events,
    _measure,
    _Setup,
    check_first_interval,
    check_interaction_count,
    chunk_scenario,
)
from medsim.policies.scenarios import announced_at, next_event_after
from medsim.policies.traces import empty_trace, host_window, interval_buffer, record, trace_spec
from medsim.population.streams import Stream, patient_keys
from medsim.population.virtual import VirtualPopulation
from medsim.simulate.checks import SimulationError, check_finite
from medsim.transfer import to_device

Progress = Callable[[float, float], None]


def run_chunk(
    setup: _Setup,
    pop: VirtualPopulation,
    policy: Policy,
    offset: int,
    n_real: int,
    n_paths: int,
    save_every: int | None,
    progress: Progress | None,
    done: float,
    total: float,
) -> RolloutResult:
    """The option loop for one chunk (global indices ``offset, offset + 1, ...``).

    Only the first ``n_real`` patients are real; the rest pad the chunk to a bucketed width (so
    that every compiled function sees few distinct shapes), are inactive from the start and are
    dropped from the result.
    """
    model, n, horizon, J = setup.model, pop.n_patients, setup.horizon, len(setup.bounds)
    patient = offset + np.arange(n, dtype=np.int64)
    theta = {k: to_device(v, np.float32) for k, v in pop.simulation_parameters().items()}
    x = {k: to_device(v, np.float32) for k, v in pop.initial_state().items()}
    t, k = np.zeros(n), np.zeros(n, np.int64)
    real = np.arange(n) < n_real
    active, measure = real.copy(), real.copy()  # every rollout starts with a baseline look
    scenario = setup.scenario
    scen = chunk_scenario(setup, policy, patient, x, theta)
    announces = scen is not None and scenario.announced
    covariates = {c: np.asarray(v, np.float64) for c, v in pop.covariates.items()}
    policy_seed = int(np.random.SeedSequence([setup.seed, int(Stream.POLICY)]).generate_state(1)[0])
    pstate = policy.init(n, seed=policy_seed)
    rows: list[Interaction] = []
    paths: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    outside_target = np.zeros((n, len(setup.target_bounds)))
    # CGM-grid traces are sampled by the simulator's kernel as it steps (policies/traces.py).
    trace = None if setup.trace_grid is None else empty_trace(setup.trace_grid, n)
    spec = None if trace is None else trace_spec(setup.trace_grid, setup.sim.dt)
    count = setup.on_failure == "count"
    failures = Failures.none(n)  # with "count": patients frozen where a refused interval started
    swap_padding = False  # padding copies a patient the simulator refuses (stand in a live one)
    swapped = np.zeros(n, bool)  # patients whose values a live one stands in for
    while active.any():
        check_interaction_count(setup, policy, len(rows))
        true = {o: np.broadcast_to(np.asarray(v, np.float64), (n,)) for o, v in setup.observe(x, theta).items()}
        go = active.copy()  # the patients whose interval is simulated
        if count:
            go &= np.logical_and.reduce([np.isfinite(v) for v in true.values()], initial=True)
            failures.mark(active & ~go, t, NON_FINITE)
        else:
            check_finite(true, pop.params, t, time_unit=model.time_unit, patients=patient)
        # Which stream feeds each row's noise at its k-th interaction (default: its own index).
        noise_id = patient if setup.noise_index is None else np.asarray(setup.noise_index(patient, k), np.int64)
        measured = _measure(setup, pop, true, noise_id, k, measure & active)
        announced = {}
        if announces:
            announced = {c: np.where(active, a, 0.0) for c, a in announced_at(scen, t, setup.tol).items()}
        obs = Observation(
            time=t.copy(),
            measured=measured,
            announced=announced,
            covariates=covariates,
            active=active.copy(),
            patient=patient,
            index=k.copy(),
            subject=np.asarray(pop.subject),
            time_unit=model.time_unit,
            horizon=horizon,
        )
        rng = np.random.default_rng([setup.seed, int(Stream.POLICY), offset, len(rows)])
        pstate, option = policy.act(pstate, obs, rng=rng)
        if count:
            failures.mark(unusable(option, go), t, UNUSABLE_OPTION)
            go &= failures.reason == 0
        option = option.validated(n, model, go, policy.name)
        if not rows:  # the first interval the policy asks for tells how many interactions the horizon needs
            check_first_interval(setup, policy, float(np.min(option.interval[go], initial=np.inf)), scen)
        t1 = np.minimum(t + option.interval, horizon)
        if announces:
            t1 = np.minimum(t1, next_event_after(scen, t, setup.tol))
        while True:  # with "count", once more without each patient the simulator refuses
            t1 = np.where(go, np.where(horizon - t1 <= setup.tol, horizon, t1), t)
            dead = (failures.reason > 0) | (~real & swap_padding)
            if (dead != swapped).any():  # a live patient stands in (the simulator checks every patient)
                x, theta = stand_in(x, theta, dead, real)
                swapped = dead
            window = None if trace is None else host_window(setup.trace_grid, t, t1)
            bolus = {c: np.where(go, option.bolus.get(c, np.zeros(n)), 0.0) for c in setup.cmts}
            rates = {c: np.where(go, option.rate.get(c, np.zeros(n)), 0.0) for c in setup.cmts}
            try:
                res = setup.sim.advance(
                    x,
                    theta,
                    to_device(t, np.float32),
                    to_device(t1, np.float32),
                    key=patient_keys(setup.seed, Stream.PROCESS, noise_id, k),
                    events=_dose_events(setup, t, bolus, scen),
                    rates={c: to_device(r, np.float32) for c, r in rates.items()},
                    save_every=save_every if n_paths > 0 else None,
                    patients=patient,
                    trace=None if trace is None else (spec, interval_buffer(setup.trace_grid, *window)),
                )
                break
            except SimulationError as err:
                if not count:
                    raise
                i, code = refused_patient(err, offset, n)
                if go[i]:
                    failures.mark(np.arange(n) == i, t, code)
                    go[i] = False
                elif not real[i] and not swap_padding:
                    swap_padding = True
                elif not go.any():  # every patient of the chunk frozen: nothing left to simulate
                    break
                else:
                    raise
        if not go.any() and count and failures.any:  # every patient of the chunk frozen
            if not rows:  # the record needs one interval, as the compiled loop has: an empty one
                rows.append(empty_row(t, measured, true, setup.cmts, J))
            break
        st = jax.tree_util.tree_map(np.asarray, res.stats)
        treatment = {f"bolus_cmt{c}": bolus[c] for c in setup.cmts}
        treatment.update({f"rate_cmt{c}": rates[c] for c in setup.cmts})
        extra = st.time_outside[:, J:]
        n_target = len(setup.target_bounds)
        outside_target += np.where(go[:, None], extra[:, :n_target], 0.0)
        rows.append(
            Interaction(
                t_start=t,
                t_end=t1,
                mask=go,
                measured=measured,
                true_start=true,
                obs_min=st.obs_min,
                obs_max=st.obs_max,
                treatment=treatment,
                out_of_support=support_fraction(setup, extra[:, n_target:], treatment, t1 - t, go),
                **{name: getattr(st, name)[:, :J] for name in PER_BOUND},
            )
        )
        if trace is not None:
            record(trace, *window, res.trace)
        if n_paths > 0:
            saved = {o: np.asarray(v)[:n_paths] for o, v in res.path.values.items()}
            paths.append((np.asarray(res.path.time)[:n_paths], saved))
        x, t, k = res.state, t1, k + go
        measure = option.measure_next
        active = (t < horizon - setup.tol) & real & (failures.reason == 0)
        if progress is not None:
            progress(done + float(np.sum(t[:n_real])), total)
    return assemble(
        setup,
        pop.take(slice(0, n_real)),
        policy,
        rows,
        outside_target[:n_real],
        paths,
        n_real,
        scenario_events=scen,
        trace={} if trace is None else {o: v[:n_real] for o, v in trace.items()},
        failures=failures.take(n_real) if count else None,
    )
