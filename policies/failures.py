"""Patients a rollout cannot simulate: stop on the first one, or count them (``on_failure``).

A virtual patient drawn from a model's invalid region (a prior draw whose glucose passes the
model's physical range under a controller, a non-finite parameter) makes the simulator refuse
its interval (:mod:`medsim.simulate.checks`). With ``on_failure="stop"`` (the default) the
rollout raises the error naming the patient; the message says how to count such patients
instead. With ``on_failure="count"`` the patient is frozen where the refused interval started
(its later intervals are not simulated, so nothing of it reaches the other patients' numbers)
and recorded in :attr:`medsim.policies.result.RolloutResult.failed_time` and ``failure_reason``;
the risk estimates count it as violating every bound from that time on
(:mod:`medsim.policies.risk.events`), and summaries without a conservative value exclude it.

Both option loops use what is here: the compiled loop flags the patients inside its program
(:func:`medsim.policies.device_interval.refusal`); the host loop finds them one at a time from
the simulator's errors and re-runs the interval without them (:func:`refused_patient`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from medsim.policies.interaction import Interaction
from medsim.policies.protocol import Option, PolicyError
from medsim.policies.result import NON_FINITE, PER_BOUND_FILL, RUNAWAY, check_on_failure
from medsim.simulate.checks import NonFiniteStateError, RunawayStateError, SimulationError
from medsim.transfer import to_device

__all__ = [
    "COUNT_HINT",
    "Failures",
    "check_on_failure",
    "empty_row",
    "hinted",
    "refused_patient",
    "stand_in",
    "unusable",
    "with_hint",
]

COUNT_HINT = (
    "to count such patients as violating every bound instead of stopping, use on_failure='count' "
    "(medsim risk --on-failure count)"
)


class Failures(NamedTuple):
    """Failed patients of a chunk: ``time`` (n,) start of the refused interval (``inf``: none) and
    ``reason`` (n,) int8 code of :data:`medsim.policies.result.FAILURE_REASONS` (0: none)."""

    time: np.ndarray
    reason: np.ndarray

    @classmethod
    def none(cls, n: int) -> Failures:
        return cls(np.full(n, np.inf), np.zeros(n, np.int8))

    @property
    def any(self) -> bool:
        return bool(np.any(self.reason > 0))

    def mark(self, who: np.ndarray, t: np.ndarray, code: int) -> None:
        """Record the patients ``who`` (bool (n,)) as failed at ``t`` for reason ``code``."""
        new = who & (self.reason == 0)
        self.time[new] = np.asarray(t, float)[new]
        self.reason[new] = code

    def take(self, n_real: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n_real`` patients' times and reasons (a chunk's real patients)."""
        return self.time[:n_real].copy(), self.reason[:n_real].copy()


def with_hint(err: Exception) -> Exception:
    """``err`` with :data:`COUNT_HINT` added to its message (same type and attributes), or ``err``
    itself when it is not a patient's failure."""
    if isinstance(err, SimulationError):
        out = type(err)(f"{err}; {COUNT_HINT}", patient=err.patient, name=err.name, value=err.value, params=err.params)
    elif isinstance(err, PolicyError) and "patient" in str(err):
        out = type(err)(f"{err}; {COUNT_HINT}")
    else:
        return err
    return out.with_traceback(err.__traceback__)


@contextmanager
def hinted(enabled: bool = True) -> Iterator[None]:
    """Re-raise a patient's failure inside the block :func:`with_hint` (``on_failure="stop"``); any
    other error, or every error when not ``enabled``, as it is."""
    try:
        yield
    except (SimulationError, PolicyError) as err:
        out = with_hint(err) if enabled else err
        if out is err:
            raise
        raise out from None


def unusable(option: Option, active: np.ndarray) -> np.ndarray:
    """(n,) bool: active patients whose option :meth:`Option.validated` would refuse (an interval
    not > 0, a dose not finite and >= 0), as the compiled loop flags them."""
    n = active.shape[0]
    with np.errstate(invalid="ignore"):
        bad = ~(np.broadcast_to(np.asarray(option.interval, float), (n,)) > 0)
        for values in (option.bolus, option.rate):
            for a in values.values():
                a = np.broadcast_to(np.asarray(a, float), (n,))
                bad = bad | ~((a >= 0) & np.isfinite(a))
    return active & bad


def refused_patient(err: SimulationError, first: int, n: int) -> tuple[int, int]:
    """Chunk position and reason code of the patient a simulator error names (global index
    ``err.patient``; the chunk starts at global index ``first`` and has ``n`` patients).

    Raises
    ------
    SimulationError
        ``err`` itself (with :data:`COUNT_HINT`) when it names no patient of the chunk.
    """
    i = int(err.patient) - int(first)
    if not (0 <= i < n and isinstance(err, NonFiniteStateError | RunawayStateError)):
        raise with_hint(err) from err
    return i, NON_FINITE if isinstance(err, NonFiniteStateError) else RUNAWAY


def stand_in(x: dict, theta: dict, dead: np.ndarray, real: np.ndarray) -> tuple[dict, dict]:
    """``x`` and ``theta`` with the ``dead`` patients' entries (frozen ones, padding) replaced by the
    first live real patient's, so that the simulator's checks of every patient it advances pass for
    patients whose interval is a no-op (the host loop); unchanged when no patient is alive."""
    alive = np.flatnonzero(real & ~dead)
    if not alive.size:
        return x, theta
    donor = int(alive[0])

    def swap(v):
        a = np.asarray(v)
        if a.ndim == 0 or a.shape[0] != dead.shape[0]:
            return v
        return to_device(np.where(dead, a[donor], a), a.dtype)

    return {s: swap(v) for s, v in x.items()}, {p: swap(v) for p, v in theta.items()}


def empty_row(t: np.ndarray, measured: dict, true: dict, cmts: tuple, n_bounds: int) -> Interaction:
    """An interaction in which no patient is simulated (every one frozen): the record of a chunk
    whose every patient failed before its first interval, as the compiled loop records it."""
    n = t.shape[0]
    nan = {o: np.full(n, np.nan, np.float32) for o in true}
    zeros = np.zeros(n)
    treatment = {f"{kind}_cmt{c}": zeros for kind in ("bolus", "rate") for c in cmts}
    fill = {
        name: np.full((n, n_bounds), value, np.bool_ if isinstance(value, bool) else np.float32)
        for name, value in PER_BOUND_FILL.items()
    }
    return Interaction(
        t_start=t,
        t_end=t,
        mask=np.zeros(n, bool),
        measured=measured,
        true_start=true,
        obs_min=nan,
        obs_max=dict(nan),
        treatment=treatment,
        out_of_support=zeros,
        **fill,
    )
