"""Reproducible disturbance scenarios: meals for the glucose-insulin model.

A scenario turns patient indices into dose events the policy does not control (meal
carbohydrate into the gut compartment, CMT 2 of ``glucose_insulin``). Its random numbers come
from the counter-based stream ``(seed, SCENARIO, patient, meal number)``, so a patient eats the
same meals whatever the chunking and whichever policy is evaluated (common random numbers).

An *announced* scenario tells the policy about each disturbance when it happens: the rollout
starts an interaction at every event time and passes the amounts in ``Observation.announced``
(a patient entering carbohydrates into a bolus calculator). Unannounced disturbances act
without an interaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from medsim.policies.protocol import units_per_hour
from medsim.population.streams import Stream, patient_normal
from medsim.simulate.types import DoseEvents


@runtime_checkable
class Scenario(Protocol):
    """Disturbances as dose events: ``events(patient, horizon, *, time_unit) -> DoseEvents``."""

    announced: bool

    def events(self, patient: np.ndarray, horizon: float, *, time_unit: str) -> DoseEvents: ...


@dataclass(frozen=True)
class Meal:
    """A nominal meal: clock time (h after midnight) and carbohydrate (g)."""

    name: str
    clock_h: float
    carbs_g: float


DEFAULT_MEALS = (Meal("breakfast", 7.0, 45.0), Meal("lunch", 12.5, 70.0), Meal("dinner", 18.5, 80.0))


@dataclass(frozen=True)
class MealScenario:
    """Three meals a day with random times and sizes around nominal values.

    Each meal's time is its nominal clock time plus a Normal(0, ``time_sd_h``) shift clipped to
    +-2 SD (so meals keep their order); its size is log-normal with mean ``carbs_g`` and
    coefficient of variation ``size_cv``. Day boundaries follow ``start_clock_h`` (the clock
    time at model time 0).

    Parameters
    ----------
    meals : tuple of Meal
    time_sd_h : float
        SD of the meal-time shift (h).
    size_cv : float
        CV of the meal size.
    start_clock_h : float
        Clock time (h) at model time 0.
    seed : int
    cmt : int
        Meal compartment (``glucose_insulin``: 2, carbohydrate g).
    announced : bool
        Whether the policy is told about each meal at its time.
    """

    meals: tuple[Meal, ...] = DEFAULT_MEALS
    time_sd_h: float = 0.5
    size_cv: float = 0.2
    start_clock_h: float = 0.0
    seed: int = 0
    cmt: int = 2
    announced: bool = True

    def __post_init__(self) -> None:
        if self.time_sd_h < 0 or self.size_cv < 0:
            raise ValueError("meal scenario: time_sd_h and size_cv must be >= 0")
        for meal in self.meals:
            if not (0 <= meal.clock_h < 24 and meal.carbs_g >= 0):
                raise ValueError(f"meal {meal.name!r}: clock_h must be in [0, 24) and carbs_g >= 0")

    def events(self, patient: np.ndarray, horizon: float, *, time_unit: str) -> DoseEvents:
        """Meal events of the patients ``patient`` over ``[0, horizon)``.

        Parameters
        ----------
        patient : (n,) int
            Global patient indices.
        horizon : float
            Model time units.
        time_unit : str
            The model's time unit.

        Returns
        -------
        DoseEvents
            (n, E) boluses into ``cmt``, sorted by time per patient, padded with ``+inf``.
        """
        patient = np.asarray(patient, np.int64)
        z = np.stack(
            [
                patient_normal(self.seed, Stream.SCENARIO, patient, c, width=2)
                for c in range(self.n_columns(horizon, time_unit=time_unit))
            ],
            axis=1,
        ).reshape(patient.size, -1, 2)
        times, amounts = self.meal_table(z, horizon, time_unit=time_unit, xp=np)
        n = patient.size
        used = max(int(np.isfinite(times).sum(axis=1).max(initial=0)), 1)
        return DoseEvents.from_arrays(
            times[:, :used], np.full((n, used), self.cmt), amounts[:, :used], np.zeros((n, used))
        )

    def n_columns(self, horizon: float, *, time_unit: str) -> int:
        """Meals drawn per patient over ``[0, horizon)`` (every day that can hold one), at least 1."""
        days = int(np.ceil((self.start_clock_h + horizon / units_per_hour(time_unit)) / 24.0)) + 1
        return max(days * len(self.meals), 1)

    def meal_table(self, z, horizon: float, *, time_unit: str, xp=np):
        """Meal times and sizes, sorted by time, from the standard normals ``z`` of :meth:`events`.

        ``z``: ``(n, n_columns, 2)`` float64 draws of ``(seed, SCENARIO, patient, meal number)``
        (time shift, size). ``xp`` is numpy (:meth:`events`) or ``jax.numpy`` (the compiled
        environment, :mod:`medsim.policies.env.functional`, draws the meals of a new episode inside
        its step); both compute the same float64 expressions. Returns ``(times, amounts)``, each
        ``(n, n_columns)``, with ``+inf`` / 0 for meals outside the horizon.
        """
        per_h = units_per_hour(time_unit)
        m, count = len(self.meals), int(z.shape[1])
        if m == 0:
            return xp.full(z.shape[:2], np.inf), xp.zeros(z.shape[:2])
        day = np.repeat(np.arange(count // m, dtype=np.float64), m)  # column day * m + j: meal j of day
        clock = np.tile(np.array([meal.clock_h for meal in self.meals], np.float64), count // m)
        carbs = np.tile(np.array([meal.carbs_g for meal in self.meals], np.float64), count // m)
        sigma = np.sqrt(np.log1p(self.size_cv**2))
        shift = self.time_sd_h * xp.clip(z[..., 0], -2.0, 2.0)
        t = (24.0 * day + clock + shift - self.start_clock_h) * per_h
        # Log-normal with mean carbs_g: exp(sigma z - sigma^2 / 2) has mean 1.
        size = carbs * xp.exp(sigma * z[..., 1] - 0.5 * sigma**2)
        keep = (t >= 0) & (t < horizon)
        times = xp.where(keep, t, np.inf)
        amounts = xp.where(keep, size, 0.0)
        order = xp.argsort(times, axis=1, stable=True)
        return xp.take_along_axis(times, order, axis=1), xp.take_along_axis(amounts, order, axis=1)


def announced_at(events: DoseEvents, time: np.ndarray, tol: float) -> dict[int, np.ndarray]:
    """Amounts per compartment of the events at ``time`` (within ``tol``), (n,) each."""
    t_ev = np.asarray(events.time, np.float64)
    cmt = np.asarray(events.cmt)
    amount = np.asarray(events.amount, np.float64)
    now = np.abs(t_ev - np.asarray(time, np.float64)[:, None]) <= tol
    return {int(c): np.where(now & (cmt == c), amount, 0.0).sum(axis=1) for c in np.unique(cmt)}


def next_event_after(events: DoseEvents, time: np.ndarray, tol: float) -> np.ndarray:
    """Time of each patient's first event strictly after ``time`` (beyond ``tol``), ``inf`` if none."""
    t_ev = np.asarray(events.time, np.float64)
    later = t_ev > np.asarray(time, np.float64)[:, None] + tol
    return np.where(later, t_ev, np.inf).min(axis=1)
