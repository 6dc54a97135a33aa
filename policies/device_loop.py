"""The option loop compiled: measure → act → advance → accumulate in one program per chunk.

For policies with an array step (``policy.array_step(state, obs, xp)``, the built-in ``pid``,
``basal_bolus``, ``fixed``, ``tdm``, ``flip`` and ``safe_timing``; a policy with a
``prepare(state, patient, covariates, subject)`` method has its state prepared on the host first,
:func:`medsim.policies.array_step.prepare_state`) the loop of :mod:`medsim.policies.rollout` runs inside a jitted
``lax.while_loop`` over interactions instead of a Python loop: each patient keeps its own clock,
the policy's step is traced with ``xp = jax.numpy``, and each interval is advanced by the same
compiled kernel :meth:`medsim.simulate.Simulator.advance` calls
(:meth:`~medsim.simulate.Simulator.interval_kernel`, called by :mod:`medsim.policies.device_interval`).
One simulator, one policy code path.

The numbers are those of the host loop on the same seed, bit for bit: the same counter-based
streams (measurement noise ``(seed, MEASUREMENT, patient, k)``, process noise
``(seed, PROCESS, patient, k)``, :func:`medsim.population.streams.patient_base_keys`), the policy
arithmetic in float64 as numpy does it on the host (the loop is traced under
``jax.enable_x64``) and the simulator's float32 inputs planned as
:func:`medsim.simulate.plan.plan_interval` plans them (boluses at the interval start added
before the first sub-step, scenario boluses inside the interval as event columns; inert columns
are exact no-ops).

Two products, chosen by ``record``:

* ``record=True``: the per-interaction rows of the host loop, handed back every
  :data:`BLOCK` interactions and stacked into the same :class:`~medsim.policies.result.RolloutResult`;
* ``record=False``: only per-patient sums reduced as the loop goes
  (:class:`medsim.policies.streaming.StreamingSums`), so memory is flat in the number of interactions.

With ``record=True`` and a glucose model the kernel also writes the CGM-grid trace
(:mod:`medsim.policies.traces`) into an ``(n, n_points)`` buffer the loop carries. A
``noise_index`` given as a :class:`~medsim.policies.noise_index.NoiseTable` is looked up per patient
and interaction on the device, and the measurement and process keys are derived from its stream
index as the host loop derives them.

Anything the host loop would refuse (a non-finite value, a state outside its physical range, an
unusable option) is flagged per patient inside the loop, with the reason
(:data:`medsim.policies.result.FAILURE_REASONS`) and the start of the refused interval, and the
patient is frozen there (its interval not recorded, its state not kept). With
``on_failure="stop"`` a flagged chunk is re-run by the host loop, which raises the error that names
the patient, so both loops fail the same way; with ``"count"`` the flags are the result's failed
patients, as the host loop records them (:mod:`medsim.policies.failures`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from medsim.policies.array_step import prepare_state
from medsim.policies.device_interval import scenario_layout
from medsim.policies.device_program import BLOCK, F64, Carry, Inputs, compiled
from medsim.policies.device_streams import first_draws, stream_roots
from medsim.policies.failures import Failures
from medsim.policies.interaction import Interaction
from medsim.policies.protocol import Policy
from medsim.policies.streaming import init_sums
from medsim.policies.traces import empty_trace
from medsim.population.streams import Stream, patient_base_keys
from medsim.population.virtual import VirtualPopulation
from medsim.transfer import to_device


def supports_device(policy: Policy) -> bool:
    """Whether ``policy`` has an array step the compiled loop can trace (``array_step``; a policy
    built from components says whether they all have one with ``array_capable``)."""
    return callable(getattr(policy, "array_step", None)) and bool(getattr(policy, "array_capable", True))


def device_capable(setup, scen) -> bool:
    """Whether the compiled loop can run this rollout (bolus-only scenario events)."""
    return scen is None or not bool(np.any(np.asarray(scen.rate) > 0))


def run_chunk(setup, pop: VirtualPopulation, policy: Policy, offset: int, n_real: int, scen, record: bool, hooks):
    """The compiled option loop for one chunk (see the module docstring).

    Parameters
    ----------
    setup : policies.rollout._Setup
    pop : VirtualPopulation
        The chunk (padded to its bucketed width; only the first ``n_real`` patients are real).
    policy : Policy
        With an ``array_step``.
    offset : int
        Global index of the chunk's first patient.
    scen : DoseEvents or None
        The chunk's scenario events.
    record : bool
        Hand back per-interaction rows (``True``) or only the streaming sums.
    hooks : object
        ``check_work(interval)``, ``check_interactions(done)`` and ``progress(t)`` callbacks of the
        host rollout (limits and progress stay where the host loop keeps them).

    Returns
    -------
    (rows, outside_target, sums, failures, trace)
        ``rows``: list of :class:`~medsim.policies.interaction.Interaction` as the host loop records
        them, ``out_of_support`` still the support bounds' time outside (``record``);
        ``outside_target``: (n, n_target) time outside the target range; ``sums``:
        :class:`StreamingSums` (numpy) or None; ``failures``: :class:`~medsim.policies.failures.Failures`,
        the patients flagged and frozen (with ``on_failure="stop"`` the caller re-runs a chunk with
        any of them in the host loop, which names the patient); ``trace``: observable -> (n, n_points)
        CGM-grid traces (``record`` and a model with a trace grid; else empty).
    """
    model, n = setup.model, pop.n_patients
    patient = offset + np.arange(n, dtype=np.int64)
    event_cmts, columns = scenario_layout(scen)
    cfg, fn = compiled(setup, policy, record, event_cmts, columns)
    policy_seed = int(np.random.SeedSequence([setup.seed, int(Stream.POLICY)]).generate_state(1)[0])
    covariates = {c: np.asarray(v, np.float64) for c, v in pop.covariates.items()}
    pstate = prepare_state(policy, policy.init(n, seed=policy_seed), patient, covariates, np.asarray(pop.subject))
    residual = {k: np.asarray(v, np.float32) for k, v in pop.residual.items()}
    if scen is None:
        ev_time, ev_cmt, ev_amount = np.full((n, 0), np.inf, np.float32), np.zeros((n, 0), np.int32), None
        ev_amount = np.zeros((n, 0), np.float32)
    else:
        ev_time, ev_cmt = np.asarray(scen.time, np.float32), np.asarray(scen.cmt, np.int32)
        ev_amount = np.asarray(scen.amount, np.float32)
    theta = {k: np.asarray(v, np.float32) for k, v in pop.simulation_parameters().items()}
    x = {k: np.asarray(v, np.float32) for k, v in pop.initial_state().items()}
    real = np.arange(n) < n_real
    table = getattr(setup, "noise_index", None)  # a NoiseTable (rollout() runs any other callable on the host)
    with jax.enable_x64(True):
        inp = Inputs(
            theta={k: to_device(v) for k, v in theta.items()},
            covariates={c: to_device(v) for c, v in covariates.items()},
            patient=to_device(patient),
            meas_key=to_device(np.asarray(patient_base_keys(setup.seed, Stream.MEASUREMENT, patient))),
            proc_key=to_device(np.asarray(patient_base_keys(setup.seed, Stream.PROCESS, patient))),
            res_add={o: to_device(residual[f"{o}_add"]) for o in setup.measured_obs if f"{o}_add" in residual},
            res_prop={o: to_device(residual[f"{o}_prop"]) for o in setup.measured_obs if f"{o}_prop" in residual},
            real=to_device(real),
            ev_time=to_device(ev_time),
            ev_cmt=to_device(ev_cmt),
            ev_amount=to_device(ev_amount),
            trace_step=to_device(np.float64(np.nan if setup.trace_grid is None else setup.trace_grid.step)),
            noise_table=None if table is None else to_device(table.rows(patient).astype(np.uint32)),
            stream_roots=None if table is None else to_device(np.asarray(stream_roots(setup.seed))),
        )
        width = max(len(setup.measured_obs), 1)
        carry = Carry(
            x={k: jnp.asarray(v) for k, v in x.items()},
            t=jnp.zeros(n, F64),
            k=jnp.zeros(n, jnp.int64),
            z=first_draws(inp, width),
            active=jnp.asarray(real),
            measure=jnp.asarray(real),
            pstate=jax.tree_util.tree_map(jnp.asarray, pstate),
            outside_target=jnp.zeros((n, len(setup.target_bounds)), F64),
            reason=jnp.zeros(n, jnp.int8),
            failed_at=jnp.full(n, jnp.inf, F64),
            sums=None if record else init_sums(n, len(setup.bounds), setup.cmts, model.observable_names),
            trace=None if not cfg.trace_points else empty_trace(setup.trace_grid, n),
        )
        rows: list[Interaction] = []
        done = 0
        args = tuple(to_device(np.float64(v)) for v in (setup.sim.dt, setup.horizon, setup.tol))
        while True:
            hooks.check_interactions(done)
            n_iter = 1 if done == 0 else min(BLOCK, setup.max_interactions - done)
            carry, block, n_done, first = fn(carry, inp, to_device(np.int32(n_iter)), *args)
            n_done = int(n_done)
            if done == 0:
                hooks.check_work(float(first))
            if record:
                # Sliced on the host: a device slice is one more compiled program per array shape.
                host = jax.tree_util.tree_map(lambda a, m=n_done: np.asarray(a)[:m], block)
                rows += [jax.tree_util.tree_map(lambda a, i=i: a[i], host) for i in range(n_done)]
            done += n_done
            hooks.progress(np.asarray(carry.t))
            if not np.asarray(carry.active).any():
                break
        failures = Failures(np.asarray(carry.failed_at), np.asarray(carry.reason))
        sums = None if carry.sums is None else jax.tree_util.tree_map(np.asarray, carry.sums)
        trace = {} if carry.trace is None else {o: np.asarray(v) for o, v in carry.trace.items()}
        if failures.any:  # the refused intervals out of the records and sums (see device_program.body)
            rows, sums = _without_refused(rows, sums, failures, np.asarray(carry.k))
        return rows, np.asarray(carry.outside_target), sums, failures, trace


def _without_refused(rows: list, sums, failures: Failures, k: np.ndarray):
    """Records without each failed patient's refused interval (the one starting where it was frozen);
    sums of failed patients with their interactions and simulated time up to the failure, and time
    outside, depth and doses unknown (NaN: the refused interval is in them; summaries exclude
    failed patients and risk estimates count them as violating every bound)."""
    failed = failures.reason > 0
    rows = [r._replace(mask=r.mask & ~(failed & (r.t_start >= failures.time))) for r in rows]
    if sums is not None:
        nan2 = np.where(failed[:, None], np.nan, 1.0)
        sums = sums._replace(
            interactions=np.where(failed, k, sums.interactions),
            length=np.where(failed, failures.time, sums.length),
            time_outside=sums.time_outside * nan2,
            depth=sums.depth * nan2,
            dose=sums.dose * nan2,
        )
    return rows, sums
