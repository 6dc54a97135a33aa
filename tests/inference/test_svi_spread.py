"""The test of an SVI guide's spread (medsim.inference.svi_spread) on targets whose answer is known."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medsim.inference.svi_spread import (
    TOO_NARROW,
    deviations,
    spread_gradients,
    spread_problems,
    spread_record,
)


def _gaussian(precision: np.ndarray):
    """Potential of a zero-mean Gaussian with ``precision``, on a one-site dict like the autoguide's unpacking."""
    lam = jnp.asarray(precision, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    return (lambda u: 0.5 * u["z"] @ lam @ u["z"]), (lambda z: {"z": z})


@pytest.mark.parametrize("ratio", [0.5, 1.0, 1.6])
def test_gradient_is_one_minus_r_squared_for_a_gaussian(ratio):
    # Target N(0, Sigma) with correlations; guide N(0, ratio^2 Sigma): g_i = 1 - ratio^2 exactly.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    sigma = a @ a.T + 4 * np.eye(4)
    potential, unpack = _gaussian(np.linalg.inv(sigma))
    params = {"auto_loc": jnp.zeros(4), "auto_scale_tril": jnp.asarray(ratio * np.linalg.cholesky(sigma), jnp.float32)}
    mean, se = spread_gradients(potential, unpack, params, jax.random.key(1), particles=2000)
    # Monte Carlo: the estimate lies within 5 standard errors of the exact value (a 6e-7 two-sided miss)
    np.testing.assert_array_less(np.abs(mean - (1 - ratio**2)), 5 * se + 1e-6)


def test_only_the_narrow_coordinate_is_flagged():
    # Independent coordinates; the guide has the right SD in three and 0.5 of it in the fourth:
    # g = 1 - 0.25 = 0.75 there (> TOO_NARROW), 0 elsewhere.
    sd = np.array([1.0, 2.0, 0.5, 3.0])
    potential, unpack = _gaussian(np.diag(1 / sd**2))
    guide_sd = sd * np.array([1.0, 1.0, 1.0, 0.5])
    params = {"auto_loc": jnp.zeros(4), "auto_scale_tril": jnp.diag(jnp.asarray(guide_sd, jnp.float32))}
    mean, se = spread_gradients(potential, unpack, params, jax.random.key(2))
    checks, problems = spread_problems(spread_record(mean, se, ["a", "b", "c", "d"]))
    assert len(problems) == 1 and "too narrow in 1 of 4" in problems[0] and "d +0.7" in problems[0]
    assert mean[3] > TOO_NARROW and checks


def test_a_converged_guide_passes_and_a_wide_one_is_flagged():
    potential, unpack = _gaussian(np.eye(3))
    for factor, verdict in ((1.0, None), (1.6, "too wide")):
        params = {"auto_loc": jnp.zeros(3), "auto_scale_tril": factor * jnp.eye(3)}
        mean, se = spread_gradients(potential, unpack, params, jax.random.key(3))
        _, problems = spread_problems(spread_record(mean, se, ["x", "y", "z"]))
        assert (problems == []) if verdict is None else (len(problems) == 1 and verdict in problems[0])


def test_low_rank_guide_deviations():
    factor = jnp.array([[1.0], [2.0], [0.0]])
    scale = jnp.array([0.1, 0.2, 0.3])
    eps = jnp.array([[1.0, 1.0, 1.0, 1.0]])  # rank 1 + 3 coordinates
    dev = deviations({"auto_loc": jnp.zeros(3), "auto_cov_factor": factor, "auto_scale": scale}, eps)
    np.testing.assert_allclose(np.asarray(dev), [[1.1, 2.2, 0.3]], rtol=1e-6)


def test_missing_or_broken_records_are_reported():
    checks, problems = spread_problems(None)
    assert problems == [] and "not tested" in checks[0]
    record = spread_record(np.array([0.1, np.nan]), np.array([0.01, 0.01]), ["a", "b"])
    _, problems = spread_problems(record)
    assert problems and "not finite" in problems[0] and "b" in problems[0]
