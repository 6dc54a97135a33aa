"""The population prior is declared once (medsim.models.prior); the fit's sites and prior draws use it."""

from __future__ import annotations

import math

import numpy as np
import pytest

import medsim.models as registry
from medsim.inference.priors import build_priors
from medsim.models.prior import Prior, omega_prior, parameter_prior, residual_priors
from medsim.population.draws import PosteriorDraws


@pytest.mark.parametrize(
    ("prior", "median", "mean"),
    [
        (Prior("lognormal", math.log(2.0), 0.5), 2.0, 2.0 * math.exp(0.125)),
        (Prior("normal", -1.0, 3.0), -1.0, -1.0),
        (Prior("halfnormal", 0.0, 2.0), 2.0 * 0.6744897501960817, 2.0 * math.sqrt(2.0 / math.pi)),
    ],
)
def test_sample_has_the_distribution_it_names(prior, median, mean):
    x = prior.sample(np.random.default_rng(3), 200_000)
    assert prior.median() == pytest.approx(median)
    # 5 Monte Carlo standard errors of a mean of 200 000 draws
    assert abs(x.mean() - mean) < 5 * x.std() / math.sqrt(x.size)


@pytest.mark.parametrize("bad", [("gamma", 0.0, 1.0), ("normal", 0.0, 0.0), ("normal", math.nan, 1.0)])
def test_a_malformed_prior_is_refused(bad):
    with pytest.raises(ValueError, match="prior"):
        Prior(*bad)


@pytest.mark.parametrize("name", ["pk_oral_1cmt", "pk_iv_1cmt", "glucose_insulin", "t1d_ou"])
def test_fit_sites_are_the_declared_priors(name):
    model = registry.get(name)
    spec = build_priors(model, list(model.residual))
    sites = {s.site: (s.distribution, s.loc, s.scale) for s in spec.sites}
    for p in model.parameters:
        declared = parameter_prior(p)
        assert sites[p.name] == (declared.distribution, declared.loc, declared.scale)
        if p.kind == "structural" and p.bsv > 0:
            o = omega_prior(p)
            assert sites[f"omega_{p.name}"] == (o.distribution, o.loc, o.scale)
    for obs, err in model.residual.items():
        for kind, r in residual_priors(err).items():
            assert sites[f"res_{kind}_{obs}"] == (r.distribution, r.loc, r.scale)


def test_prior_draws_use_the_declared_priors():
    model = registry.get("pk_oral_1cmt")
    draws = PosteriorDraws.from_prior(model, 50_000, seed=2)
    for p in model.parameters:
        x = np.log(draws.population[p.name]) if p.kind == "structural" else draws.population[p.name]
        declared = parameter_prior(p)
        if declared.distribution == "lognormal":  # log-values: Normal(loc, scale), 5 MC standard errors
            assert abs(x.mean() - declared.loc) < 5 * declared.scale / math.sqrt(x.size)
        assert np.median(draws.population[p.name]) == pytest.approx(declared.median(), rel=0.05)
    # BSV held at the literature values (the prior-predictive population)
    assert all(np.all(draws.omega[p.name] == p.bsv) for p in model.structural if p.bsv > 0)
