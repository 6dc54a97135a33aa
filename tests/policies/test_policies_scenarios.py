"""Meal scenarios: times and sizes around the nominal meals, reproducible per patient."""

from __future__ import annotations

import numpy as np
import pytest

from medsim.policies.scenarios import DEFAULT_MEALS, Meal, MealScenario, announced_at, next_event_after


def test_meals_fall_in_their_windows_with_the_nominal_mean_size():
    scenario = MealScenario(seed=3, time_sd_h=0.5, size_cv=0.2)
    n = 4000
    ev = scenario.events(np.arange(n), 24 * 60.0, time_unit="min")
    time, amount = np.asarray(ev.time, float), np.asarray(ev.amount, float)
    assert time.shape == (n, 3) and (np.asarray(ev.cmt) == 2).all() and (np.asarray(ev.rate) == 0).all()
    for j, meal in enumerate(DEFAULT_MEALS):
        # Shifts are clipped to +-2 SD (1 h) so meals keep their order.
        assert (np.abs(time[:, j] / 60 - meal.clock_h) <= 1.0 + 1e-5).all()
        # Log-normal sizes with mean carbs_g and CV 0.2: the sample mean has SE 0.2 carbs / sqrt(n); 4 SE.
        assert abs(amount[:, j].mean() - meal.carbs_g) < 4 * 0.2 * meal.carbs_g / np.sqrt(n)
        assert abs(amount[:, j].std() / meal.carbs_g - 0.2) < 0.02  # SE of the CV ~ 0.2/sqrt(2n) = 0.002


def test_same_patient_same_meals_whatever_the_batch():
    scenario = MealScenario(seed=1)
    whole = scenario.events(np.arange(50), 48.0, time_unit="h")
    part = scenario.events(np.arange(20, 25), 48.0, time_unit="h")
    np.testing.assert_array_equal(np.asarray(whole.time)[20:25], np.asarray(part.time))
    np.testing.assert_array_equal(np.asarray(whole.amount)[20:25], np.asarray(part.amount))
    other = MealScenario(seed=2).events(np.arange(50), 48.0, time_unit="h")
    assert not np.array_equal(np.asarray(other.time), np.asarray(whole.time))
    assert np.asarray(whole.time).shape[1] == 6  # two days, three meals a day


def test_horizon_and_clock_offset_and_helpers():
    scenario = MealScenario(seed=0, time_sd_h=0.0, size_cv=0.0, start_clock_h=6.0)
    ev = scenario.events(np.arange(2), 8.0, time_unit="h")  # 06:00-14:00: breakfast 07:00, lunch 12:30
    np.testing.assert_allclose(np.asarray(ev.time), [[1.0, 6.5], [1.0, 6.5]])
    np.testing.assert_allclose(np.asarray(ev.amount), [[45.0, 70.0], [45.0, 70.0]])
    np.testing.assert_allclose(announced_at(ev, np.array([1.0, 2.0]), 1e-9)[2], [45.0, 0.0])
    np.testing.assert_allclose(next_event_after(ev, np.array([1.0, 7.0]), 1e-9), [6.5, np.inf])


def test_bad_meals_are_rejected():
    with pytest.raises(ValueError, match="clock_h must be in"):
        MealScenario(meals=(Meal("late", 25.0, 10.0),))
