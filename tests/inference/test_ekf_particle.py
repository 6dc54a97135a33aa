"""The extended Kalman filter against a bootstrap particle filter on pk_oral_1cmt.

With geometric process noise (``sigma * central * dW``) the model is nonlinear in its noise, so
the filter's Gaussian closure is an approximation. The particle filter (Gordon et al. 1993) is
consistent: its log-likelihood estimate converges to the exact one as particles grow, and
repeating it with independent seeds measures its Monte Carlo error.

Particle propagation between observations uses Strang splitting of the exact solutions of the
two parts (the absorbed amount is integrated exactly; the geometric noise step is exact for
``dC = -k C dt + sigma C dW``), weak error O(dt^2): with ``sigma = 0`` both filters reproduce
the ODE likelihood, to 4e-5 nats per subject at dt = 0.01 h.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from inference_synthetic import oral_cohort

from medsim.inference.likelihood import build_timeline, cohort_loglik
from medsim.models import get

RUNS, PARTICLES, DT = 8, 2000, 0.01


def particle_loglik(cohort, truth, sigma: float, *, seed: int) -> np.ndarray:
    """(RUNS, S) bootstrap particle-filter log-likelihoods, vectorised over runs and subjects."""
    p = cohort.padded()
    rng = np.random.default_rng(seed)
    s = len(p.ids)
    ka, k, v = truth["ka"][:, None, None], (truth["CL"] / truth["V"])[:, None, None], truth["V"][:, None, None]
    add, dose = truth["conc_add"], p.dose_amount[:, :1, None]
    central = np.zeros((s, RUNS, PARTICLES))
    ll = np.zeros((s, RUNS))
    t = 0.0
    times = p.obs_time[0]  # the synthetic design shares sampling times across subjects
    for j, tj in enumerate(times):
        steps = round((tj - t) / DT)
        for i in range(steps):
            t0, t1 = t + i * (tj - t) / steps, t + (i + 1) * (tj - t) / steps
            absorbed = dose * (np.exp(-ka * t0) - np.exp(-ka * t1))
            noise = rng.standard_normal(central.shape)
            central = central + 0.5 * absorbed
            central = central * np.exp((-k - 0.5 * sigma**2) * (t1 - t0) + sigma * np.sqrt(t1 - t0) * noise)
            central = central + 0.5 * absorbed
        t = tj
        y = p.obs_value[:, j][:, None, None]
        w = np.exp(-0.5 * ((y - central / v) / add) ** 2) / (np.sqrt(2 * np.pi) * add)
        ll += np.log(w.mean(axis=2))
        cdf = np.cumsum(w, axis=2)
        cdf /= cdf[..., -1:]
        # systematic resampling (lower variance than multinomial)
        u = (rng.uniform(size=(s, RUNS, 1)) + np.arange(PARTICLES)) / PARTICLES
        idx = np.minimum(
            np.array([[np.searchsorted(cdf[a, b], u[a, b]) for b in range(RUNS)] for a in range(s)]), PARTICLES - 1
        )
        central = np.take_along_axis(central, idx, axis=2)
    return ll.T


def ekf_loglik(cohort, truth, sigma: float) -> np.ndarray:
    model = get("pk_oral_1cmt")
    with jax.enable_x64(True):
        tl = build_timeline(model, cohort.padded(), dtype=np.float64, substeps=8)
        theta = {"ka": truth["ka"], "CL": truth["CL"], "V": truth["V"]}
        ll = cohort_loglik(model, tl, theta, {"sigma_central": sigma}, {"conc_add": truth["conc_add"]})
    return np.asarray(ll).sum(axis=1)


# Gaussian-closure error of the EKF per observation, in nats, as a multiple of sigma. Measured
# against long particle-filter runs (N = 4000, dt = 0.0025 h, docs/fitting.md): 0.11 sigma at
# sigma = 0.05, 0.09 sigma at 0.1, 0.14 sigma at 0.3; the budget keeps a margin over the largest.
CLOSURE_PER_SIGMA = 0.2


@pytest.mark.parametrize("sigma", [0.0, 0.05, 0.3])
def test_ekf_agrees_with_particle_filter(sigma):
    """|EKF - mean PF| <= 4 standard errors of the PF mean + the EKF's closure budget.

    4 SE: a false alarm has probability 6e-5 per subject if the only difference were Monte Carlo
    error. The closure budget (CLOSURE_PER_SIGMA * sigma per observation) is the documented
    approximation error of the EKF for multiplicative noise; it vanishes in the ODE limit, where
    the two filters must agree to their discretisation error.
    """
    cohort = oral_cohort(3, seed=4, sd=0.7)
    truth = cohort.truth
    pf = particle_loglik(cohort, truth, sigma, seed=17)
    ekf = ekf_loglik(cohort, truth, sigma)
    n_obs = cohort.padded().obs_mask.sum(axis=1)
    se = pf.std(axis=0, ddof=1) / np.sqrt(RUNS)
    # 1e-4: discretisation of both filters (sigma = 0 measures it: 4e-5 nats per subject)
    tolerance = 4 * se + CLOSURE_PER_SIGMA * sigma * n_obs + 1e-4
    assert np.all(np.abs(ekf - pf.mean(axis=0)) <= tolerance), (ekf, pf.mean(axis=0), se)
