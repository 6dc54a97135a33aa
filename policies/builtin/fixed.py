"""``fixed``: the same dose every ``every`` time units, with a fixed measurement schedule.

The regimen of a label or a protocol: ``dose`` into compartment ``cmt`` at ``start``,
``start + every``, ... (``n_doses`` of them, or until the horizon), as a bolus or, with
``duration > 0``, as a zero-order infusion of ``dose / duration`` over ``duration``.
Measurements are taken at each dose time (a pre-dose trough: the observation at an interaction
precedes its bolus) unless ``measure_every`` or ``measure_at`` give another schedule.

Interactions happen at the union of dose times, infusion ends and measurement times; the
treatment never depends on the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from medsim.policies.array_step import host_step
from medsim.policies.protocol import Observation, Option, next_on_grid, on_grid, spec_string


@dataclass(frozen=True)
class FixedDose:
    """Fixed dosing regimen (see the module docstring).

    Parameters
    ----------
    dose : float
        Amount per dose (dose unit of ``cmt``, e.g. mg).
    every : float
        Dosing interval (model time unit, e.g. h).
    cmt : int
        Dose compartment.
    duration : float
        0 for a bolus; otherwise infusion duration (model time unit), ``< every``.
    n_doses : int
        Number of doses (0 = until the horizon).
    start : float
        Time of the first dose.
    measure_every : float
        Measurement interval (0 = at each dose time).
    measure_at : tuple of float
        Explicit measurement times (override ``measure_every``).
    """

    dose: float = 100.0
    every: float = 12.0
    cmt: int = 1
    duration: float = 0.0
    n_doses: int = 0
    start: float = 0.0
    measure_every: float = 0.0
    measure_at: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not (self.dose >= 0 and np.isfinite(self.dose)):
            raise ValueError(f"fixed: dose must be finite and >= 0, got {self.dose}")
        if not self.every > 0:
            raise ValueError(f"fixed: every must be > 0, got {self.every}")
        if not 0 <= self.duration < self.every:
            raise ValueError(f"fixed: duration must be in [0, every={self.every}), got {self.duration}")
        if self.n_doses < 0 or self.measure_every < 0 or self.start < 0:
            raise ValueError("fixed: n_doses, measure_every and start must be >= 0")
        object.__setattr__(self, "measure_at", tuple(sorted(float(t) for t in self.measure_at)))

    @property
    def name(self) -> str:
        changed = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}
        return spec_string("fixed", changed)

    @property
    def _tol(self) -> float:
        # Interaction times are sums of float intervals; a relative tolerance absorbs rounding.
        return 1e-6 * max(1.0, self.every)

    def _last_dose_index(self) -> float:
        return np.inf if self.n_doses == 0 else float(self.n_doses - 1)

    def _next_measurement(self, t: Any, next_dose: Any, xp: Any = np) -> Any:
        if self.measure_at:
            grid = xp.asarray(self.measure_at, xp.float64)
            i = xp.searchsorted(grid, t + self._tol, side="right")
            return xp.where(i < grid.size, grid[xp.minimum(i, grid.size - 1)], xp.inf)
        if self.measure_every > 0:
            return next_on_grid(t, self.start, self.measure_every, self._tol, xp)
        return next_dose

    def dose_times_after(self, t: Any, xp: Any = np) -> Any:
        """The next dose time strictly after ``t`` (``inf`` when the regimen has ended)."""
        nxt = next_on_grid(t, self.start, self.every, self._tol, xp)
        index = xp.round((nxt - self.start) / self.every)
        return xp.where(index <= self._last_dose_index(), nxt, xp.inf)

    def init(self, n: int, *, seed: int) -> None:
        """Memoryless: the schedule is a function of time."""
        return None

    def act(self, state: None, obs: Observation, *, rng: np.random.Generator) -> tuple[None, Option]:
        return host_step(self, state, obs)

    def array_step(self, state: None, obs: Observation, xp: Any) -> tuple[None, Option]:
        """One pure step on arrays of the namespace ``xp`` (``numpy``, or ``jax.numpy`` inside the
        compiled loop of :mod:`medsim.policies.device_loop`); :meth:`act` evaluates it with XLA
        (:func:`medsim.policies.array_step.host_step`), so both loops compute the same numbers."""
        t = xp.asarray(obs.time, xp.float64)
        tol = self._tol
        index = xp.round((t - self.start) / self.every)
        dose_now = on_grid(t, self.start, self.every, tol, xp) & (index <= self._last_dose_index())
        next_dose = self.dose_times_after(t, xp)
        # The dose of the current cycle started at the last grid point at or before t.
        last_dose = self.start + xp.maximum(xp.floor((t + tol - self.start) / self.every), 0.0) * self.every
        last_index_ok = xp.round((last_dose - self.start) / self.every) <= self._last_dose_index()
        stops = xp.full_like(t, xp.inf)
        rate = {}
        bolus = {}
        if self.duration > 0:
            infusing = (t >= self.start - tol) & last_index_ok & (t < last_dose + self.duration - tol)
            rate[self.cmt] = xp.where(infusing, self.dose / self.duration, 0.0)
            stops = xp.where(infusing, last_dose + self.duration, xp.inf)
        else:
            bolus[self.cmt] = xp.where(dose_now, self.dose, 0.0)
        next_measure = self._next_measurement(t, next_dose, xp)
        following = xp.minimum(xp.minimum(next_dose, stops), next_measure)
        measure_next = xp.isclose(following, next_measure, rtol=0.0, atol=tol)
        return None, Option(interval=following - t, bolus=bolus, rate=rate, measure_next=measure_next)
