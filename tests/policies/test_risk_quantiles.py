"""The risk estimators' quantile functions equal ``scipy.stats``'s, bit for bit.

:mod:`medsim.policies.risk.quantiles` replaces ``scipy.stats`` on the ``medsim risk`` path (its
import alone costs about half a second); reports must not move by one ulp, so every comparison
here is exact (same bits, same type and shape), no tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from medsim.policies.risk.quantiles import beta_ppf, binom_ppf, norm_ppf, t_ppf

# Probabilities the estimators pass (0.5 + level / 2, 1 - delta, alpha / 2), the ends of [0, 1],
# values outside it and nan.
EDGES = [0.0, 1.0, 0.5, 0.975, 0.025, 1e-300, 1.0 - 2.0**-53, -0.1, 1.1, np.nan, np.inf]
probabilities = st.one_of(st.sampled_from(EDGES), st.floats(0.0, 1.0), st.floats(-2.0, 2.0))
positive = st.one_of(st.floats(1e-300, 1e6), st.sampled_from([1e-300, 0.5, 1.0, 2.0, 30.0, np.inf]))
shapes = st.one_of(positive, st.sampled_from([0.0, -1.0, np.nan]))


def _same(ours, theirs) -> None:
    assert type(ours) is type(theirs)
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.view(np.uint64), theirs.view(np.uint64))  # bits: -0.0 != 0.0


@settings(max_examples=300, deadline=None)
@given(q=probabilities)
def test_norm_ppf_is_scipys(q):
    _same(norm_ppf(q), stats.norm.ppf(q))


@settings(max_examples=300, deadline=None)
@given(q=probabilities, df=st.one_of(shapes, st.integers(-2, 10_000)))
def test_t_ppf_is_scipys(q, df):
    _same(t_ppf(q, df), stats.t.ppf(q, df))


# Boost warns (both ways alike) where its root finding gives up, e.g. a = 1e-300 and b = 1e6.
@pytest.mark.filterwarnings("ignore:Error in function boost:RuntimeWarning")
@settings(max_examples=300, deadline=None)
@given(q=probabilities, a=shapes, b=shapes)
def test_beta_ppf_is_scipys(q, a, b):
    _same(beta_ppf(q, a, b), stats.beta.ppf(q, a, b))


@settings(max_examples=300, deadline=None)
@given(
    q=probabilities,
    n=st.one_of(st.integers(-1, 100_000), st.sampled_from([0.5, np.nan, 1e9])),
    p=st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, -0.1, 1.5, np.nan])),
)
def test_binom_ppf_is_scipys(q, n, p):
    _same(binom_ppf(q, n, p), stats.binom.ppf(q, n, p))


def test_arrays_broadcast_as_scipys():
    """The Clopper–Pearson call of :mod:`medsim.policies.risk.intervals`: arrays of counts, some 0."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 40, (50, 3)).astype(float)
    n = x + rng.integers(0, 40, (50, 3))
    for a in (0.025, np.full(3, 0.005)):
        _same(beta_ppf(a, np.maximum(x, 1e-300), n - x + 1.0), stats.beta.ppf(a, np.maximum(x, 1e-300), n - x + 1.0))
        _same(
            beta_ppf(1 - a, x + 1.0, np.maximum(n - x, 1e-300)),
            stats.beta.ppf(1 - a, x + 1.0, np.maximum(n - x, 1e-300)),
        )
    q = rng.random((4, 5))
    _same(t_ppf(q, np.arange(1, 6)), stats.t.ppf(q, np.arange(1, 6)))
    _same(norm_ppf(q), stats.norm.ppf(q))
    _same(binom_ppf(q, np.arange(5) * 10, 0.3), stats.binom.ppf(q, np.arange(5) * 10, 0.3))
