"""Forecast scores of the calibration gate against hand computations and reference formulas."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from medsim.inference.checks import scores
from medsim.inference.checks.calibration_gate import design_effect, event_figures


def test_pit_counts_ties_as_one_half():
    draws = np.array([1.0, 2.0, 3.0, 4.0])
    assert scores.pit(draws, np.float64(2.5)) == 0.5
    assert scores.pit(draws, np.float64(2.0)) == pytest.approx((1 + 0.5) / 4)
    assert scores.pit(draws, np.float64(0.0)) == 0.0 and scores.pit(draws, np.float64(9.0)) == 1.0
    # one PIT per column: draws (R, n), observations (n,)
    assert scores.pit(np.stack([draws, draws + 10], axis=1), np.array([2.5, 12.5])).tolist() == [0.5, 0.5]


def test_pit_of_a_calibrated_forecast_is_uniform():
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((400, 2000))
    u = scores.pit(draws, rng.standard_normal(2000))
    # Kolmogorov-Smirnov at 1 %: a uniform sample fails it with probability 0.01 (the draw
    # discreteness, 1/400, is far below the KS critical distance 1.63 / sqrt(2000) = 0.036)
    assert stats.kstest(u, "uniform").pvalue > 0.01


def test_interval_score_by_hand():
    # Gneiting & Raftery (2007) eq. 43 with alpha = 0.1: width + 20 x the miss distance
    lo, hi = np.zeros(3), np.full(3, 2.0)
    y = np.array([1.0, 3.0, -0.5])
    assert scores.interval_score(lo, hi, y, 0.9).tolist() == pytest.approx([2.0, 2.0 + 20.0, 2.0 + 10.0])


def test_coverage_and_central_intervals():
    draws = np.arange(101.0)[:, None] * np.ones((1, 2))
    lo, hi = scores.central_intervals(draws, 0.9)
    # the 5 % and 95 % quantiles of 0..100 (floating-point interpolation: 1e-12)
    assert lo == pytest.approx([5.0, 5.0], abs=1e-12) and hi == pytest.approx([95.0, 95.0], abs=1e-12)
    assert scores.coverage(draws, np.array([50.0, 99.0]), 0.9).tolist() == [True, False]
    with pytest.raises(ValueError, match="level"):
        scores.central_intervals(draws, 1.0)


def test_crps_equals_the_pairwise_definition():
    rng = np.random.default_rng(1)
    draws = rng.gamma(2.0, size=(57, 4))
    y = np.array([0.1, 1.0, 2.5, 9.0])
    brute = np.abs(draws - y).mean(axis=0) - 0.5 * np.abs(draws[:, None, :] - draws[None, :, :]).mean(axis=(0, 1))
    # the same sums in a different order: agreement to rounding (1e-12 relative)
    assert scores.crps(draws, y) == pytest.approx(brute, rel=1e-12)
    # a point forecast scores its absolute error
    assert scores.crps(np.full((5, 1), 3.0), np.array([1.0])).tolist() == [2.0]


def test_crps_matches_the_normal_closed_form():
    # Gneiting et al. (2005, MWR 133:1098) eq. 5: CRPS(N(mu, s^2), y) = s [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)]
    s, y = 2.0, np.array([-1.0, 0.0, 3.0])
    r = 4000
    draws = s * stats.norm.ppf((np.arange(1, r + 1) - 0.5) / r)[:, None] * np.ones((1, 3))
    z = y / s
    exact = s * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    # quantile draws (no Monte Carlo noise): the empirical CRPS differs by O(s / R) = 5e-4
    assert scores.crps(draws, y) == pytest.approx(exact, abs=2e-3)


def test_brier_auc_and_reliability_by_hand():
    p = np.array([0.9, 0.8, 0.3, 0.1])
    o = np.array([True, False, True, False])
    assert scores.brier(p, o) == pytest.approx((0.01 + 0.64 + 0.49 + 0.01) / 4)
    # event forecasts {0.9, 0.3} against non-events {0.8, 0.1}: 3 of 4 pairs ordered right
    assert scores.auc(p, o) == 0.75
    assert scores.auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5  # a tie counts one half
    assert scores.auc(p, np.zeros(4, bool)) is None
    bins = scores.reliability(p, o, n_bins=2)
    assert [(b.n, b.mean_forecast, b.observed_rate) for b in bins] == [(2, 0.2, 0.5), (2, pytest.approx(0.85), 0.5)]
    assert scores.reliability(np.array([1.0]), np.array([True]), n_bins=5)[-1].n == 1  # 1 is in the last bin
    with pytest.raises(ValueError, match="brier"):
        scores.brier(p, o[:2])


def test_brier_skill_against_the_constant_forecast():
    o = np.array([True, False, False, False])
    figures, bins = event_figures(np.full(4, 0.25), o)
    # forecasting the event rate for everyone is the reference itself: skill 0
    assert figures["brier"] == pytest.approx(figures["brier_constant"]) and figures["brier_skill"] == pytest.approx(0)
    assert figures["n_events"] == 1 and figures["n_no_events"] == 3 and sum(b.n for b in bins) == 4
    sharp, _ = event_figures(np.array([0.9, 0.1, 0.1, 0.1]), o)
    assert sharp["brier_skill"] > 0 and sharp["auc"] == 1.0


def test_design_effect_of_clustered_misses():
    subject = np.repeat(np.arange(10), 10)
    mixed = np.tile(np.arange(10) < 9, 10)  # 90 % inside in every subject: no clustering
    assert design_effect(mixed, subject) == pytest.approx(1.0)
    clustered = subject < 9  # one subject misses everything, the others nothing
    # the rate 0.9 is the same; its variance is that of 10 clusters, not 100 points
    assert design_effect(clustered, subject) > 5
    assert design_effect(np.ones(100, bool), subject) == 1.0
