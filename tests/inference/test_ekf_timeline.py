"""Event timelines: ordering, infusions, gap splitting, padding and actionable errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from inference_synthetic import Padded, oral_cohort

from medsim.inference.likelihood import TimelineError, build_timeline, default_max_substep
from medsim.models import get


def one_subject(obs_time, obs_value, obs_cmt, dose_time, dose_cmt, dose_amount, dose_rate, sid="7"):
    n, d = len(obs_time), len(dose_time)
    return Padded(
        ids=(sid,),
        obs_time=np.asarray([obs_time], float),
        obs_value=np.asarray([obs_value], float),
        obs_cmt=np.asarray([obs_cmt]),
        obs_mask=np.ones((1, n), bool),
        dose_time=np.asarray([dose_time], float),
        dose_cmt=np.asarray([dose_cmt]),
        dose_amount=np.asarray([dose_amount], float),
        dose_rate=np.asarray([dose_rate], float),
        dose_mask=np.ones((1, d), bool),
    )


def test_observation_at_a_dose_time_is_a_trough_and_slots_are_sorted():
    model = get("pk_iv_1cmt")
    padded = one_subject([0.0, 2.0, 12.0], [0.0, 17.3, 9.0], [1, 1, 1], [12.0, 0.0], [1, 1], [3.5, 25.0], [0, 0])
    tl = build_timeline(model, padded, max_substep=100.0)
    assert np.all(np.diff(tl.time[0]) >= 0)
    # events: obs@0, dose@0, obs@2, obs@12, dose@12 (observation first at equal times); a trough
    # sample and its dose share a slot (the filter updates on the sample, then gives the dose)
    np.testing.assert_allclose(tl.time[0], [0.0, 2.0, 12.0])
    np.testing.assert_array_equal(tl.is_obs[0], [True, True, True])
    np.testing.assert_allclose(tl.bolus[0, :, 0], [25.0, 0.0, 3.5])
    np.testing.assert_array_equal(tl.obs_slot[0], [0, 1, 2])
    assert tl.observed_observables() == ("conc",)


def test_simultaneous_events_share_a_slot_with_at_most_one_observation():
    model = get("pk_iv_1cmt")
    # two samples at 6 h (a duplicate assay), two boluses at 6 h, an infusion ending at 6 h
    padded = one_subject(
        [6.0, 6.0, 8.0], [1.0, 1.1, 2.0], [1, 1, 1], [6.0, 6.0, 2.0], [1, 1, 1], [5.0, 7.0, 8.0], [0, 0, 2.0]
    )
    tl = build_timeline(model, padded, max_substep=100.0)
    # infusion start@2 | end@6 + first sample@6 | second sample@6 + both boluses | sample@8
    np.testing.assert_allclose(tl.time[0], [2.0, 6.0, 6.0, 8.0])
    np.testing.assert_array_equal(tl.is_obs[0], [False, True, True, True])
    np.testing.assert_allclose(tl.obs_value[0], [0.0, 1.0, 1.1, 2.0])
    np.testing.assert_allclose(tl.bolus[0, :, 0], [0.0, 0.0, 12.0, 0.0])
    # rate over the interval that ends at the slot (the third one's interval has length 0)
    np.testing.assert_allclose(tl.infusion_rate[0, :, 0], [0.0, 2.0, 2.0, 0.0])
    np.testing.assert_array_equal(tl.obs_slot[0], [1, 2, 3])


def test_infusion_rate_is_active_exactly_between_its_start_and_end():
    model = get("pk_iv_1cmt")
    # 100 mg at 50 mg/h from t=1: active on [1, 3]; observations at 0.5, 2 and 4 h
    padded = one_subject([0.5, 2.0, 4.0], [1.0, 2.0, 3.0], [1, 1, 1], [1.0], [1], [100.0], [50.0])
    tl = build_timeline(model, padded, max_substep=100.0)
    np.testing.assert_allclose(tl.time[0], [0.5, 1.0, 2.0, 3.0, 4.0])
    # rate over the interval ending at each slot
    np.testing.assert_allclose(tl.infusion_rate[0, :, 0], [0.0, 0.0, 50.0, 50.0, 0.0])
    np.testing.assert_allclose(tl.bolus[0], 0.0)


def test_long_gaps_are_split_so_no_interval_exceeds_substeps_times_max_substep():
    model = get("pk_oral_1cmt")
    tl = build_timeline(model, oral_cohort(2).padded(), substeps=4, max_substep=0.5)
    gaps = np.diff(np.concatenate([np.zeros((2, 1)), tl.time], axis=1), axis=1)
    assert gaps.max() <= 4 * 0.5 + 1e-6
    # the real observations are still where they were
    np.testing.assert_allclose(tl.obs_value[0, tl.obs_slot[0]], oral_cohort(2).padded().obs_value[0], rtol=1e-6)


def test_padding_repeats_the_last_time_and_masks_padded_observations():
    model = get("pk_oral_1cmt")
    base = oral_cohort(2).padded()
    mask = base.obs_mask.copy()
    mask[1, 8:] = False  # subject 2 has 3 fewer observations
    tl = build_timeline(model, dataclasses.replace(base, obs_mask=mask), max_substep=100.0)
    last = tl.time[1, np.nonzero(tl.is_obs[1])[0][-1]]
    assert np.all(tl.time[1, -3:] == last)
    assert tl.is_obs[1].sum() == 8 and tl.is_obs[0].sum() == 11


def test_default_max_substep_follows_the_fastest_typical_rate():
    # pk_oral_1cmt: fastest rate is ka = 1.6 /h; the default is 2 / rate (see its docstring)
    assert default_max_substep(get("pk_oral_1cmt")) == pytest.approx(2.0 / 1.6, rel=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"obs_cmt": np.array([[1, 1, 5]])}, "subject '7', observation 2: CMT 5 is not observed"),
        ({"dose_cmt": np.array([[3]])}, "subject '7', dose 0: CMT 3 cannot be dosed"),
        ({"obs_time": np.array([[0.0, -1.0, 2.0]])}, "subject '7', observation 1: TIME must be finite and >= 0"),
        ({"obs_value": np.array([[1.0, np.nan, 2.0]])}, "subject '7', observation 1: DV must be finite"),
        ({"dose_rate": np.array([[-2.0]])}, "subject '7', dose 0: AMT must be finite and RATE finite and >= 0"),
    ],
)
def test_bad_records_raise_errors_naming_subject_and_record(change, message):
    padded = one_subject([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2, 2, 2], [0.0], [1], [100.0], [0.0])
    with pytest.raises(TimelineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_timeline(get("pk_oral_1cmt"), dataclasses.replace(padded, **change))
