"""NUTS warmup metric: the information-based first mass matrix and the shrinking of re-estimated ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from inference_synthetic import oral_cohort
from numpyro.infer.hmc import HMCState
from numpyro.infer.hmc_util import HMCAdaptState, welford_covariance

from medsim.inference.backends.numpyro_nuts import (
    _shrinking,
    initial_inverse_mass,
    initial_unconstrained,
    metric_windows,
    run_nuts,
    shrink_correlations,
)
from medsim.inference.hierarchical import approximate_posterior_variances, data_information, unconstrained_sites
from medsim.inference.problem import prepare
from medsim.models import get


def _correlated_cov(d: int, rho: float) -> np.ndarray:
    """AR(1) correlations rho^|i-j| with unequal variances 1..d."""
    idx = np.arange(d)
    corr = rho ** np.abs(idx[:, None] - idx[None, :])
    sd = np.sqrt(np.arange(1, d + 1, dtype=float))
    return corr * np.outer(sd, sd)


def test_metric_windows_follow_numpyros_schedule():
    ends, sizes = metric_windows(1000)
    assert ends.tolist() == [99, 149, 249, 449, 949]
    assert sizes.tolist() == [25, 50, 100, 200, 500]
    assert metric_windows(10)[0].size == 0  # numpyro adapts no mass matrix with < 20 warmup iterations
    assert metric_windows(0)[0].size == 0


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def test_shrinking_keeps_variances_and_uses_the_schafer_strimmer_intensity(x64):
    cov = jnp.asarray(_correlated_cov(4, 0.6), jnp.float64)
    n = 30.0
    shrunk, _, _, lam = shrink_correlations(cov, jnp.asarray(n, jnp.float64))
    np.testing.assert_allclose(np.diagonal(shrunk), np.diagonal(cov), rtol=1e-12)
    sd = np.sqrt(np.diagonal(np.asarray(cov)))
    r = np.asarray(cov) / np.outer(sd, sd)
    off = ~np.eye(4, dtype=bool)
    expected = np.sum((1 - r[off] ** 2) ** 2) / (n - 1) / np.sum(r[off] ** 2)  # the formula, written out
    assert float(lam) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(np.asarray(shrunk)[off], ((1 - expected) * np.asarray(cov))[off], rtol=1e-12)
    # no correlation worth keeping: shrunk all the way to the diagonal (intensity clipped at 1)
    _, _, _, lam0 = shrink_correlations(jnp.diag(jnp.arange(1.0, 5.0)), jnp.asarray(n))
    assert float(lam0) == 1.0


def test_shrinking_returns_numpyros_factors(x64):
    """With a huge window the intensity is ~0 and the factors must be what numpyro's own Welford
    estimator returns for the same matrix (so the sampler uses them as it would its own)."""
    rng = np.random.default_rng(0)
    draws = rng.multivariate_normal(np.zeros(5), _correlated_cov(5, 0.7), size=400)
    init, update, final = welford_covariance(diagonal=False)
    state = init(5)
    for x in jnp.asarray(draws, jnp.float64):
        state = update(x, state)
    cov, sqrt, sqrt_inv = final(state, regularize=False)
    shrunk, my_sqrt, my_sqrt_inv, lam = shrink_correlations(cov, jnp.asarray(1e12, jnp.float64))
    assert float(lam) < 1e-9
    np.testing.assert_allclose(shrunk, cov, rtol=1e-8)
    np.testing.assert_allclose(my_sqrt, sqrt, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(my_sqrt_inv, sqrt_inv, rtol=1e-7, atol=1e-10)
    # numpyro's conventions: sqrt is the lower Cholesky factor of the mass matrix (the inverse)
    np.testing.assert_allclose(np.asarray(my_sqrt @ my_sqrt.T), np.linalg.inv(np.asarray(cov)), rtol=1e-6)


def test_shrunk_estimates_from_few_draws_are_closer_to_the_truth(x64):
    """Why the warmup shrinks: from 25 draws of a 20-dimensional Gaussian the shrunk covariance is
    nearer the true one (Frobenius norm of the correlation error, 40 seeded replicates) and is
    well conditioned, where the raw estimate is singular."""
    d, n = 20, 25
    truth = _correlated_cov(d, 0.5)
    sd = np.sqrt(np.diagonal(truth))
    rng = np.random.default_rng(1)
    raw_err, shrunk_err = [], []
    for _ in range(40):
        sample = np.cov(rng.multivariate_normal(np.zeros(d), truth, size=n), rowvar=False)
        shrunk = np.asarray(shrink_correlations(jnp.asarray(sample, jnp.float64), jnp.asarray(float(n)))[0])
        raw_err.append(np.linalg.norm((sample - truth) / np.outer(sd, sd)))
        shrunk_err.append(np.linalg.norm((shrunk - truth) / np.outer(sd, sd)))
        assert np.linalg.eigvalsh(shrunk).min() > 0
    assert np.mean(shrunk_err) < 0.9 * np.mean(raw_err)


def _fake_state(i, matrix):
    """An HMCState with what the wrapper reads (every leaf with the chain axis of ``i``, if any)."""
    eye = jnp.broadcast_to(jnp.eye(matrix.shape[-1]), matrix.shape)
    adapt = HMCAdaptState(jnp.full(i.shape, 0.1), matrix, eye, eye, None, None, jnp.zeros_like(i), None)
    return HMCState(i, None, None, None, None, None, None, None, None, None, None, adapt, None)


@pytest.mark.parametrize("batched", [False, True])
def test_the_kernel_wrapper_shrinks_only_after_window_ends(batched):
    raw = jnp.asarray(_correlated_cov(3, 0.5), jnp.float32)

    def step(state):  # stands in for numpyro's kernel: a fresh (raw) estimate every iteration
        fresh = jnp.broadcast_to(raw, state.adapt_state.inverse_mass_matrix.shape)
        return state._replace(i=state.i + 1, adapt_state=state.adapt_state._replace(inverse_mass_matrix=fresh))

    wrapped = jax.jit(_shrinking(step, np.array([4, 9]), np.array([5, 10]), batched=batched))
    for i in range(12):
        index = jnp.full((2,), i) if batched else jnp.asarray(i)
        matrix = jnp.broadcast_to(raw, (2, 3, 3)) if batched else raw
        out = wrapped(_fake_state(index, matrix)).adapt_state
        got = np.asarray(out.inverse_mass_matrix)[0] if batched else np.asarray(out.inverse_mass_matrix)
        if i in (4, 9):
            expected = np.asarray(shrink_correlations(raw, jnp.asarray(5.0 if i == 4 else 10.0))[0])
            np.testing.assert_allclose(got, expected, rtol=1e-6)
            assert not np.allclose(got, raw)
        else:
            np.testing.assert_array_equal(got, raw)


@pytest.fixture(scope="module")
def oral():
    data = prepare(oral_cohort(n_subjects=4, seed=3), get("pk_oral_1cmt"))
    return data, data_information(data)


def test_approximate_variances_cover_every_sampled_coordinate(oral):
    data, information = oral
    variances = approximate_posterior_variances(data, information)
    assert set(variances) == set(unconstrained_sites(data))
    for site, v in variances.items():
        assert np.all(np.isfinite(v)) and np.all(np.asarray(v) > 0), site
    # the data shrink every variance below the prior's (unit scale for BSV coordinates)
    for p in data.priors.random_effects:
        assert np.all(variances[f"eta_{p}_decentered"] < 1.0)
        omega = data.priors.site(f"omega_{p}")
        assert variances[omega.site] < np.pi**2 / 8
    init = initial_unconstrained(data, 2, 0.5, seed=0)
    dense = initial_inverse_mass(data, init, information, dense=True)
    diag = initial_inverse_mass(data, init, information, dense=False)
    n = sum(np.asarray(v)[0].size for v in init.values())
    assert dense.shape == (n, n) and diag.shape == (n,)
    np.testing.assert_allclose(np.diagonal(dense), diag)
    # numpyro ravels sites in sorted order: the typical CL comes first, its variance in place
    np.testing.assert_allclose(diag[0], variances["CL"], rtol=1e-6)


def test_run_nuts_checks_and_records_the_metric_options(oral):
    data = oral[0]
    with pytest.raises(ValueError, match="initial_metric"):
        run_nuts(data, initial_metric="laplace")
    out = run_nuts(
        data, chains=1, draws=20, warmup=30, seed=0, initial_metric="identity", shrink_metric=False, max_tree_depth=4
    )
    assert out.info["initial_metric"] == "identity" and out.info["shrink_metric"] is False
    assert out.samples["CL"].shape == (1, 20)
