"""SVI on a glucose cohort keeps the between-subject SDs and finds the process noise.

Regression test: in the scaled random-effect coordinates (NUTS's default) SVI collapsed the BSV
SDs of the best-informed effects (C_I, S_I, EGP) to ~0.01 against a truth of 0.2-0.4 on
synthetic glucose cohorts, and left the process-noise scale as wide as its prior
(``docs/fitting.md``, "SVI on glucose cohorts"). SVI now runs non-centred, with the noise scale
on the log scale.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsim import inference
from medsim.models import get
from medsim.synthetic import glucose_cohort

COLLAPSED = ("C_I", "S_I", "EGP")


@pytest.fixture(scope="module")
def fitted():
    model = get("glucose_insulin")
    synthetic = glucose_cohort(3, 1.0, seed=3, obs_every=60.0)
    posterior = inference.fit(synthetic.cohort, model, method="svi", svi_steps=800, max_substep=10.0, draws=200, seed=0)
    return model, posterior


@pytest.mark.slow
def test_svi_keeps_the_between_subject_sds(fitted):
    model, posterior = fitted
    post = posterior.idata.posterior
    assert posterior.priors.describe_coordinates().count("centring 0") == len(posterior.priors.random_effects)
    for p in COLLAPSED:
        truth = model.parameter(p).bsv
        median = float(np.median(post[f"omega_{p}"].values))
        # in NUTS's coordinates SVI gave 0.036, 0.040 and 0.053 on this very cohort (a tenth
        # to a quarter of the truth; 0.011-0.015 on 8 subjects); three subjects leave the
        # posterior near its prior (median 1.35 x truth), so a third of the truth separates them
        assert median > truth / 3, (p, median)


@pytest.mark.slow
def test_svi_fit_stores_its_elbo_trace_and_checks(fitted):
    _, posterior = fitted
    d = posterior.diagnostics()
    assert not d.applicable and d.checks  # something was checked
    assert any("sigma_glucose" in c for c in d.checks)
    assert len(json.loads(posterior.attrs["elbo_trace"])) == 800
    profile = json.loads(posterior.attrs["noise_profile"])["sigma_glucose"]
    assert len(profile["grid"]) == len(profile["loglik"]) and profile["gain"] >= 0.0
    # the guide's spread was tested: every latent coordinate has a gradient and a standard error
    spread = json.loads(posterior.attrs["spread_check"])
    assert len(spread["names"]) == len(spread["gradient"]) == len(spread["se"]) > 0
    assert any(n.startswith("eta_S_I[") for n in spread["names"]) and "C_I" in spread["names"]
    assert any(c.startswith("guide spread:") for c in d.checks)
