"""SVI diagnostics: the ELBO-trace checks and the process-noise profile check flag what they
should, and an SVI fit with nothing checked never reads "ok"."""

from __future__ import annotations

import numpy as np
import pytest

from medsim.inference.diagnostics import Diagnostics, diagnose
from medsim.inference.noise_profile import PROFILE_GAIN_NATS, profile_problems
from medsim.inference.svi_diagnostics import ELBO_REL_TOL, WINDOWS, elbo_checks

STEPS = 2000


def noisy(mean: np.ndarray, seed: int = 0, sd: float = 5.0) -> np.ndarray:
    """An ELBO trace: ``mean`` plus one-particle-like noise of ``sd`` nats per step."""
    return mean + sd * np.random.default_rng(seed).standard_normal(mean.shape)


def test_a_converged_trace_passes():
    # a rise that levels off 500 steps before the end; window means of 200 steps have SE
    # 5 / sqrt(200) = 0.35 nats, far below the 1.6-nat tolerance at an ELBO of -1600
    t = np.arange(STEPS)
    trace = noisy(-1600.0 - 400.0 * np.exp(-t / 150.0))
    checks, problems, figures = elbo_checks(trace)
    assert problems == [] and len(checks) == 2
    assert abs(figures["elbo_rel_change"]) < ELBO_REL_TOL


def test_a_trace_still_rising_is_flagged():
    # +0.05 nats per step: 10 nats between the last two 200-step windows, > the 1.6-nat tolerance
    trace = noisy(-1600.0 + 0.05 * np.arange(STEPS) - 100.0)
    problems = elbo_checks(trace)[1]
    assert len(problems) == 1 and "still rising" in problems[0]


def test_a_trace_worse_than_earlier_is_flagged():
    # optimum reached by step 600, then a 30-nat fall: the end is worse than an earlier window
    t = np.arange(STEPS)
    trace = noisy(-1600.0 - 30.0 * np.clip((t - 1000) / 600, 0, 1))
    problems = elbo_checks(trace)[1]
    assert len(problems) == 1 and "worse at the end" in problems[0]


@pytest.mark.parametrize("trace", [None, np.zeros(2 * WINDOWS - 1), np.full(100, np.nan)])
def test_nothing_to_check_is_a_problem(trace):
    checks, problems, _ = elbo_checks(trace)
    assert checks == [] and len(problems) == 1


def test_svi_diagnostics_without_a_trace_are_not_ok():
    import arviz as az

    idata = az.from_dict(posterior={"CL": np.ones((1, 10))})
    d = diagnose(idata, method="svi", elbo=-10.0)
    assert not d.applicable and not d.ok and "no ELBO trace" in d.problems[0]
    assert any("not applicable" in line for line in d.lines())
    checked = diagnose(idata, method="svi", elbo=-1600.0, elbo_trace=noisy(np.full(STEPS, -1600.0)))
    assert checked.ok and checked.checks and checked.lines()[-2] == "all SVI checks passed"
    assert checked.lines()[-1].startswith("note: the posterior is a Gaussian approximation")
    # the property itself: nothing checked and not applicable is never ok
    assert not Diagnostics(method="svi", applicable=False, chains=1, draws=10).ok


def profile(peak: float, gain: float, posterior=(0.05, 0.065, 0.08)) -> dict:
    return {"sigma_glucose": {"peak": peak, "gain": gain, "posterior": list(posterior)}}


def test_a_noise_posterior_away_from_its_likelihood_peak_is_flagged():
    # the glucose case: posterior median 0.065, likelihood peak near 0.02 hundreds of nats higher
    problems = profile_problems(profile(0.02, 660.0))
    assert len(problems) == 1 and "sigma_glucose" in problems[0] and "0.02" in problems[0]
    assert profile_problems(profile(0.07, 660.0)) == []  # peak inside the 90 % interval
    assert profile_problems(profile(0.02, PROFILE_GAIN_NATS - 1)) == []  # a flat profile


def test_rejected_steps_are_counted_and_flagged_only_near_the_end():
    # Steps whose ELBO or gradient was not finite are rejected by the optimiser (NaN in the trace).
    t = np.arange(STEPS)
    trace = noisy(-1600.0 - 400.0 * np.exp(-t / 150.0))
    early = trace.copy()
    early[[3, 40, 41]] = np.nan  # rejected while the guide was still far from the optimum
    checks, problems, figures = elbo_checks(early)
    assert problems == [] and figures["rejected_steps"] == 3
    assert any("3 of 2000 steps rejected" in c and "step 42" in c for c in checks)
    late = trace.copy()
    late[-5] = np.nan  # the fitted guide still draws where the model cannot be evaluated
    problems = elbo_checks(late)[1]
    assert len(problems) == 1 and "1 of the last 200 steps had a non-finite ELBO" in problems[0]
    diverged = trace.copy()
    diverged[400:] = np.nan  # every step from 401 on rejected: windows 3-10 hold no ELBO at all
    checks, problems, _ = elbo_checks(diverged)
    assert checks == [] and len(problems) == 1 and "steps 401-600" in problems[0] and "diverged" in problems[0]


@pytest.mark.slow
def test_an_svi_fit_survives_rejected_steps_and_a_diverged_one_says_so():
    # A step size far too large: single steps with a non-finite ELBO are rejected (not written into
    # the guide) and flagged; one that leaves no valid guide is a clear error, not numpyro's
    # "invalid loc/scale_tril" from inside the draws.
    import json

    from inference_synthetic import oral_cohort

    import medsim.models as registry
    from medsim.inference import fit
    from medsim.inference.backends.numpyro_svi import SviDivergedError

    model, cohort = registry.get("pk_oral_1cmt"), oral_cohort(3)
    post = fit(cohort, model, method="svi", svi_steps=200, draws=10, seed=0, svi_learning_rate=1.0)
    trace = np.asarray(json.loads(post.idata.posterior.attrs["elbo_trace"]), float)  # null -> NaN
    assert np.isnan(trace).any() and np.isfinite(trace).any()
    assert all(np.isfinite(np.asarray(v)).all() for v in post.draws().population.values())
    assert not post.diagnostics().ok and any("non-finite ELBO" in p for p in post.diagnostics().problems)
    with pytest.raises(SviDivergedError, match=r"SVI diverged.*--svi-learning-rate"):
        fit(cohort, model, method="svi", svi_steps=200, draws=10, seed=0, svi_learning_rate=100.0)
