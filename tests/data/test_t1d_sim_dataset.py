"""The bundled ``t1d_sim`` cohort (simglucose): contents as documented in bundled/SOURCES.md."""

from __future__ import annotations

import numpy as np
import pytest

from medsim.data import load


def test_t1d_sim_layout_and_hash():
    cohort = load("t1d_sim")
    assert cohort.ids == ("adult#001", "adult#002", "adolescent#001", "adolescent#002", "child#001", "child#002")
    # Pinned hash (see Cohort.data_hash); update it, and SOURCES.md, only when the CSV is
    # deliberately regenerated with `python benchmarks/t1d_cohort.py --bundled`.
    assert cohort.data_hash() == "cc7eb3e5211f49a597469d1ccde4257d54960579c0941a9e9b3b470edbde1778"
    for s in cohort.subjects:
        np.testing.assert_array_equal(s.obs_time, np.arange(0.0, 4320.0 + 1, 15.0))  # CGM every 15 min, 3 days
        assert set(np.unique(s.dose_cmt)) == {1, 2}
        basal = s.dose_rate > 0
        assert basal.sum() == 1  # simglucose's controller holds one basal rate: one infusion
        # the infusion runs the whole 3 days at the covariate's rate (U/h -> U/min)
        assert s.dose_rate[basal][0] * 60 == pytest.approx(s.covariates["BASAL"], rel=1e-6)  # BASAL kept to 6 decimals
        # over the whole record: the last row (4320 min) has no rate of its own
        assert s.dose_amount[basal][0] / s.dose_rate[basal][0] == pytest.approx(4320.0, rel=1e-12)
        daily_carbs = s.dose_amount[s.dose_cmt == 2].sum() / 3
        assert 150 < daily_carbs < 250  # simglucose's random meals: 45 + 70 + 80 g mains, 10 g snacks
