"""One draw of virtual individuals: prefix property and distribution of every sampler.

Every sampler draws its patients with :func:`medsim.population.individuals.draw_individuals` /
``normal_effects`` on counter-based streams, so patient ``i`` is the same for any ``n``. The
distribution checks use Monte Carlo bands of 4 standard errors (two-sided false-alarm rate
about 6e-5 per check), each SE stated where it is used.
"""

from __future__ import annotations

import jax
import numpy as np

import medsim.models as registry
from medsim.models.prior import parameter_prior
from medsim.population import PosteriorDraws, Stream, sample_population
from medsim.population.individuals import draw_individuals, individual_values
from medsim.population.prior import prior_population
from medsim.population.streams import patient_named_normal
from tests.population.test_population_sampling import fitted_draws

MODEL = registry.get("pk_iv_1cmt")


def test_named_draws_do_not_depend_on_the_other_names_or_patients():
    patients = np.array([0, 5, 7])
    both = patient_named_normal(3, Stream.SAMPLING, patients, 0, ["V", "CL"])
    alone = patient_named_normal(3, Stream.SAMPLING, patients[1:], 0, ["CL"])
    np.testing.assert_array_equal(both[1:, 1], alone[:, 0])
    assert not np.allclose(both[:, 0], both[:, 1])


def test_sample_population_prefix_property():
    draws = fitted_draws()
    small = sample_population(draws, 6, seed=4, patients_per_draw=2)
    large = sample_population(draws, 50, seed=4, patients_per_draw=2)
    np.testing.assert_array_equal(small.draw, large.draw[:6])
    for name in small.params:
        np.testing.assert_array_equal(small.params[name], large.params[name][:6])
    for name in small.covariates:
        np.testing.assert_array_equal(small.covariates[name], large.covariates[name][:6])


def test_prior_population_and_from_prior_prefix_property():
    key = jax.random.key(7)
    small, large = prior_population(MODEL, 4, key=key), prior_population(MODEL, 30, key=key)
    for name in small:
        np.testing.assert_array_equal(np.asarray(small[name]), np.asarray(large[name])[:4])
    a, b = PosteriorDraws.from_prior(MODEL, 5, seed=2), PosteriorDraws.from_prior(MODEL, 40, seed=2)
    for name in a.population:
        np.testing.assert_array_equal(a.population[name], b.population[name][:5])


def test_from_prior_draws_follow_the_parameter_prior():
    n = 4000
    draws = PosteriorDraws.from_prior(MODEL, n, seed=0)
    for p in MODEL.parameters:
        prior = parameter_prior(p)
        x = np.asarray(draws.population[p.name])
        if prior.distribution == "lognormal":
            x = np.log(x)
        if prior.distribution == "halfnormal":
            # E|Z| = scale * sqrt(2/pi), SD(|Z|) < scale: SE of the mean < scale / sqrt(n)
            assert abs(x.mean() - prior.scale * np.sqrt(2 / np.pi)) < 4 * prior.scale / np.sqrt(n)
            continue
        # mean SE = scale / sqrt(n); sample-SD SE ~ scale / sqrt(2 n)
        assert abs(x.mean() - prior.loc) < 4 * prior.scale / np.sqrt(n)
        assert abs(x.std(ddof=1) - prior.scale) < 4 * prior.scale / np.sqrt(2 * n)


def test_prior_population_eta_has_the_literature_bsv():
    n = 4000
    pop = prior_population(MODEL, n, key=jax.random.key(1))
    typical = individual_values(MODEL, {p.name: p.typical for p in MODEL.parameters}, {}, {}, 1)  # eta = 0
    for p in MODEL.structural:
        if p.bsv > 0:
            eta = np.log(np.asarray(pop[p.name], np.float64) / typical[p.name])
            assert abs(eta.mean()) < 4 * p.bsv / np.sqrt(n)  # SE of the mean: bsv / sqrt(n)
            assert abs(eta.std(ddof=1) - p.bsv) < 4 * p.bsv / np.sqrt(2 * n)  # SE of the SD


def test_donors_are_drawn_uniformly_from_the_cohort():
    draws = fitted_draws()
    n = 3000
    pop = sample_population(draws, n, seed=3)
    counts = np.array([(pop.covariates["WGT"] == w).sum() for w in (0.8, 1.5, 3.0)])
    # Binomial(n, 1/3) counts: SD sqrt(n * 1/3 * 2/3)
    assert np.all(np.abs(counts - n / 3) < 4 * np.sqrt(n * 2 / 9))


def test_draw_individuals_takes_fitted_effects_where_known():
    n = 4
    population = {p.name: np.full(n, p.typical) for p in MODEL.parameters}
    omega = {"CL": np.full(n, 0.3)}
    fitted = np.array([True, False, True, False])
    out = draw_individuals(
        MODEL,
        population,
        omega,
        {},
        seed=0,
        stream=Stream.POLICY,
        patient=np.arange(n),
        fitted_eta={"CL": np.full(n, 0.5), "V": np.full(n, -0.2)},
        fitted=fitted,
    )
    np.testing.assert_array_equal(out.eta["CL"][fitted], 0.5)
    assert np.all(out.eta["CL"][~fitted] != 0.5)
    np.testing.assert_array_equal(out.eta["V"], [-0.2, 0.0, -0.2, 0.0])  # no BSV on V: fitted or 0
    expected = individual_values(MODEL, population, {"V": out.eta["V"]}, {}, n)["V"]
    np.testing.assert_allclose(out.params["V"], expected, rtol=1e-6)  # float32 evaluation of the model
