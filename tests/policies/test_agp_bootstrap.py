"""The AGP's cluster-bootstrap median: the blocked weighted median equals the plain cumulative sum.

The reference below is the implementation the AGP used before the blocked one (a cumulative sum of
float weights over all sorted values of a bin, per replicate). Weights are integer resampling
counts, so both are exact and the tests ask for equality, not closeness.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsim.policies.risk import agp
from medsim.policies.risk.agp import _weighted_medians, ambulatory_profile


def _reference(values: np.ndarray, draw: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Lower weighted median by a cumulative sum over every value (the former implementation)."""
    weights = counts[:, draw].astype(np.float64)
    cum = np.cumsum(weights, axis=1)
    half = 0.5 * cum[:, -1:]
    idx = np.minimum((cum < half).sum(axis=1), values.size - 1)
    return values[idx]


def _case(rng: np.random.Generator, m: int, n_draws: int, n_reps: int, ties: bool):
    raw = rng.integers(0, 7, m) if ties else rng.normal(size=m)
    order = np.argsort(raw, kind="stable")
    values = np.asarray(raw, np.float64)[order]
    draw = rng.integers(0, n_draws, m)[order]
    counts = rng.multinomial(n_draws, np.full(n_draws, 1.0 / n_draws), size=n_reps)
    return values, draw, counts


@pytest.mark.parametrize("n_draws", [1, 2, 3, 50])
@pytest.mark.parametrize("m", [1, 2, 15, 16, 17, 257, 3000])
@pytest.mark.parametrize("ties", [False, True])
def test_blocked_median_equals_the_cumulative_sum(n_draws, m, ties):
    rng = np.random.default_rng([n_draws, m, ties])
    values, draw, counts = _case(rng, m, n_draws, 200, ties)
    np.testing.assert_array_equal(_weighted_medians(values, draw, counts), _reference(values, draw, counts))


def test_replicates_of_zero_weight_take_the_smallest_value():
    # A bin whose readings all come from draws that a replicate did not resample.
    values = np.array([1.0, 2.0, 3.0, 4.0])
    draw = np.array([0, 0, 1, 1])
    counts = np.array([[0, 0, 2], [2, 0, 0], [0, 2, 0], [1, 1, 0]])
    expected = _reference(values, draw, counts)
    np.testing.assert_array_equal(expected, [1.0, 1.0, 3.0, 2.0])
    np.testing.assert_array_equal(_weighted_medians(values, draw, counts), expected)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-3, 3), min_size=1, max_size=300),
    st.integers(1, 6),
    st.integers(1, 8),
    st.integers(0, 2**32 - 1),
)
def test_blocked_median_property(raw, n_draws, n_reps, seed):
    rng = np.random.default_rng(seed)
    values = np.sort(np.asarray(raw, np.float64))
    draw = rng.integers(0, n_draws, values.size)
    counts = rng.integers(0, 4, (n_reps, n_draws))  # any non-negative integer weights, zeros included
    got = _weighted_medians(values, draw, counts)
    np.testing.assert_array_equal(got, _reference(values, draw, counts))
    # The definition itself: less than half the weight lies strictly before the median's position.
    weights = counts[:, draw]
    total = weights.sum(axis=1)
    for r in range(n_reps):
        i = int(np.searchsorted(values, got[r], side="left"))
        assert 2 * weights[r, :i].sum() < total[r] or (total[r] == 0 and i == 0)


def test_ambulatory_profile_unchanged_by_the_blocked_median(monkeypatch):
    rng = np.random.default_rng(7)
    n, step_h = 60, 5 / 60
    trace = np.round(120 + 30 * rng.normal(size=(n, int(24 / step_h))))  # rounded: ties across patients
    draw = rng.integers(0, 9, n)
    fast = ambulatory_profile(trace, step_h, draw, seed=3)
    monkeypatch.setattr(agp, "_weighted_medians", _reference)
    slow = ambulatory_profile(trace, step_h, draw, seed=3)
    assert fast == slow
    assert np.isfinite(fast.median_lower).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-2, 2), min_size=1, max_size=200), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_order_of_equal_values_does_not_change_the_medians(raw, n_draws, seed):
    """The AGP sorts each bin's readings with numpy's default (unstable) sort: equal readings of
    different draws may come in any order, and the medians must not depend on it."""
    rng = np.random.default_rng(seed)
    values = np.sort(np.asarray(raw, np.float64))
    draw = rng.integers(0, n_draws, values.size)
    counts = rng.integers(0, 4, (5, n_draws))
    shuffled = draw.copy()
    for v in np.unique(values):  # permute the draws within each run of equal values
        run = np.flatnonzero(values == v)
        shuffled[run] = rng.permutation(draw[run])
    np.testing.assert_array_equal(_weighted_medians(values, shuffled, counts), _weighted_medians(values, draw, counts))
