"""Per-subject event timelines: observations, doses and infusion ends merged into one padded grid.

The extended Kalman filter walks each subject's events in time order. Building that order is
bookkeeping with ragged data, so it is done once, in numpy, before anything is compiled; the
result is a rectangular :class:`Timeline` of shape ``(S, K)`` that one vmapped, jitted filter
consumes for every subject and every posterior draw.

Rules
-----
* Every observation, every dose and the end of every infusion is an event. Events at the same
  time are ordered observation → infusion end → dose, so a sample taken at a dose time is a
  pre-dose (trough) measurement, the usual clinical meaning of such records.
* Events at the same time share one *slot* as long as it holds at most one observation: the
  filter updates on a slot's observation and then applies its boluses, which is that order, and
  a trough sample with its dose costs one slot instead of two (each slot costs ``substeps``
  filter steps, even over a zero-length interval).
* Long gaps are split by grid slots (no action) so that no interval exceeds
  ``substeps * max_substep``; the filter takes ``substeps`` RK4 steps per interval, so its step
  never exceeds ``max_substep`` (an explicit method is only stable for ``|lambda| h < 2.78``).
* Infusion input rates are piecewise constant between slots; the rate active over each interval
  is computed here exactly (no running sums that could leave round-off behind).
* Padding slots repeat the subject's last time: zero-length intervals leave the filter unchanged.
* The filter starts at time 0 from the model's ``initial_state`` (the state before any dose).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from medsim.inference.likelihood.filtering import check_gradient, check_layout
from medsim.models.base import PhysiologyModel

# Slot kinds at equal times are processed in this order (see the module docstring).
_OBS, _INFUSION_END, _DOSE, _GRID = 0, 1, 2, 3


class TimelineError(ValueError):
    """Cohort arrays that cannot be turned into a timeline for the given model."""


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Timeline:
    """Merged event grid of ``S`` subjects with ``K`` slots each (see the module docstring).

    Attributes
    ----------
    time : (S, K) float
        Slot times in the model's time unit, non-decreasing along ``K``.
    is_obs : (S, K) bool
        The slot carries an observation.
    obs_value : (S, K) float
        Observed value (0 where ``is_obs`` is False), in the observable's unit.
    obs_observable : (S, K) int
        Index into :attr:`observables` of the observed quantity.
    bolus : (S, K, C) float
        Bolus amount given at the slot into each dose compartment of :attr:`dose_cmts`
        (in the compartment's dose unit).
    infusion_rate : (S, K, C) float
        Zero-order input rate (dose unit per time unit) into each compartment over the interval
        that *ends* at the slot.
    obs_cens : (S, K) int
        Censoring of the slot's observation: 0 measured, 1 below the limit held in
        ``obs_value``, -1 above it (Beal's M3 method; see
        :func:`medsim.inference.likelihood.filtering.observation_update`).
    obs_slot : (S, N) int
        Slot of each of the cohort's ``N`` padded observations (to map per-slot results back).
    obs_mask : (S, N) bool
        True for real observations.
    dose_cmts : tuple of int
        Dose compartments, in the order of the last axis of ``bolus``.
    observables : tuple of str
        The model's observables, in the order ``obs_observable`` indexes.
    substeps : int
        RK4 steps the filter takes per interval.
    layout : {"auto", "entries", "matrix"}
        Storage of the filter's mean and covariance (see :mod:`medsim.inference.likelihood.ekf`).
    gradient : {"auto", "forward", "reverse"}
        How reverse-mode callers differentiate the filter
        (:func:`~medsim.inference.likelihood.filtering.resolve_gradient`).
    """

    time: Any
    is_obs: Any
    obs_value: Any
    obs_observable: Any
    bolus: Any
    infusion_rate: Any
    obs_slot: Any
    obs_mask: Any
    obs_cens: Any = None
    dose_cmts: tuple[int, ...] = field(metadata={"static": True}, default=())
    observables: tuple[str, ...] = field(metadata={"static": True}, default=())
    substeps: int = field(metadata={"static": True}, default=4)
    layout: str = field(metadata={"static": True}, default="auto")
    gradient: str = field(metadata={"static": True}, default="auto")

    @property
    def n_subjects(self) -> int:
        return int(np.shape(self.time)[0])

    @property
    def n_slots(self) -> int:
        return int(np.shape(self.time)[1])

    def observed_observables(self) -> tuple[str, ...]:
        """Observables with at least one real observation, in model order."""
        used = set(np.asarray(self.obs_observable)[np.asarray(self.is_obs)].tolist())
        return tuple(name for i, name in enumerate(self.observables) if i in used)


def default_max_substep(model: PhysiologyModel, *, safety: float = 2.0) -> float:
    """Largest RK4 step (model time unit) suited to the model's fastest typical rate.

    The fastest rate is the largest eigenvalue modulus of the drift Jacobian at the typical
    parameters, evaluated at the initial state plus one unit of every state (a point where all
    first-order processes are active). ``safety / rate`` keeps ``|lambda| h`` at ``safety`` for a
    typical subject, so subjects up to ``2.78 / safety`` (about 14) times faster than typical
    stay inside RK4's stability region, and the local error ``(lambda h)^5 / 120`` is ~3e-6.
    """
    import jax.numpy as jnp

    theta = model.individual_parameters(model.typical_parameters(), {}, model.reference_covariates())
    names = model.state_names
    x0 = model.initial_state(theta)
    point = jnp.stack([jnp.asarray(x0[n], jnp.float32) + 1.0 for n in names])

    def f(vec):
        out = model.drift(0.0, dict(zip(names, vec, strict=True)), theta, {})
        return jnp.stack([jnp.asarray(out[n], jnp.float32) for n in names])

    rate = float(np.max(np.abs(np.linalg.eigvals(np.asarray(jax.jacfwd(f)(point), np.float64)))))
    if not np.isfinite(rate) or rate <= 0:
        raise TimelineError(f"model {model.name!r}: drift Jacobian at typical values has no positive rate ({rate})")
    return safety / rate


def build_timeline(
    model: PhysiologyModel,
    padded: Any,
    *,
    substeps: int = 4,
    max_substep: float | None = None,
    dtype: Any = np.float32,
    layout: str = "auto",
    gradient: str = "auto",
) -> Timeline:
    """Merge each subject's observations and doses into one padded timeline (numpy, done once).

    Parameters
    ----------
    model : PhysiologyModel
        Maps observation CMTs to observables (``obs_targets``) and lists dose CMTs (``dose_targets``).
    padded : PaddedCohort-like
        Object with ``ids`` (S,), ``obs_time``/``obs_value``/``obs_cmt``/``obs_mask`` (S, N) and
        ``dose_time``/``dose_cmt``/``dose_amount``/``dose_rate``/``dose_mask`` (S, M) arrays.
    substeps : int
        RK4 steps per interval.
    max_substep : float, optional
        Largest RK4 step in the model's time unit; default: the model's ``filter_max_substep``
        if it declares one, else :func:`default_max_substep`.
    dtype : numpy dtype
        Floating dtype of the returned arrays (float32, or float64 under ``jax.enable_x64``).
    layout : {"auto", "entries", "matrix"}
        Storage of the filter's mean and covariance, the default of every filter run on this
        timeline (see :mod:`medsim.inference.likelihood.ekf`; ``"auto"`` decides per run from the
        number of states and whether the covariance is propagated).
    gradient : {"auto", "forward", "reverse"}
        How reverse-mode callers (samplers) differentiate the filter on this timeline
        (:func:`~medsim.inference.likelihood.filtering.resolve_gradient`; ``"auto"``: reverse mode
        in the matrix layout, forward mode otherwise).

    Returns
    -------
    Timeline

    Raises
    ------
    TimelineError
        Negative or non-finite times, a CMT the model neither observes nor doses, a non-finite
        observation or dose amount, or a negative infusion rate; the message names the subject
        and record; an unknown ``layout`` or ``gradient``.
    """
    try:
        check_layout(layout)
        check_gradient(gradient)
    except ValueError as err:
        raise TimelineError(str(err)) from None
    if substeps < 1:
        raise TimelineError(f"substeps must be >= 1, got {substeps}")
    if max_substep is not None:
        h_max = float(max_substep)
    else:
        h_max = default_max_substep(model) if model.filter_max_substep is None else float(model.filter_max_substep)
    if not h_max > 0:
        raise TimelineError(f"max_substep must be > 0, got {max_substep}")
    observables = model.observable_names
    dose_cmts = tuple(sorted(model.dose_targets))
    subjects = [
        _merge_simultaneous(_subject_slots(model, padded, s, observables, dose_cmts)) for s in range(len(padded.ids))
    ]
    subjects = [_split_long_gaps(slots, substeps * h_max) for slots in subjects]
    n_slots = max(1, max(len(slots["time"]) for slots in subjects))
    n_subjects, n_obs = np.shape(padded.obs_time)
    out = {
        "time": np.zeros((n_subjects, n_slots)),
        "is_obs": np.zeros((n_subjects, n_slots), bool),
        "obs_value": np.zeros((n_subjects, n_slots)),
        "obs_observable": np.zeros((n_subjects, n_slots), np.int32),
        "obs_cens": np.zeros((n_subjects, n_slots), np.int32),
        "bolus": np.zeros((n_subjects, n_slots, len(dose_cmts))),
        "infusion_rate": np.zeros((n_subjects, n_slots, len(dose_cmts))),
        "obs_slot": np.zeros((n_subjects, n_obs), np.int32),
    }
    for s, slots in enumerate(subjects):
        k = len(slots["time"])
        for name in ("time", "is_obs", "obs_value", "obs_observable", "obs_cens", "bolus", "infusion_rate"):
            out[name][s, :k] = slots[name]
        out["time"][s, k:] = slots["time"][-1] if k else 0.0
        out["obs_slot"][s, slots["obs_index"]] = np.nonzero(slots["is_obs"])[0]
    return Timeline(
        time=out["time"].astype(dtype),
        is_obs=out["is_obs"],
        obs_value=out["obs_value"].astype(dtype),
        obs_observable=out["obs_observable"],
        bolus=out["bolus"].astype(dtype),
        infusion_rate=out["infusion_rate"].astype(dtype),
        obs_slot=out["obs_slot"],
        obs_mask=np.asarray(padded.obs_mask, bool),
        obs_cens=out["obs_cens"],
        dose_cmts=dose_cmts,
        observables=observables,
        substeps=int(substeps),
        layout=layout,
        gradient=gradient,
    )


def _subject_slots(model, padded, s, observables, dose_cmts) -> dict[str, np.ndarray]:
    """Unpadded, sorted slots of subject ``s`` (see the module docstring for the order)."""
    sid = padded.ids[s]
    rows = []  # (time, kind, record index, payload)
    obs_mask = np.asarray(padded.obs_mask[s], bool)
    cens = getattr(padded, "obs_cens", None)
    cens = np.zeros(obs_mask.shape, np.int32) if cens is None else np.asarray(cens[s])
    for j in np.nonzero(obs_mask)[0]:
        t, y, cmt = float(padded.obs_time[s, j]), float(padded.obs_value[s, j]), int(padded.obs_cmt[s, j])
        _check_time(t, sid, "observation", j)
        if cmt not in model.obs_targets:
            raise TimelineError(
                f"subject {sid!r}, observation {j}: CMT {cmt} is not observed by model {model.name!r} "
                f"(observed CMTs: {sorted(model.obs_targets)})"
            )
        if not np.isfinite(y):
            raise TimelineError(f"subject {sid!r}, observation {j}: DV must be finite, got {y}")
        if cens[j] not in (0, 1, -1):
            raise TimelineError(
                f"subject {sid!r}, observation {j}: censoring code {cens[j]}; expected 0, 1 (below DV) or -1 (above DV)"
            )
        rows.append((t, _OBS, j, (y, observables.index(model.obs_targets[cmt]), int(cens[j]))))
    for d in np.nonzero(np.asarray(padded.dose_mask[s], bool))[0]:
        t, cmt = float(padded.dose_time[s, d]), int(padded.dose_cmt[s, d])
        amount, rate = float(padded.dose_amount[s, d]), float(padded.dose_rate[s, d])
        _check_time(t, sid, "dose", d)
        if cmt not in model.dose_targets:
            raise TimelineError(
                f"subject {sid!r}, dose {d}: CMT {cmt} cannot be dosed in model {model.name!r} "
                f"(dose CMTs: {list(dose_cmts)})"
            )
        if not (np.isfinite(amount) and np.isfinite(rate)) or rate < 0:
            raise TimelineError(
                f"subject {sid!r}, dose {d}: AMT must be finite and RATE finite and >= 0, got AMT={amount}, RATE={rate}"
            )
        c = dose_cmts.index(cmt)
        if rate > 0:
            # Zero-order infusion of `amount` at `rate`: active on [t, t + amount / rate].
            rows.append((t, _DOSE, d, ("start", c, rate, len(rows))))
            rows.append((t + amount / rate, _INFUSION_END, d, ("end", c, rate, len(rows) - 1)))
        else:
            rows.append((t, _DOSE, d, ("bolus", c, amount, None)))
    order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][1], rows[i][2]))
    position = {i: k for k, i in enumerate(order)}
    n, n_cmt = len(rows), len(dose_cmts)
    slots = {
        "time": np.array([rows[i][0] for i in order], float),
        "is_obs": np.zeros(n, bool),
        "obs_value": np.zeros(n),
        "obs_observable": np.zeros(n, np.int32),
        "obs_cens": np.zeros(n, np.int32),
        "bolus": np.zeros((n, n_cmt)),
        "infusion_rate": np.zeros((n, n_cmt)),
        "obs_index": [],
    }
    for k, i in enumerate(order):
        _, kind, record, payload = rows[i]
        if kind == _OBS:
            slots["is_obs"][k] = True
            slots["obs_value"][k], slots["obs_observable"][k], slots["obs_cens"][k] = payload
            slots["obs_index"].append(record)
        elif payload[0] == "bolus":
            slots["bolus"][k, payload[1]] += payload[2]
        elif payload[0] == "end":
            # Active over every interval (k' - 1, k'] with start slot <= k' - 1 and k' <= end slot.
            start = position[payload[3]]
            slots["infusion_rate"][start + 1 : k + 1, payload[1]] += payload[2]
    slots["obs_index"] = np.asarray(slots["obs_index"], np.int64)
    return slots


def _merge_simultaneous(slots: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Join runs of slots at one time into one slot holding at most one observation (module docstring).

    Within a run the slots are already in processing order with the observation first, so the
    joined slot keeps it and sums the boluses; its input rate is that of the run's first slot
    (the interval before the run), the later ones covering zero-length intervals.
    """
    times, is_obs = slots["time"], slots["is_obs"]
    starts = [k for k in range(len(times)) if k == 0 or times[k] != times[k - 1] or is_obs[k]]
    if len(starts) == len(times):
        return slots
    group = np.cumsum(np.isin(np.arange(len(times)), starts)) - 1  # slot -> joined slot
    kept = ("time", "is_obs", "obs_value", "obs_observable", "obs_cens", "infusion_rate")
    out = {name: slots[name][starts] for name in kept}
    out["bolus"] = np.zeros((len(starts), slots["bolus"].shape[1]))
    np.add.at(out["bolus"], group, slots["bolus"])
    out["obs_index"] = slots["obs_index"]
    return out


def _split_long_gaps(slots: dict[str, np.ndarray], max_interval: float) -> dict[str, np.ndarray]:
    """Insert grid slots so that no interval (including the one from time 0) exceeds ``max_interval``."""
    edges = np.concatenate([[0.0], slots["time"]])
    pieces = np.maximum(1, np.ceil(np.diff(edges) / max_interval - 1e-9).astype(int))
    if np.all(pieces == 1):
        return slots
    out: dict[str, list] = {name: [] for name in ("time", "is_obs", "obs_value", "obs_observable", "obs_cens")}
    out["bolus"], out["infusion_rate"] = [], []
    for k, n in enumerate(pieces):
        for i in range(1, n):  # grid slots inside the gap: no action, same infusion rate
            out["time"].append(edges[k] + (edges[k + 1] - edges[k]) * i / n)
            out["is_obs"].append(False)
            out["obs_value"].append(0.0)
            out["obs_observable"].append(0)
            out["obs_cens"].append(0)
            out["bolus"].append(np.zeros_like(slots["bolus"][k]))
            out["infusion_rate"].append(slots["infusion_rate"][k])
        for name in out:
            out[name].append(slots[name][k])
    result = {name: np.asarray(values) for name, values in out.items()}
    result["is_obs"] = result["is_obs"].astype(bool)
    result["obs_observable"] = result["obs_observable"].astype(np.int32)
    result["obs_cens"] = result["obs_cens"].astype(np.int32)
    result["obs_index"] = slots["obs_index"]
    return result


def _check_time(t: float, sid: str, what: str, index: int) -> None:
    if not np.isfinite(t) or t < 0:
        raise TimelineError(f"subject {sid!r}, {what} {index}: TIME must be finite and >= 0, got {t}")
