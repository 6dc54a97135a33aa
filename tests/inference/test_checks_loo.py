"""PSIS-LOO comparison on stored pointwise log-likelihoods."""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest

from medsim.inference.checks import LooError, loo_compare, plot_loo_compare, pointwise_log_likelihood

N_SUBJECTS, PER_SUBJECT = 20, 5


def _normal_logpdf(y, mu, sd):
    return -0.5 * math.log(2 * math.pi) - np.log(sd) - 0.5 * ((y - mu) / sd) ** 2


@pytest.fixture(scope="module")
def fits():
    """y ~ N(0, 1); posterior draws of the mean ~ N(ybar, 1/n). Model "right" uses sd 1, "wrong" sd 3.

    Stored in medsim's layout: one variable per observable over ``conc_obs`` with the subject of
    each observation in ``constant_data``.
    """
    rng = np.random.default_rng(0)
    n = N_SUBJECTS * PER_SUBJECT
    y = rng.standard_normal(n)
    mu = y.mean() + rng.standard_normal((2, 500)) / math.sqrt(n)
    subject = np.repeat(np.arange(N_SUBJECTS), PER_SUBJECT)
    out = {}
    for name, sd in (("right", 1.0), ("wrong", 3.0)):
        out[name] = az.from_dict(
            posterior={"mu": mu},
            log_likelihood={"conc": _normal_logpdf(y[None, None, :], mu[..., None], sd)},
            observed_data={"conc": y},
            constant_data={"conc_subject": subject},
            dims={"conc": ["conc_obs"], "conc_subject": ["conc_obs"]},
        )
    return y, out


def test_loo_prefers_the_generating_model_by_the_expected_margin(fits):
    """Expected ELPD difference per point: E[log N(y;0,1) - log N(y;0,3)] = log 3 - (1/2 - 1/18) = 0.654,
    so about 65 for 100 points; ArviZ's dse is the standard error of the difference (4 of them allowed)."""
    y, idata = fits
    comparison = loo_compare(idata)
    assert comparison.best() == "right"
    diff, dse = comparison.difference("wrong")
    expected = len(y) * (math.log(3.0) - (0.5 - 1.0 / 18.0))
    assert abs(diff - expected) < 4 * dse
    assert comparison.n_points == len(y) and comparison.pareto_k_above == {"right": 0, "wrong": 0}
    by_subject = loo_compare(idata, unit="subject")
    assert by_subject.n_points == N_SUBJECTS and by_subject.best() == "right"
    assert plot_loo_compare(comparison).axes


def test_subject_sums_and_padded_layout(fits):
    _, idata = fits
    per_obs = pointwise_log_likelihood(idata["right"])
    per_subject = pointwise_log_likelihood(idata["right"], unit="subject")
    np.testing.assert_allclose(
        per_subject.values, per_obs.values.reshape(2, 500, N_SUBJECTS, PER_SUBJECT).sum(-1), rtol=1e-12
    )
    padded = np.zeros((2, 500, N_SUBJECTS, PER_SUBJECT + 2))  # two padding columns of exact zeros
    padded[..., :PER_SUBJECT] = per_obs.values.reshape(2, 500, N_SUBJECTS, PER_SUBJECT)
    alt = az.from_dict(log_likelihood={"y": padded}, dims={"y": ["subject", "slot"]})
    np.testing.assert_allclose(pointwise_log_likelihood(alt).values, per_obs.values)
    np.testing.assert_allclose(pointwise_log_likelihood(alt, unit="subject").values, per_subject.values)


def test_loo_errors_say_what_is_missing(fits):
    _, idata = fits
    with pytest.raises(LooError, match="at least two"):
        loo_compare({"right": idata["right"]})
    no_ll = az.from_dict(posterior={"mu": np.zeros((2, 10))})
    with pytest.raises(LooError, match="no log_likelihood"):
        pointwise_log_likelihood(no_ll)
    two = az.from_dict(log_likelihood={"a": np.zeros((2, 10, 3)), "b": np.zeros((2, 10, 3))})
    with pytest.raises(LooError, match="var_name"):
        pointwise_log_likelihood(two)
    with pytest.raises(LooError, match="constant_data"):
        pointwise_log_likelihood(az.from_dict(log_likelihood={"a": np.zeros((2, 10, 3))}), unit="subject")
    fewer = az.from_dict(log_likelihood={"conc": np.asarray(idata["wrong"].log_likelihood["conc"])[..., :-1]})
    with pytest.raises(LooError, match="same data"):
        loo_compare({"right": idata["right"], "fewer": fewer})
    with pytest.raises(LooError, match="Posterior or arviz"):
        loo_compare({"a": object(), "b": object()})
