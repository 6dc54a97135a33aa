"""Censored measurements in the extended Kalman filter (Beal's M3 method) against direct computation.

One subject of a linear SDE (``inference_linear``), where the filter's moments are exact, so
the direct computation is the exact Kalman filter: the predictive ``Normal(h, S)`` of each
measurement, ``log Phi((L - h) / sqrt(S))`` for a value below the limit ``L``, and the
truncated-normal moments for the update, computed here with scipy.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pytest
from inference_linear import LinearOral, exact_kalman_filter
from scipy import stats
from test_ekf_exact import DOSES, NOISE, THETA, TIMES, VALUES, linear_cohort

from medsim.inference.likelihood import build_timeline, cohort_loglik
from medsim.inference.likelihood.filtered import filtered_state
from medsim.inference.likelihood.filtering import observation_update


@pytest.fixture(scope="module", autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def with_cens(cens: np.ndarray):
    from dataclasses import replace

    return replace(linear_cohort(), obs_cens=cens[None])


def test_observation_update_is_the_truncated_normal():
    h, s, limit = 3.0, 4.0, 2.0  # predictive Normal(3, 2^2), limit 2
    for cens, event in (
        (1, stats.truncnorm(-np.inf, (limit - h) / 2, h, 2)),
        (-1, stats.truncnorm((limit - h) / 2, np.inf, h, 2)),
    ):
        loglik, shift, var_y = (
            float(v) for v in observation_update(np.float64(limit - h), np.float64(s), np.int32(cens))
        )
        p = stats.norm(h, 2).cdf(limit) if cens == 1 else stats.norm(h, 2).sf(limit)
        assert loglik == pytest.approx(np.log(p), rel=1e-12)
        assert shift == pytest.approx(event.mean() - h, rel=1e-10)
        assert var_y == pytest.approx(event.var(), rel=1e-10)
    loglik, shift, var_y = (float(v) for v in observation_update(np.float64(0.7), np.float64(s), np.int32(0)))
    assert (loglik, shift, var_y) == (pytest.approx(stats.norm(0, 2).logpdf(0.7), rel=1e-12), 0.7, 0.0)


def test_censored_loglik_is_the_predictive_probability_beyond_the_limit():
    model = LinearOral()
    # the 4th sample (t = 2 h) reported below a limit of 11 mg/L, the 12th (t = 16 h) above 9
    cens = np.zeros(len(TIMES), np.int64)
    cens[3], cens[11] = 1, -1
    tl = build_timeline(model, with_cens(cens), dtype=np.float64, substeps=32, max_substep=100.0)
    got = np.asarray(jax.jit(partial(cohort_loglik, model, tl))(THETA, NOISE, {"conc_add": 0.3}))[0]
    # Direct computation: the exact filter up to each censored sample gives its predictive; the
    # samples before the first censored one are ordinary densities.
    exact = exact_kalman_filter({**THETA, **NOISE}, 0.3, TIMES, VALUES, DOSES)[0]
    np.testing.assert_allclose(got[:3], exact[:3], rtol=0, atol=2e-5)  # 4th-order filter error (test_ekf_exact)
    pred_mean, pred_var = predictive_at(3)
    expected = stats.norm(pred_mean, np.sqrt(pred_var)).logcdf(VALUES[3])
    assert got[3] == pytest.approx(expected, abs=2e-5)
    assert got[3] < 0  # a probability, not a density
    # exactly measured samples after a censored one still give densities (finite, not 0)
    assert np.all(np.isfinite(got)) and got[11] <= 0


def predictive_at(k: int) -> tuple[float, float]:
    """Exact predictive mean and variance of the k-th measurement (filtering the first k exactly)."""
    _, m, p, _ = exact_kalman_filter(
        {**THETA, **NOISE}, 0.3, TIMES[:k], VALUES[:k], [d for d in DOSES if d[0] < TIMES[k]]
    )
    from scipy.linalg import expm

    # propagate from the k-1-th sample to the k-th (no dose or infusion boundary in between here)
    a = np.array([[-THETA["ka"], 0.0], [THETA["ka"], -THETA["k"]]])
    dt = TIMES[k] - TIMES[k - 1]
    vl = np.zeros((4, 4))
    vl[:2, :2], vl[:2, 2:], vl[2:, 2:] = -a, np.diag([NOISE["s_gut"] ** 2, NOISE["s_central"] ** 2]), a.T
    ev = expm(vl * dt)
    f = ev[2:, 2:].T
    m, p = f @ m, f @ p @ f.T + f @ ev[:2, 2:]
    h = np.array([0.0, 1.0 / THETA["V"]])
    return float(h @ m), float(h @ p @ h + 0.3**2)


def test_censored_update_conditions_the_state_on_the_event():
    model = LinearOral()
    k = 4  # the first four samples, the last of them censored below 11 mg/L
    cohort = with_cens(np.array([0, 0, 0, 1] + [0] * (len(TIMES) - 4)))
    keep = np.arange(len(TIMES)) < k
    from dataclasses import replace

    cohort = replace(cohort, obs_mask=keep[None], dose_mask=np.array([[True, False, False]]))
    tl = build_timeline(model, cohort, dtype=np.float64, substeps=32, max_substep=100.0)
    state = filtered_state(model, tl, THETA, NOISE, {"conc_add": 0.3})
    # direct: exact moments before the censored sample, then the truncated-normal update
    _, m, p, _ = exact_kalman_filter({**THETA, **NOISE}, 0.3, TIMES[:3], VALUES[:3], [DOSES[0]])
    from scipy.linalg import expm

    a = np.array([[-THETA["ka"], 0.0], [THETA["ka"], -THETA["k"]]])
    vl = np.zeros((4, 4))
    vl[:2, :2], vl[:2, 2:], vl[2:, 2:] = -a, np.diag([NOISE["s_gut"] ** 2, NOISE["s_central"] ** 2]), a.T
    ev = expm(vl * (TIMES[3] - TIMES[2]))
    f = ev[2:, 2:].T
    m, p = f @ m, f @ p @ f.T + f @ ev[:2, 2:]
    h = np.array([0.0, 1.0 / THETA["V"]])
    s = h @ p @ h + 0.3**2
    gain = p @ h / s
    below = stats.truncnorm(-np.inf, (VALUES[3] - h @ m) / np.sqrt(s), h @ m, np.sqrt(s))
    m_post = m + gain * (below.mean() - h @ m)
    p_post = p - (s - below.var()) * np.outer(gain, gain)
    np.testing.assert_allclose(state.mean[0], m_post, rtol=1e-5)
    np.testing.assert_allclose(state.cov[0], p_post, rtol=1e-5)
