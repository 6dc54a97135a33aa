"""The theophylline SDE fit on the bundled data: convergence and agreement with nlmixr2.

Slow (about a minute of CPU): 4 chains x (1000 warmup + 1000 draws) of NUTS on 12 subjects, with the
defaults of `medsim fit` (target_accept 0.95, automatic centring).
"""

from __future__ import annotations

import numpy as np
import pytest

import inference
import medsim.data
from medsim.models import get

# nlmixr2 FOCEi estimates for R's Theoph (Fidler et al. 2019, CPT:PSP 8:621)
REFERENCE = {"ka": 1.60, "CL": 2.75, "V": 31.9, "res_add_conc": 0.694}


@pytest.mark.slow
def test_theoph_sde_fit_converges_and_agrees_with_nlmixr2():
    posterior = inference.fit(
        medsim.data.load("theoph"), get("pk_oral_1cmt"), chains=4, draws=1000, warmup=1000, seed=1
    )
    d = posterior.diagnostics()
    # the convergence thresholds of inference.diagnostics (Vehtari et al. 2021; no divergences)
    assert d.ok, d.problems
    post = posterior.idata.posterior
    for name, ref in REFERENCE.items():
        draws = post[name].values.ravel()
        # FOCEi gives a mode of an approximate marginal likelihood, this a posterior median:
        # they should agree within the posterior's spread; 2 SD is a loose but unit-sensitive check
        assert abs(np.median(draws) - ref) < 2 * draws.std(), (name, np.median(draws), ref)
    # the data rule out large process noise (docs/fitting.md): 95th percentile well below the
    # prior median of HalfNormal(0.3), 0.20
    assert np.quantile(post["sigma_central"].values, 0.95) < 0.1
