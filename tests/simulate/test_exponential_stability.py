"""The exponential scheme's stability check for Jacobians that are not triangular."""

from __future__ import annotations

import numpy as np
import pytest

from medsim.simulate import stability


def limit_for(jac: list[list[float]]) -> stability.StepLimit:
    jac = np.asarray([jac], np.float64)
    return stability.StepLimit(max_dt=0.0, patient=0, reason="", triangular=False, params={}, jacobians=jac)


def linear_exponential_step(jac: np.ndarray, h: float, x: np.ndarray, steps: int) -> np.ndarray:
    """The scheme's step for a linear drift, written out: x_i' = x_i + h phi1(a_i) f_i + h sum_j J_ij x_j (E - phi1)."""
    a = h * np.minimum(np.diag(jac), 0.0)
    phi1 = np.where(a < 0, np.expm1(a) / np.where(a < 0, a, 1.0), 1.0)
    for _ in range(steps):
        f = jac @ x
        new = x + h * phi1 * f
        for i in range(len(x)):
            for j in range(len(x)):
                if i != j:
                    e = np.exp(a[i]) if np.isclose(a[i], a[j]) else (np.exp(a[i]) - np.exp(a[j])) / (a[i] - a[j])
                    new[i] += h * jac[i, j] * x[j] * (e - phi1[i])
        x = new
    return x


@pytest.mark.parametrize(
    ("jac", "stable"),
    [
        # a fast pair coupled both ways (eigenvalues -0.5, -5.5): explicit Euler at h = 1 grows by 4.5 a step
        ([[-3.0, 2.5], [2.5, -3.0]], True),
        # a weakly damped fast oscillation (-0.1 +- 3i): the coupling itself is what a step of 1 cannot follow
        ([[-0.1, 3.0], [-3.0, -0.1]], False),
    ],
)
def test_spectral_radius_decides_and_matches_the_iterated_step(jac, stable):
    assert stability.exponential_stable(limit_for(jac), 1.0) is stable
    x = linear_exponential_step(np.asarray(jac), 1.0, np.array([1.0, -0.5]), 60)
    assert bool(np.abs(x).max() < 1e-3) == stable  # the step itself decays or grows as the check says


def test_without_jacobians_only_a_triangular_limit_is_trusted():
    base = limit_for([[-1.0, 0.0], [0.0, -1.0]])
    assert not stability.exponential_stable(stability.StepLimit(1.0, 0, "", False, {}), 10.0)
    assert stability.exponential_stable(stability.StepLimit(1.0, 0, "", True, {}), 10.0)
    assert stability.exponential_stable(base, 10.0)
