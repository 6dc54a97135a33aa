"""Subject, Cohort and PaddedCohort: construction, canonical order, identity, views."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from medsim.data import Cohort, Subject


def test_subject_sorts_records_and_freezes_arrays():
    s = Subject(
        "7",
        obs_time=[2.0, 1.0, 1.0],
        obs_value=[5.0, 4.0, 3.0],
        obs_cmt=[1, 2, 1],
        dose_time=[6.0, 0.0],
        dose_cmt=[1, 1],
        dose_amount=[10.0, 20.0],
        dose_rate=[0.0, 5.0],
        covariates={"WT": 70},
    )
    # canonical order: time, then CMT, then value
    np.testing.assert_array_equal(s.obs_time, [1.0, 1.0, 2.0])
    np.testing.assert_array_equal(s.obs_cmt, [1, 2, 1])
    np.testing.assert_array_equal(s.obs_value, [3.0, 4.0, 5.0])
    np.testing.assert_array_equal(s.dose_amount, [20.0, 10.0])
    np.testing.assert_array_equal(s.dose_rate, [5.0, 0.0])
    assert s.obs_time.dtype == np.float64 and s.obs_cmt.dtype == np.int64
    with pytest.raises(ValueError, match="read-only"):
        s.obs_value[0] = 1.0
    with pytest.raises(TypeError):
        s.covariates["WT"] = 1.0  # type: ignore[index]
    # same records in another order -> equal subjects
    t = Subject(
        "7", [1.0, 2.0, 1.0], [3.0, 5.0, 4.0], [1, 1, 2], [0.0, 6.0], [1, 1], [20.0, 10.0], [5.0, 0.0], {"WT": 70}
    )
    assert s == t
    assert s != Subject("7", [1.0], [3.0], [1], covariates={"WT": 70})


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"obs_time": [0.0, 1.0], "obs_value": [1.0], "obs_cmt": [1, 1]}, "equal lengths"),
        ({"obs_time": [np.nan], "obs_value": [1.0], "obs_cmt": [1]}, "obs_time contains nan"),
        ({"obs_time": [[0.0]], "obs_value": [1.0], "obs_cmt": [1]}, "obs_time must be a 1-D array"),
        (
            {
                "obs_time": [],
                "obs_value": [],
                "obs_cmt": [],
                "dose_time": [0],
                "dose_cmt": [1],
                "dose_amount": [0.0],
                "dose_rate": [0.0],
            },
            "dose_amount contains 0.0; expected amounts > 0",
        ),
        (
            {
                "obs_time": [],
                "obs_value": [],
                "obs_cmt": [],
                "dose_time": [0],
                "dose_cmt": [1],
                "dose_amount": [1.0],
                "dose_rate": [-1.0],
            },
            "dose_rate contains -1.0",
        ),
        ({"obs_time": [], "obs_value": [], "obs_cmt": [], "covariates": {"WT": np.inf}}, "covariate 'WT' is inf"),
    ],
)
def test_subject_rejects_bad_arrays_naming_subject_and_field(kwargs, fragment):
    with pytest.raises(ValueError, match="subject 'S9'") as err:
        Subject("S9", **kwargs)
    assert fragment in str(err.value)


def test_cohort_counts_lookup_and_errors(small_cohort):
    c = small_cohort
    assert c.ids == ("1", "2", "10")
    assert (c.n_subjects, c.n_observations, c.n_doses) == (3, 6, 3)
    assert c.covariate_names == ("WT", "AGE")
    assert c.time_unit == "h"
    assert c.subject("2").n_obs == 2
    with pytest.raises(KeyError, match=r"no subject '99'; its IDs include '1', '2', '10'"):
        c.subject("99")
    with pytest.raises(ValueError, match="subject IDs must be unique; repeated: \\['1'\\]"):
        Cohort((c.subject("1"), c.subject("1")))
    with pytest.raises(ValueError, match="subject '2' has covariates \\['WT'\\]; expected exactly \\['WT', 'AGE'\\]"):
        Cohort((c.subject("1"), Subject("2", [1.0], [1.0], [1], covariates={"WT": 1.0})))


def test_subset_and_split_are_deterministic_and_order_independent(small_cohort):
    big = Cohort.from_arrays([str(i) for i in range(20)], [[float(i)] for i in range(20)], [[1.0]] * 20)
    train, test = big.split(0.7, seed=3)
    assert (train.n_subjects, test.n_subjects) == (14, 6)
    assert set(train.ids).isdisjoint(test.ids) and set(train.ids) | set(test.ids) == set(big.ids)
    assert big.split(0.7, seed=3) == (train, test)
    assert big.split(0.7, seed=4)[0].ids != train.ids  # 20 choose 14 = 38760 splits; a repeat is a bug
    reordered = big.subset(list(reversed(big.ids)))
    assert set(reordered.split(0.7, seed=3)[0].ids) == set(train.ids)
    assert small_cohort.subset(["10", "1"]).ids == ("10", "1")
    with pytest.raises(KeyError, match="'11'"):
        small_cohort.subset(["11"])
    for fraction in (0.0, 1.0, 0.1):
        with pytest.raises(ValueError, match="split"):
            small_cohort.split(fraction, seed=0)


def test_data_hash_ignores_provenance_and_order_but_not_values(small_cohort):
    c = small_cohort
    h = c.data_hash()
    assert len(h) == 64
    shuffled = Cohort(tuple(reversed(c.subjects)), name="other", units=c.units, covariate_names=c.covariate_names)
    assert shuffled.data_hash() == h
    assert shuffled != c  # equality keeps subject order; the hash does not
    s = c.subject("2")
    nudged_value = np.nextafter(s.obs_value, np.inf)  # one unit in the last place
    nudged = Subject(
        s.id, s.obs_time, nudged_value, s.obs_cmt, s.dose_time, s.dose_cmt, s.dose_amount, s.dose_rate, s.covariates
    )
    changed = Cohort((c.subjects[0], nudged, c.subjects[2]), units=c.units)
    assert changed.data_hash() != h
    assert Cohort(c.subjects, units={**c.units, "DV": "ug/L"}).data_hash() != h
    assert copy.deepcopy(c) == c and copy.deepcopy(c).data_hash() == h

    # a reading marked censored (at a limit) is other data than the same value read as exact;
    # flags all 0 are no censoring, so an uncensored cohort keeps the hash it always had
    def with_flags(cens: np.ndarray) -> Cohort:
        fields = (s.obs_time, s.obs_value, s.obs_cmt, s.dose_time, s.dose_cmt, s.dose_amount, s.dose_rate)
        flagged = Subject(s.id, *fields, s.covariates, obs_cens=cens)
        return Cohort((c.subjects[0], flagged, c.subjects[2]), units=c.units)

    cens = np.zeros(s.obs_time.shape, np.int64)
    cens[0] = 1
    assert with_flags(cens).data_hash() != h
    assert with_flags(np.zeros_like(cens)).data_hash() == h


def test_to_event_table_puts_observations_before_doses_at_equal_times(small_cohort):
    frame = small_cohort.to_event_table()
    assert list(frame.columns) == ["ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE", "WT", "AGE"]
    assert len(frame) == small_cohort.n_observations + small_cohort.n_doses
    s2 = frame[frame["ID"] == "2"]
    # subject 2: dose at 0, then two observations at time 2 (CMT 2 before CMT 3)
    assert list(s2["EVID"]) == [1, 0, 0] and list(s2["CMT"]) == [1, 2, 3]
    infusion = frame[(frame["ID"] == "1") & (frame["EVID"] == 1) & (frame["TIME"] == 12.0)]
    assert float(infusion["RATE"].iloc[0]) == 80.0 and np.isnan(infusion["DV"].iloc[0])
    assert (frame.loc[frame["EVID"] == 0, "MDV"] == 0).all() and (frame.loc[frame["EVID"] == 1, "MDV"] == 1).all()


def test_summary_counts(small_cohort):
    s = small_cohort.summary()
    assert (s["subjects"], s["observations"], s["doses"], s["infusions"]) == (3, 6, 3, 1)
    assert s["covariates"]["WT"] == {"unit": "kg", "min": 70.5, "max": 79.6}
    assert s["time_span"] == [0.0, 12.0]
    assert s["obs_per_subject"] == {"min": 1, "median": 2.0, "max": 3}
    assert s["obs_cmt"] == {"2": 5, "3": 1} and s["dose_cmt"] == {"1": 3}
    assert s["subjects_without_observations"] == 0
    assert s["data_hash"] == small_cohort.data_hash()


def test_padded_layout_padding_and_inverse(small_cohort):
    p = small_cohort.padded()
    assert p.obs_time.shape == (3, 3) and p.dose_time.shape == (3, 2)
    np.testing.assert_array_equal(p.obs_mask, [[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(p.obs_time[2], [1.0, 1.0, 1.0])  # padded with the last time
    np.testing.assert_array_equal(p.obs_value[1], [9.5, 0.7, 0.0])  # CMT 2 before CMT 3 at time 2
    np.testing.assert_array_equal(p.obs_cmt[1], [2, 3, 2])  # padded with the first CMT
    np.testing.assert_array_equal(p.dose_time[1], [0.0, np.inf])
    np.testing.assert_array_equal(p.dose_time[2], [np.inf, np.inf])
    np.testing.assert_array_equal(p.dose_amount[2], [0.0, 0.0])
    np.testing.assert_array_equal(p.dose_cmt[2], [1, 1])
    np.testing.assert_array_equal(p.covariates["AGE"], [31.0, 45.0, 27.0])
    assert p.n_observations == small_cohort.n_observations
    assert p.to_cohort(units=small_cohort.units) == small_cohort
    wide = small_cohort.padded(obs_width=8, dose_width=4)
    assert wide.obs_time.shape == (3, 8) and wide.to_cohort(units=small_cohort.units) == small_cohort
    with pytest.raises(ValueError, match="obs_width=2 is smaller than the 3 columns needed"):
        small_cohort.padded(obs_width=2)
    empty = Cohort.from_arrays(["a"], [[]], [[]])
    assert empty.padded().obs_time.shape == (1, 1) and empty.padded().dose_time.shape == (1, 1)


def test_from_arrays_accepts_rectangular_arrays_and_broadcasts():
    times = np.array([[0.0, 1.0], [0.5, 2.0]])
    c = Cohort.from_arrays(
        [1, 2],
        times,
        times * 2,
        obs_cmt=np.array([3, 4]),
        dose_time=np.zeros((2, 1)),
        dose_amount=np.array([[5.0], [6.0]]),
        covariates={"BASAL": [1.0, 1.2]},
        units={"TIME": "min"},
    )
    assert c.ids == ("1", "2")
    np.testing.assert_array_equal(c.subject("2").obs_cmt, [4, 4])
    np.testing.assert_array_equal(c.subject("2").dose_rate, [0.0])
    with pytest.raises(ValueError, match="obs_value has 1 entries; expected 2, one per subject"):
        Cohort.from_arrays([1, 2], times, [[1.0, 2.0]])
    with pytest.raises(ValueError, match="covariate 'BASAL' has shape \\(3,\\); expected \\(2,\\)"):
        Cohort.from_arrays([1, 2], times, times, covariates={"BASAL": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="give both dose_time and dose_amount"):
        Cohort.from_arrays([1, 2], times, times, dose_time=times)
