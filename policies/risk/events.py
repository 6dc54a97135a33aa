"""Per-patient violation outcomes over the horizon, from a rollout's per-interval statistics.

Three ways of deciding whether patient ``n`` violated bound ``j`` (axis 0 = patient, axis 1 =
bound in the spec's order):

``seen``
    The noise-free observable is outside at a *checkpoint*: an interaction time at which the
    observable was measured (``measured`` finite; every interaction time if the observable is
    never measured), or the end of the horizon. This is what a constraint checked only at
    interaction times sees (MedGym-style safety costs). Measurement noise is left out on
    purpose, so that the difference to the other two is purely a matter of *when* one looks;
    ``detected`` (the noisy measurement outside) is kept alongside.
``grid``
    Some point of the simulator's sub-step grid is outside (or a checkpoint is).
``bridge``
    The Brownian-bridge (Rao–Blackwellised) probability that the continuous path left the safe
    set, ``p_n = 1 - exp(sum_k log_survival[n, k, j])``: given the grid points, crossings in
    different sub-steps are conditionally independent (Markov property of the bridge), so the
    per-interval log-survivals add (Glasserman 2004, *Monte Carlo Methods in Financial
    Engineering*, §6.4). ``p_n`` is set to 1 where the grid already shows a violation.

*Only between measurements* = violated but not seen: ``grid & ~seen`` (0/1) and
``bridge * ~seen`` (bridge), so that ``bridge = seen + between`` patient by patient.

Joint event (any bound). The 0/1 versions are exact (``any`` over bounds). For the bridge,
only the tightest bound per (observable, side) matters — a continuous path crossing a looser
bound on the same side must first cross the tighter one — and the remaining bounds are combined
with Boole's union bound ``min(1, sum_j p_nj)``. It is never optimistic, which a chance-
constraint certificate must not be, and it is nearly exact in the common case of a two-sided
window on one observable (upper and lower crossings of the same path within one horizon are
close to disjoint for safe policies). The independence product ``1 - prod_j (1 - p_nj)`` would
under-estimate exactly there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsim.policies.result import RolloutResult
from medsim.policies.spec import SafetySpec


class SpecMismatchError(ValueError):
    """The rollout did not monitor a bound of the safety spec, or used another horizon/unit."""


@dataclass(frozen=True)
class PatientEvents:
    """Violation outcomes per patient (N) and bound (J), plus the joint (any-bound) event.

    Attributes
    ----------
    bound_names : tuple of str, length J
    draw : (N,) int
        Posterior-draw index (cluster label; negative = none).
    seen, grid : (N, J) bool
    detected : (N, J) bool
        The noisy measurement the policy saw was outside (False where never measured).
    measured_observable : (J,) bool
        Whether the bound's observable is measured at all (``detected`` is meaningful).
    bridge : (N, J) float
        Continuous-time violation probability per patient, in [0, 1].
    joint_seen, joint_grid, joint_detected : (N,) bool
    joint_bridge : (N,) float
    detected_true : (N, J) bool or None
        Some measurement was outside where the noise-free value at that time was outside too;
        ``detected & ~detected_true`` are patients whose every alarm was false (measurement noise
        pushed an in-range value out).
    joint_detected_true : (N,) bool or None
    failed : (N,) bool or None
        Patients that could not be simulated (``on_failure="count"``,
        :attr:`~medsim.policies.result.RolloutResult.failed_time`): like an undefined bridge, unknown
        is never safe, so they count as violating every bound (``seen``, ``grid`` and ``bridge``;
        ``detected`` keeps what the policy saw). None when the rollout counted no failures.
    undefined_bridge : int
        Valid intervals whose log-survival was NaN (the simulator could not evaluate the bridge,
        e.g. a log-scale observable at exactly 0); such patients count as violating unless the
        grid decides, which is conservative, and reports warn about it.
    """

    bound_names: tuple[str, ...]
    draw: np.ndarray
    seen: np.ndarray
    grid: np.ndarray
    detected: np.ndarray
    measured_observable: np.ndarray
    bridge: np.ndarray
    joint_seen: np.ndarray
    joint_grid: np.ndarray
    joint_detected: np.ndarray
    joint_bridge: np.ndarray
    undefined_bridge: int = 0
    detected_true: np.ndarray | None = None
    joint_detected_true: np.ndarray | None = None
    failed: np.ndarray | None = None

    @property
    def n_patients(self) -> int:
        return int(self.draw.shape[0])

    @property
    def between_grid(self) -> np.ndarray:
        """(N, J) grid violation not seen at any checkpoint."""
        return self.grid & ~self.seen

    @property
    def between_bridge(self) -> np.ndarray:
        """(N, J) probability of a violation only between checkpoints."""
        return np.where(self.seen, 0.0, self.bridge)

    @property
    def joint_between_grid(self) -> np.ndarray:
        return self.joint_grid & ~self.joint_seen

    @property
    def joint_between_bridge(self) -> np.ndarray:
        return np.where(self.joint_seen, 0.0, self.joint_bridge)


def bound_indices(result: RolloutResult, spec: SafetySpec) -> np.ndarray:
    """Index into ``result.bounds`` of each spec bound (same observable, side and value).

    Raises
    ------
    SpecMismatchError
        A spec bound that the rollout did not monitor (the message lists what it did monitor).
    """
    return bound_indices_of(result.bounds, spec, result.policy)


def bound_indices_of(bounds: tuple, spec: SafetySpec, policy: str) -> np.ndarray:
    """Index into ``bounds`` (monitored in a rollout of ``policy``) of each spec bound."""
    out = []
    for b in spec.bounds:
        hits = [
            i
            for i, r in enumerate(bounds)
            if r.observable == b.observable and r.side == b.side and np.isclose(r.value, b.value, rtol=1e-6)
        ]
        if not hits:
            have = [r.name for r in bounds]
            raise SpecMismatchError(
                f"spec {spec.source}: bound {b.name!r} was not monitored in the rollout of policy {policy!r}; "
                f"it monitored {have} (run the rollout with the spec's bounds)"
            )
        out.append(hits[0])
    return np.asarray(out, dtype=int)


def tightest_groups(spec: SafetySpec) -> np.ndarray:
    """Indices of the spec bounds that decide the joint event: the tightest per (observable, side)."""
    best: dict[tuple[str, str], int] = {}
    for j, b in enumerate(spec.bounds):
        key = (b.observable, b.side)
        if key not in best:
            best[key] = j
            continue
        cur = spec.bounds[best[key]].value
        tighter = b.value < cur if b.side == "upper" else b.value > cur
        if tighter:
            best[key] = j
    return np.asarray(sorted(best.values()), dtype=int)


def _last_valid(mask: np.ndarray) -> np.ndarray:
    """(N,) index of each patient's last valid interaction (0 for patients without any)."""
    k = mask.shape[1]
    return np.where(mask.any(axis=1), k - 1 - np.argmax(mask[:, ::-1], axis=1), 0)


def checkpoint_values(result: RolloutResult, observable: str) -> np.ndarray:
    """(N, K) noise-free values at the checkpoints among the interaction starts, NaN elsewhere.

    The horizon end is a checkpoint too; its value is not stored in the rollout, so callers use
    the last valid interval's ``end_violation`` flag for it.
    """
    mask = np.asarray(result.mask, bool)
    true = np.where(mask, np.asarray(result.true_start[observable], float), np.nan)
    measured = result.measured.get(observable)
    if measured is not None:
        taken = np.isfinite(np.asarray(measured, float)) & mask
        if taken.any():
            true = np.where(taken, true, np.nan)
    return true


def patient_events(result: RolloutResult, spec: SafetySpec) -> PatientEvents:
    """Per-patient violation outcomes of ``result`` for the bounds of ``spec`` (see module docstring)."""
    idx = bound_indices(result, spec)
    mask = np.asarray(result.mask, bool)
    n = mask.shape[0]
    rows = np.arange(n)
    log_surv = np.where(mask[:, :, None], np.asarray(result.log_survival, float)[:, :, idx], 0.0)
    undefined = int(np.isnan(log_surv[~result.failed]).sum())  # a failed patient violates anyway
    log_surv = np.where(np.isnan(log_surv), -np.inf, log_surv)
    grid_iv = mask[:, :, None] & np.asarray(result.grid_violation, bool)[:, :, idx]
    end_iv = mask[:, :, None] & np.asarray(result.end_violation, bool)[:, :, idx]
    last = _last_valid(mask)
    has_any = mask.any(axis=1)

    j_count = len(spec.bounds)
    seen = np.zeros((n, j_count), bool)
    start_out = np.zeros((n, j_count), bool)
    detected = np.zeros((n, j_count), bool)
    detected_true = np.zeros((n, j_count), bool)
    measured_obs = np.zeros(j_count, bool)
    for j, b in enumerate(spec.bounds):
        values = checkpoint_values(result, b.observable)
        with np.errstate(invalid="ignore"):
            seen[:, j] = np.asarray(b.outside(values)).any(axis=1)
            first = np.asarray(result.true_start[b.observable], float)[:, 0]
            start_out[:, j] = np.asarray(b.outside(first)) & mask[:, 0]
        seen[:, j] |= end_iv[rows, last, j] & has_any
        noisy = result.measured.get(b.observable)
        if noisy is not None:
            noisy = np.where(mask, np.asarray(noisy, float), np.nan)
            measured_obs[j] = bool(np.isfinite(noisy).any())
            with np.errstate(invalid="ignore"):
                alarm = np.asarray(b.outside(noisy))
                truly = np.asarray(b.outside(np.asarray(result.true_start[b.observable], float)))
                detected[:, j] = alarm.any(axis=1)
                detected_true[:, j] = (alarm & truly).any(axis=1)

    return events_from(
        spec,
        draw=np.asarray(result.draw, dtype=int),
        seen=seen,
        start_out=start_out,
        grid_any=grid_iv.any(axis=1),
        total_log=log_surv.sum(axis=1),
        detected=detected,
        measured_observable=measured_obs,
        undefined=undefined,
        detected_true=detected_true,
        failed=result.failed if result.failed.any() else None,
    )


def events_from(
    spec: SafetySpec,
    *,
    draw: np.ndarray,
    seen: np.ndarray,
    start_out: np.ndarray,
    grid_any: np.ndarray,
    total_log: np.ndarray,
    detected: np.ndarray,
    measured_observable: np.ndarray,
    undefined: int,
    detected_true: np.ndarray | None = None,
    failed: np.ndarray | None = None,
) -> PatientEvents:
    """:class:`PatientEvents` from per-patient reductions over the horizon ((N, J) each, spec order):
    checkpoints seen outside, outside at the start, a grid point outside, the summed bridge
    log-survival (NaN intervals as -inf), the noisy measurement outside (and, where known, outside
    while the true value was: ``detected_true``; ``None`` where not known); ``failed`` (N,)
    patients that could not be simulated, counted as violating every bound."""
    if failed is not None:
        seen = seen | np.asarray(failed, bool)[:, None]
    grid = seen | start_out | grid_any
    bridge = np.where(grid, 1.0, -np.expm1(total_log))
    bridge = np.clip(np.nan_to_num(bridge, nan=1.0), 0.0, 1.0)

    deciding = tightest_groups(spec)
    joint_bridge = np.minimum(1.0, bridge[:, deciding].sum(axis=1))
    return PatientEvents(
        bound_names=tuple(b.name for b in spec.bounds),
        draw=draw,
        seen=seen,
        grid=grid,
        detected=detected,
        measured_observable=measured_observable,
        bridge=bridge,
        joint_seen=seen.any(axis=1),
        joint_grid=grid.any(axis=1),
        joint_detected=detected.any(axis=1),
        joint_bridge=np.where(grid.any(axis=1), 1.0, joint_bridge),
        undefined_bridge=undefined,
        detected_true=detected_true,
        joint_detected_true=None if detected_true is None else detected_true.any(axis=1),
        failed=None if failed is None else np.asarray(failed, bool),
    )
