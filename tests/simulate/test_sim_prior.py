"""Virtual patients from a model's prior (``medsim.population.prior``)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from medsim.models import get
from medsim.population.prior import prior_population


def test_log_normal_between_subject_variability():
    model = get("pk_oral_1cmt")
    n = 4000
    pop = prior_population(model, n, key=jax.random.key(0))
    for p in model.parameters:
        values = np.log(np.asarray(pop[p.name], np.float64))
        if p.bsv > 0:
            # log(value) ~ Normal(log(typical), bsv): the sample mean is within 4 SE (bsv / sqrt(n))
            # and the sample SD within 4 SE (bsv / sqrt(2n)) of the prior's.
            assert abs(values.mean() - np.log(p.typical)) < 4 * p.bsv / np.sqrt(n)
            assert abs(values.std() - p.bsv) < 4 * p.bsv / np.sqrt(2 * n)
        else:
            np.testing.assert_allclose(values, np.log(p.typical), rtol=1e-6)


def test_covariates_and_their_effects():
    model = get("pk_iv_1cmt")
    weight = np.array([0.8, 1.3, 2.6])
    pop = prior_population(model, 3, key=jax.random.key(1), covariates={"WGT": weight, "APGR": 3.0})
    np.testing.assert_array_equal(np.asarray(pop["WGT"]), weight.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(pop["APGR"]), 3.0)
    ref = prior_population(model, 3, key=jax.random.key(1))  # reference covariates: WGT 1.3, APGR 7
    # Same random effects, so the ratio is the covariate effect: CL ~ WGT, V ~ WGT (1 + 0.159 [APGR < 5]).
    np.testing.assert_allclose(np.asarray(pop["CL"] / ref["CL"]), weight / 1.3, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(pop["V"] / ref["V"]), weight / 1.3 * 1.159, rtol=1e-6)


def test_patients_do_not_depend_on_n():
    model = get("glucose_insulin")
    small = prior_population(model, 5, key=jax.random.key(2))
    large = prior_population(model, 50, key=jax.random.key(2))
    for k, v in small.items():
        # Same draws; only float32 rounding of exp() may differ between compiled sizes (1 ulp).
        np.testing.assert_allclose(np.asarray(v), np.asarray(large[k][:5]), rtol=3e-7)


@pytest.mark.parametrize(
    ("n", "cov", "match"),
    [
        (0, None, "positive number of patients"),
        (3, {"AGE": 30.0}, "no covariate 'AGE'"),
        (3, {"WGT": [1.0, 2.0]}, r"expected a scalar or shape \(3,\)"),
        (3, {"WGT": np.nan}, "finite"),
    ],
)
def test_bad_input_is_named(n, cov, match):
    with pytest.raises(ValueError, match=match):
        prior_population(get("pk_iv_1cmt"), n, key=jax.random.key(0), covariates=cov)
