"""Differences of efficacy metrics are not clipped to [-1, 1] as risk differences are.

The glucose example crashed when the total insulin of two policies differed by several units
(``lower -1.0 exceeds upper -5.7``): the probability bounds were applied to a dose in U.
"""

from __future__ import annotations

import numpy as np

from medsim.policies.risk.compare import _difference


def test_a_dose_difference_keeps_its_interval():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(20), 5)
    dose_a = 30.0 + rng.normal(0.0, 1.0, 100)
    dose_b = dose_a + 8.0 + rng.normal(0.0, 0.5, 100)  # policy b gives ~8 U more
    est = _difference(dose_a, dose_b, clusters, clusters, True, level=0.95, seed=0, probability=False)[0]
    assert est.lower < est.value < est.upper < -1.0
    assert abs(est.value + 8.0) < 0.5  # 8 U, within 5 SE of the mean of 100 N(0, 0.5) noises


def test_a_risk_difference_stays_in_minus_one_to_one():
    clusters = np.repeat(np.arange(10), 3)
    pa = np.linspace(0.9, 1.0, 30)
    pb = np.linspace(0.0, 0.2, 30)
    est = _difference(pa, pb, clusters, clusters, True, level=0.95, seed=0)[0]
    assert -1.0 <= est.lower <= est.value <= est.upper <= 1.0
