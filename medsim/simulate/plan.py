"""Host-side planning of one ``advance`` call: validation, dose bookkeeping, step counts, buckets.

Everything here runs in numpy on the concrete inputs before the compiled kernel is called. It
turns the caller's ``t0``/``t1``/:class:`DoseEvents`/``rates`` into what the kernel consumes:

* doses at ``t0`` (boluses exactly at the interval start, added before the first sub-step);
* interior events as columns ``(E, B)`` in state units, each column of one kind for one target
  state (its *layout*, a static part of the compiled kernel): a bolus column adds ``value`` to the
  state when a patient's clock reaches ``time``; an infusion column adds ``value`` (a rate) to the
  state's derivative on ``[time, end)``. Infusions that started before ``t0`` but are still
  running count from ``t0``. Columns are grouped by layout and each group is padded to a size in
  1, 2, 3, 4, 6, 8, 12, ... so that recompiles stay rare;
* constant extra input rates per state (a pump's basal rate, a policy's infusion);
* an upper bound on the number of sub-steps: each patient needs ``ceil((t1 - t0) / dt)`` grid
  steps plus one extra per breakpoint (event time or infusion end) inside ``(t0, t1)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.simulate.device import CACHE_BLOCK
from medsim.simulate.types import DoseEvents

# A breakpoint within this fraction of dt of a grid point is merged with it (no sliver steps).
GRID_TOLERANCE = 1e-3

# Most sub-steps one interval may take (the compiled loop counts pairs of them in int32).
MAX_STEPS = 2**30


@dataclass(frozen=True)
class IntervalPlan:
    """Kernel inputs for one call (numpy, float32; ``B`` patients, ``E`` interior event columns)."""

    t0: np.ndarray  # (B,)
    t1: np.ndarray  # (B,)
    start: dict[str, np.ndarray]  # state -> (B,) amount added at t0 (state units)
    rate: dict[str, np.ndarray]  # state -> (B,) constant input rate (state units / time)
    event_time: np.ndarray  # (E, B) bolus time or infusion start; +inf padding
    event_end: np.ndarray  # (E, B) infusion end; -inf for boluses and padding
    event_value: np.ndarray  # (E, B) bolus amount (state units) or infusion rate (state units / time)
    event_layout: tuple[tuple[str, bool], ...]  # per column: (target state, is an infusion)
    n_steps: int  # sub-steps that cover every patient's interval

    @property
    def n_events(self) -> int:
        return int(self.event_time.shape[0])


def as_batch(value, batch: int, name: str, dtype=np.float32) -> np.ndarray:
    """Broadcast a scalar or ``(B,)`` array-like to ``(B,)`` or raise naming ``name``."""
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        return np.full(batch, arr, dtype=dtype)
    if arr.shape != (batch,):
        raise ValueError(f"{name}: expected a scalar or shape ({batch},), got shape {arr.shape}")
    return arr


def _target(model: PhysiologyModel, cmt: int, where: str) -> str:
    if cmt not in model.dose_targets:
        valid = sorted(model.dose_targets)
        raise ValueError(f"{where}: model {model.name!r} has no dose compartment {cmt}; valid CMT: {valid}")
    return model.dose_targets[cmt]


def _events_arrays(events: DoseEvents, batch: int) -> tuple[np.ndarray, ...]:
    arrays = [np.asarray(a) for a in (events.time, events.cmt, events.amount, events.rate)]
    for name, a in zip(("time", "cmt", "amount", "rate"), arrays, strict=True):
        if a.ndim != 2 or a.shape[0] != batch:
            raise ValueError(f"events.{name}: expected shape ({batch}, E), got {a.shape}")
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"events: time/cmt/amount/rate must share one shape, got {[a.shape for a in arrays]}")
    time, cmt, amount, rate = arrays
    time = time.astype(np.float32)
    amount = amount.astype(np.float32)
    rate = rate.astype(np.float32)
    real = np.isfinite(time)
    if np.isnan(time).any():
        row, col = np.argwhere(np.isnan(time))[0]
        raise ValueError(f"events.time[{row}, {col}] is NaN; use +inf for padding")
    for name, a, ok in (
        ("amount", amount, np.isfinite(amount) & (amount >= 0)),
        ("rate", rate, np.isfinite(rate) & (rate >= 0)),
    ):
        bad = real & ~ok
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"events.{name}[{row}, {col}] = {a[row, col]}: expected a finite value >= 0")
    return time, cmt.astype(np.int64), amount, rate


def plan_interval(
    model: PhysiologyModel,
    dt: float,
    t0,
    t1,
    events: DoseEvents | None,
    rates: Mapping[int, object] | None,
    batch: int,
) -> IntervalPlan:
    """Validate one call's timing and doses and lay them out for the kernel.

    Raises
    ------
    ValueError
        Naming the argument (and event row/column) that is malformed: non-finite times,
        ``t1 < t0``, an unknown compartment, a negative amount or rate.
    """
    t0 = as_batch(t0, batch, "t0")
    t1 = as_batch(t1, batch, "t1")
    for name, a in (("t0", t0), ("t1", t1)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name}[{int(np.argmin(np.isfinite(a)))}] is not finite")
    if (t1 < t0).any():
        i = int(np.argmax(t1 < t0))
        raise ValueError(f"t1[{i}] = {t1[i]} is before t0[{i}] = {t0[i]}")
    targets = tuple(dict.fromkeys(model.dose_targets.values()))
    zeros = np.zeros(batch, np.float32)
    start = {s: zeros.copy() for s in targets}
    rate = {s: zeros.copy() for s in targets}
    for cmt, r in (rates or {}).items():
        s = _target(model, int(cmt), f"rates[{cmt}]")
        r = as_batch(r, batch, f"rates[{cmt}]")
        if not (np.isfinite(r).all() and (r >= 0).all()):
            raise ValueError(f"rates[{cmt}]: expected finite rates >= 0 (dose units per {model.time_unit})")
        rate[s] = rate[s] + np.float32(model.dose_scale.get(int(cmt), 1.0)) * r

    cols: list[dict] = []
    n_break = np.zeros(batch, np.int64)
    if events is not None:
        time, cmt, amount, inf_rate = _events_arrays(events, batch)
        is_inf = inf_rate > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            end = np.where(is_inf, time + amount / np.where(is_inf, inf_rate, 1.0), -np.inf).astype(np.float32)
        lo, hi = t0[:, None], t1[:, None]
        at_start = ~is_inf & (time == lo) & (hi > lo)
        bolus_inside = ~is_inf & (time > lo) & (time < hi)
        inf_acting = is_inf & (time < hi) & (end > lo) & (end > time)
        target_of = np.full(cmt.shape, -1, np.int64)  # index into `targets`; -1 for padding
        scale_of = np.ones(cmt.shape, np.float32)
        for c in np.unique(cmt[np.isfinite(time)]):
            s = _target(model, int(c), f"events.cmt (value {int(c)})")
            target_of[cmt == c] = targets.index(s)
            scale_of[cmt == c] = model.dose_scale.get(int(c), 1.0)
            start[s] = start[s] + np.where(at_start & (cmt == c), scale_of * amount, 0.0).sum(axis=1, dtype=np.float32)
        # Interior columns: one per (event column, target state, kind) acting in some patient's window.
        for j in range(time.shape[1]):
            for ti, s in enumerate(targets):
                mine = target_of[:, j] == ti
                for infusion, acting in ((False, bolus_inside[:, j] & mine), (True, inf_acting[:, j] & mine)):
                    if not acting.any():
                        continue
                    value = scale_of[:, j] * (inf_rate[:, j] if infusion else amount[:, j])
                    cols.append(
                        {
                            "layout": (s, infusion),
                            "time": np.where(acting, time[:, j], np.inf),
                            "end": np.where(acting, end[:, j], -np.inf) if infusion else np.full(batch, -np.inf),
                            "value": np.where(acting, value, 0.0),
                        }
                    )
                    n_break += acting & (time[:, j] > t0) if infusion else acting
                    if infusion:
                        n_break += acting & (end[:, j] < t1)
    event_time, event_end, event_value, layout = _columns(cols, batch)
    span = float(np.max((t1.astype(np.float64) - t0) / dt)) if batch else 0.0
    if not span < MAX_STEPS:  # the kernel counts sub-steps in int32
        raise ValueError(
            f"an interval of {float(np.max(t1.astype(np.float64) - t0)):g} {model.time_unit} needs {span:.3g} "
            f"sub-steps of dt = {dt:g}, more than the {MAX_STEPS} one call can take: use a larger dt or "
            "shorter interaction intervals"
        )
    n_steps = math.ceil(span - GRID_TOLERANCE) + int(n_break.max(initial=0)) + 1
    return IntervalPlan(t0, t1, start, rate, event_time, event_end, event_value, layout, max(n_steps, 1))


def _columns(cols: list[dict], batch: int):
    """Group columns by layout, pad each group to :func:`bucket_events` columns, stack to ``(E, B)``."""
    out = []
    for layout in sorted({c["layout"] for c in cols}):
        group = [c for c in cols if c["layout"] == layout]
        inert = {"layout": layout, "time": np.full(batch, np.inf), "end": np.full(batch, -np.inf)}
        group += [{**inert, "value": np.zeros(batch)}] * (bucket_events(len(group)) - len(group))
        out += group

    def stack(key):
        return np.stack([c[key] for c in out]).astype(np.float32) if out else np.zeros((0, batch), np.float32)

    return stack("time"), stack("end"), stack("value"), tuple(c["layout"] for c in out)


def bucket_events(n: int) -> int:
    """Event columns of one layout are padded to 1, 2, 3, 4, 6, 8, 12, 16, ... (recompiles stay rare)."""
    if n <= 2:
        return n
    top = 1 << (n - 1).bit_length()
    return top * 3 // 4 if n <= top * 3 // 4 else top


def bucket_batch(n: int, chunk_size: int, multiple: int = 1, block: int = CACHE_BLOCK) -> int:
    """Compiled batch size for ``n`` patients: at most 25 % padding, four sizes per octave.

    The size is a multiple of ``multiple`` (the number of devices a chunk is split over), and each
    device's share splits into ``ceil(share / block)`` equal cache blocks whose size is a multiple
    of 8 (see :func:`medsim.simulate.kernel.make_chunk_fn`).
    """
    if n >= chunk_size:
        size = chunk_size
    else:
        quantum = max(1 << max(n.bit_length() - 3, 0), 8)
        size = min(-(-n // quantum) * quantum, chunk_size)
    share = -(-size // multiple)
    n_blocks = -(-share // block)
    share = n_blocks * (-(-share // (8 * n_blocks)) * 8)
    return share * multiple


def bucket_steps(n: int) -> int:
    """Static sub-step count for saved paths: even, at most 12.5 % above ``n``."""
    pairs = -(-n // 2)
    quantum = 1 << max(pairs.bit_length() - 4, 0)
    return 2 * (-(-pairs // quantum) * quantum)
