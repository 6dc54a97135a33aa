"""SVI: the fast approximate fit (ELBO, determinism, layout) and fit-option errors.

The SVI posterior file and its "diagnostics not applicable" report are checked through the CLI in
``test_fit_cli.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from inference_synthetic import oral_cohort

from medsim import inference
from medsim.inference import FitConfigError
from medsim.inference.backends import run_svi
from medsim.inference.problem import prepare
from medsim.models import get

STEPS = 1500


@pytest.fixture(scope="module")
def data():
    return prepare(oral_cohort(3), get("pk_oral_1cmt"))


@pytest.fixture(scope="module")
def svi_out(data):
    return run_svi(data, draws=300, steps=STEPS, seed=2)


def test_elbo_improves_and_flattens(svi_out):
    trace = svi_out.info["elbo_trace"]
    assert trace.shape == (STEPS,)
    first, last = trace[:100].mean(), trace[-300:].mean()
    assert last > first + 10  # the guide starts at the prior medians, far from the posterior
    # flat at the end: the last two blocks of 150 steps differ by less than their noise (ELBO
    # estimates with one particle fluctuate by a few nats; 3 SE of the block means bounds drift)
    a, b = trace[-300:-150], trace[-150:]
    se = np.sqrt(a.var() / 150 + b.var() / 150)
    assert abs(b.mean() - a.mean()) < 3 * se + 1.0


def test_same_seed_gives_the_same_draws_whatever_the_chunks(data, svi_out):
    # 1500 steps in chunks of 400 run 400 + 400 + 400 + 300: the last call runs the 400-step
    # program with its last 100 steps skipped (one compiled program whatever the number of steps);
    # the optimisation is the same 1500 updates as in chunks of 250, to the bit.
    again = run_svi(data, draws=300, steps=STEPS, seed=2, chunk=400)
    np.testing.assert_array_equal(svi_out.info["elbo_trace"], again.info["elbo_trace"])
    for name, values in svi_out.samples.items():
        np.testing.assert_array_equal(values, again.samples[name])


def test_svi_draws_recover_the_simulated_typical_clearance(svi_out):
    # The cohort was simulated with typical CL 2.75 L/h; 3 subjects pin it down only loosely,
    # so check the truth lies inside the central 99 % of the approximate posterior.
    low, high = np.quantile(svi_out.samples["CL"], [0.005, 0.995])
    assert low < 2.75 < high
    assert svi_out.samples["eta_CL"].shape == (1, 300, 3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "stan"}, "unknown backend 'stan'"),
        ({"method": "laplace"}, "backend 'numpyro' has no method 'laplace'"),
        ({"draws": 0}, "need chains >= 1, draws >= 1"),
        ({"method": "svi", "guide": "flow"}, "guide in"),
        ({"method": "svi", "svi_particles": 0}, "svi_particles >= 1"),
    ],
)
def test_bad_fit_options_are_named(options, message):
    with pytest.raises(FitConfigError, match=message):
        inference.fit(oral_cohort(3), get("pk_oral_1cmt"), **options)


def test_low_rank_guide_runs_and_is_recorded(data):
    out = run_svi(data, draws=50, steps=200, seed=0, guide="lowrank", rank=2)
    assert out.info["guide"] == "AutoLowRankMultivariateNormal(rank=2)"
    assert out.samples["eta_CL"].shape == (1, 50, 3) and np.isfinite(out.info["elbo"])


def test_svi_samples_the_noise_scale_on_the_log_scale(data):
    # a Gaussian guide on the signed coordinate straddles its two mirror modes (docs/fitting.md)
    logged = data.priors.with_log_noise()
    noise = logged.by_role("process_noise")
    assert noise and all(not s.signed and s.sampled_site == s.site for s in noise)
    assert all(s.signed for s in data.priors.by_role("process_noise"))  # NUTS keeps the signed one
    assert type(logged).from_json(logged.to_json()) == logged
