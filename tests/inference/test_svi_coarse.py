"""SVI's coarse first steps (``fit(svi_coarse_steps=)``): the early steps on a cheaper filter, the
end of the run, the reported ELBO and the checks on the fit's own filter, and the estimate of how
far the coarse filter's optimum lies from the exact one
(:func:`medsim.inference.backends.numpyro_svi.coarse_offset`)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from inference_synthetic import oral_cohort

import medsim.inference.fitting as fitting
from medsim import inference
from medsim.cli.check_cmds import refit_settings
from medsim.inference import FitConfigError
from medsim.inference.backends.numpyro_svi import MIN_FINAL_STEPS, run_svi
from medsim.inference.diagnostics import diagnose_posterior_attrs
from medsim.inference.problem import prepare
from medsim.inference.svi_diagnostics import COARSE_OFFSET_MAX, coarse_checks
from medsim.models import get

STEPS = 300
COARSE = 200


@pytest.fixture(scope="module")
def posterior():
    return inference.fit(
        oral_cohort(3), get("pk_oral_1cmt"), method="svi", svi_steps=STEPS, draws=100, seed=3, svi_coarse_steps=COARSE
    )


def scaled(data, factor):
    """The same cohort with every concentration scaled: a filter whose optimum is knowingly elsewhere."""
    timeline = dataclasses.replace(data.timeline, obs_value=data.timeline.obs_value * factor)
    return dataclasses.replace(data, timeline=timeline, obs_value=data.obs_value * factor)


def test_the_fit_records_its_coarse_steps_judges_the_rest_and_the_refit_repeats_them(posterior):
    attrs = posterior.attrs
    assert attrs["svi_coarse_steps"] == COARSE and attrs["svi_coarse_substeps"] == 2  # half of the default 4
    trace = np.array(json.loads(attrs["elbo_trace"]), float)
    assert trace.shape == (STEPS,)
    # the reported ELBO is the mean of the last 10 % of steps, all on the fit's own filter
    assert attrs["elbo"] == pytest.approx(trace[-STEPS // 10 :].mean(), abs=0.01)  # the trace is stored to 0.01
    offset = json.loads(attrs["svi_coarse_offset"])
    # pk_oral_1cmt's oral absorption is smooth: 2 RK4 steps per interval are nearly exact
    assert 0.0 <= offset["max_sd"] < COARSE_OFFSET_MAX
    lines = posterior.diagnostics().lines()
    assert any(f"last {STEPS - COARSE} steps, on its own filter (the first {COARSE}" in line for line in lines)
    assert any("coarse first steps: their filter's optimum lies" in line for line in lines)
    settings = refit_settings(posterior)
    assert settings["svi_coarse_steps"] == COARSE and settings["svi_coarse_substeps"] == 2


def test_an_elbo_that_was_higher_on_the_coarse_filter_is_not_a_worse_optimum(posterior):
    # A coarse filter's ELBO is another objective: higher there is not "the optimiser left a
    # better optimum". The same trace judged whole would be.
    idata = posterior.idata.copy()
    trace = np.array(json.loads(idata.posterior.attrs["elbo_trace"]), float)
    trace[:COARSE] = trace[-1] + 50.0
    idata.posterior.attrs["elbo_trace"] = json.dumps(trace.tolist())
    judged = diagnose_posterior_attrs(idata, "svi")
    assert not any("ELBO worse at the end" in p for p in judged.problems)
    del idata.posterior.attrs["svi_coarse_steps"]
    assert any("ELBO worse at the end" in p for p in diagnose_posterior_attrs(idata, "svi").problems)


@pytest.mark.slow
def test_the_offset_estimate_is_the_size_of_the_shift_between_two_fits():
    # The estimate is one Newton step with the guide's covariance; checked against the real shift
    # between fits to the cohort and to its concentrations scaled by 1.1 (log 1.1 = 0.095 in CL and
    # V: 1.5 posterior SDs of V), in SVI's coordinates (log noise scale, as fit() sets them). It
    # decides whether the coarse optimum is a small fraction of an SD away or more; a linearisation
    # of a non-Gaussian posterior is good to a factor, not a digit (measured: 2.3 SDs estimated in
    # res_add_conc against 1.45 found in V), so the test allows a factor of 3 either way.
    data = prepare(oral_cohort(3), get("pk_oral_1cmt"))
    data = dataclasses.replace(data, priors=data.priors.with_log_noise())
    shifted = scaled(data, 1.1)
    exact = run_svi(data, steps=600, draws=300, seed=2)
    moved = run_svi(shifted, steps=600, draws=300, seed=2)
    run = run_svi(data, steps=600, draws=300, seed=2, coarse=shifted, coarse_steps=540)
    offset = run.info["coarse_offset"]
    found = max(abs(moved.info["sites"][s][0] - m) / sd for s, (m, sd, _) in exact.info["sites"].items())
    assert found > 1.0  # the shifted cohort's optimum is really elsewhere
    assert found / 3 <= offset["max_sd"] <= 3 * found
    checks, problems = coarse_checks(offset, 540)
    assert checks == [] and "too coarse to be a start" in problems[0]


def test_without_coarse_steps_there_is_nothing_to_judge_and_a_missing_record_is_a_problem():
    assert coarse_checks(None, 0) == ([], [])
    assert "offset was not recorded" in coarse_checks(None, 100)[1][0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "svi", "svi_steps": 300, "svi_coarse_steps": 290}, r"must be in \[1, 270\] for svi_steps 300"),
        ({"method": "svi", "svi_steps": 300, "svi_coarse_steps": -1}, r"must be in \[1, 270\]"),
        (
            {"method": "svi", "svi_coarse_steps": 100, "svi_coarse_substeps": 4},
            r"svi_coarse_substeps must be in \[1, 3\]",
        ),
        ({"method": "svi", "svi_coarse_steps": 100, "substeps": 1}, "has no coarser one"),
        ({"method": "nuts", "svi_coarse_steps": 100}, "apply to method 'svi', not 'nuts'"),
        ({"method": "svi", "svi_coarse_substeps": 2}, r"svi_coarse_steps must be in \[1, "),
    ],
)
def test_bad_coarse_options_are_refused_before_any_work(monkeypatch, options, message):
    def no_work(*args, **kwargs):
        raise AssertionError("the cohort was prepared before the options were checked")

    monkeypatch.setattr(fitting, "prepare_fit", no_work)
    with pytest.raises(FitConfigError, match=message):
        inference.fit(oral_cohort(3), get("pk_oral_1cmt"), **options)


def test_run_svi_keeps_enough_steps_on_the_exact_filter():
    data = prepare(oral_cohort(2), get("pk_oral_1cmt"))
    with pytest.raises(ValueError, match=rf"at least {MIN_FINAL_STEPS} must remain"):
        run_svi(data, steps=100, coarse=data, coarse_steps=90)
