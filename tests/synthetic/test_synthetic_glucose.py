"""The synthetic type-1 diabetes cohort generator."""

from __future__ import annotations

import numpy as np
import pytest

import medsim.models as registry
from medsim.synthetic import glucose_cohort, matched_basal_u_per_h


@pytest.fixture(scope="module")
def generated():
    return glucose_cohort(3, 1.0, seed=5, obs_every=60.0)


def test_cohort_shape_and_events(generated):
    cohort = generated.cohort
    assert cohort.n_subjects == 3
    subject = cohort.subjects[0]
    assert subject.obs_time[0] == 0.0 and subject.obs_time[-1] == 1440.0 and subject.obs_time.size == 25
    assert set(np.unique(subject.dose_cmt)) == {1, 2}
    # one basal infusion over the whole day, three meals and three meal boluses
    infusions = subject.dose_rate > 0
    assert infusions.sum() == 1 and (subject.dose_cmt[subject.dose_cmt == 2].size == 3)
    rate = subject.dose_rate[infusions][0]
    assert rate * 60.0 == pytest.approx(subject.covariates["BASAL"], rel=1e-3)
    assert np.all(cohort.padded().obs_cmt[cohort.padded().obs_mask] == 3)


def test_same_seed_same_cohort_other_seed_differs(generated):
    again = glucose_cohort(3, 1.0, seed=5, obs_every=60.0)
    assert again.cohort.data_hash() == generated.cohort.data_hash()
    other = glucose_cohort(3, 1.0, seed=6, obs_every=60.0)
    assert other.cohort.data_hash() != generated.cohort.data_hash()


def test_fasting_glucose_sits_at_the_matched_target(generated):
    """At t = 0 the subject is at the steady state of its matched basal rate; the measured value
    differs from the 110-150 mg/dL target only by residual error (SD ~ 5 + 5 % ~ 11 mg/dL), so a
    4-SD band is used."""
    first = np.array([s.obs_value[0] for s in generated.cohort.subjects])
    assert np.all((first > 110 - 45) & (first < 150 + 45))


def test_matched_basal_inverts_the_steady_state():
    model = registry.get("glucose_insulin")
    theta = model.typical_parameters()
    basal = matched_basal_u_per_h({k: np.asarray(v) for k, v in theta.items()}, 120.0)
    steady = model.steady_state(theta, float(basal) / 60.0)
    assert float(steady["glucose"]) == pytest.approx(120.0, rel=1e-4)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_subjects"):
        glucose_cohort(0)
