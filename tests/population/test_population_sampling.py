"""Virtual-population sampling: layout, random-effect statistics, twins, covariates, streams."""

from __future__ import annotations

import numpy as np
import pytest

import medsim.models as registry
from medsim.population import (
    PosteriorDraws,
    Stream,
    default_patients_per_draw,
    patient_normal,
    patient_uniform,
    sample_population,
)


def fitted_draws(n_draws: int = 40, seed: int = 0) -> PosteriorDraws:
    """Posterior-like draws of pk_iv_1cmt with 3 fitted subjects and draw-dependent omegas."""
    model = registry.get("pk_iv_1cmt")
    rng = np.random.default_rng(seed)
    population = {p.name: np.full(n_draws, p.typical) for p in model.parameters}
    omega = {"CL": rng.uniform(0.1, 0.4, n_draws), "V": rng.uniform(0.05, 0.3, n_draws)}
    eta = {"CL": rng.normal(0, 0.2, (n_draws, 3)), "V": rng.normal(0, 0.2, (n_draws, 3))}
    covariates = {"WGT": np.array([0.8, 1.5, 3.0]), "APGR": np.array([3.0, 7.0, 9.0])}
    residual = {"conc_prop": rng.uniform(0.05, 0.2, n_draws)}
    return PosteriorDraws(
        model=model,
        population=population,
        omega=omega,
        eta=eta,
        residual=residual,
        subject_ids=("s1", "s2", "s3"),
        covariates=covariates,
        provenance={"source": "test"},
    )


def test_new_random_effects_have_the_posterior_omega():
    draws = fitted_draws()
    n = 6000
    pop = sample_population(draws, n, seed=11)
    for name in ("CL", "V"):
        z = pop.eta[name] / draws.omega[name][pop.draw]
        # z ~ N(0, 1): the sample mean has SE 1/sqrt(n), the sample SD has SE ~ 1/sqrt(2n); 4 SE bands.
        assert abs(z.mean()) < 4 / np.sqrt(n)
        assert abs(z.std(ddof=1) - 1.0) < 4 / np.sqrt(2 * n)
    # Individual CL = typical * WGT * exp(eta): the model's covariate effect was applied.
    expected = draws.population["CL"][pop.draw] * pop.covariates["WGT"] * np.exp(pop.eta["CL"])
    np.testing.assert_allclose(pop.params["CL"], expected, rtol=1e-6)  # float32 evaluation of the model


def test_eta_sd_matches_prior_bsv():
    model = registry.get("pk_oral_1cmt")
    draws = PosteriorDraws.from_prior(model, 50, seed=3)
    n = 5000
    pop = sample_population(draws, n, seed=4)
    for p in model.structural:
        # Sample SD of n normals has standard error sigma / sqrt(2 (n - 1)); allow 4 SE.
        assert abs(pop.eta[p.name].std(ddof=1) - p.bsv) < 4 * p.bsv / np.sqrt(2 * (n - 1))


def test_layout_groups_patients_by_draw():
    draws = fitted_draws(n_draws=40)
    pop = sample_population(draws, 100, seed=1, patients_per_draw=4)
    assert pop.patients_per_draw == 4
    groups = pop.draw.reshape(25, 4)
    assert (groups == groups[:, :1]).all()
    assert len(np.unique(groups[:, 0])) == 25  # slots drawn without replacement while draws last
    # Default: at least two patients per draw, more when draws run short.
    assert default_patients_per_draw(100, 1000) == 2
    assert default_patients_per_draw(1000, 100) == 10
    assert sample_population(draws, 7, seed=1).patients_per_draw == 2
    assert sample_population(draws, 7, seed=1).n_patients == 7


def test_personalized_patients_are_twins_of_the_subject():
    draws = fitted_draws()
    pop = sample_population(draws, 30, mode="personalized", subject="s2", seed=5)
    assert set(pop.subject) == {"s2"} and pop.mode == "personalized"
    np.testing.assert_array_equal(pop.eta["CL"], draws.eta["CL"][pop.draw, 1])
    np.testing.assert_array_equal(pop.covariates["WGT"], np.full(30, 1.5))
    np.testing.assert_array_equal(pop.residual["conc_prop"], draws.residual["conc_prop"][pop.draw])


def test_covariates_are_bootstrapped_as_whole_vectors_or_given():
    draws = fitted_draws()
    pop = sample_population(draws, 300, seed=2)
    pairs = set(zip(pop.covariates["WGT"], pop.covariates["APGR"], strict=True))
    assert pairs <= {(0.8, 3.0), (1.5, 7.0), (3.0, 9.0)}  # correlations kept: only observed pairs
    assert len(pairs) == 3
    given = sample_population(draws, 10, seed=2, covariates={"WGT": 2.0})
    np.testing.assert_array_equal(given.covariates["WGT"], np.full(10, 2.0))
    assert set(given.covariates["APGR"]) <= {3.0, 7.0, 9.0}


def test_same_seed_same_population_and_different_seed_differs():
    draws = fitted_draws()
    a = sample_population(draws, 50, seed=9)
    b = sample_population(draws, 50, seed=9)
    c = sample_population(draws, 50, seed=10)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    assert not np.array_equal(a.params["CL"], c.params["CL"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "twin"}, "mode must be"),
        ({"mode": "personalized"}, "needs subject"),
        ({"mode": "personalized", "subject": "s9"}, "unknown subject 's9'; fitted subjects: s1, s2, s3"),
        ({"subject": "s1"}, "only used with mode='personalized'"),
        ({"covariates": {"HEIGHT": 1.0}}, "unknown covariate 'HEIGHT'; valid covariates: WGT, APGR"),
        ({"covariates": {"WGT": np.ones(3)}}, r"expected a scalar or \(10,\)"),
        ({"patients_per_draw": 0}, "patients_per_draw must be >= 1"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_population(fitted_draws(), 10, seed=0, **kwargs)


def test_prior_draws_cannot_make_twins():
    draws = PosteriorDraws.from_prior(registry.get("pk_oral_1cmt"), 5, seed=0)
    with pytest.raises(ValueError, match="no fitted subjects"):
        sample_population(draws, 4, mode="personalized", subject="1", seed=0)


def test_streams_depend_only_on_patient_and_counter():
    whole = patient_normal(3, Stream.MEASUREMENT, np.arange(10), 2, width=2)
    part = patient_normal(3, Stream.MEASUREMENT, np.arange(4, 7), 2, width=2)
    np.testing.assert_array_equal(whole[4:7], part)
    assert not np.array_equal(whole, patient_normal(3, Stream.PROCESS, np.arange(10), 2, width=2))
    assert not np.array_equal(whole, patient_normal(3, Stream.MEASUREMENT, np.arange(10), 3, width=2))
    u = patient_uniform(0, Stream.POLICY, np.arange(20000), 0)[:, 0]
    # Uniform(0,1): mean 1/2 with SE sqrt(1/12 / n); 4 SE.
    assert abs(u.mean() - 0.5) < 4 * np.sqrt(1 / 12 / u.size)
    assert ((u > 0) & (u < 1)).all()


def test_prior_population_wraps_into_a_virtual_population():
    import jax

    from medsim.population import VirtualPopulation, prior_population

    model = registry.get("pk_iv_1cmt")
    params = prior_population(model, 16, key=jax.random.key(0), covariates={"WGT": 2.0})
    pop = VirtualPopulation.from_parameters(model, params, covariates={"WGT": 2.0})
    assert pop.n_patients == 16 and pop.mode == "prior" and (pop.draw == -1).all()
    np.testing.assert_array_equal(pop.covariates["WGT"], 2.0)
    np.testing.assert_array_equal(pop.covariates["APGR"], 7.0)  # the model's reference value
    np.testing.assert_array_equal(pop.residual["conc_prop"], 0.1149)  # the model's default residual error
    np.testing.assert_allclose(pop.params["CL"], np.asarray(params["CL"]))


def glucose_draws(n_draws: int = 20, seed: int = 0) -> PosteriorDraws:
    """Posterior-like draws of glucose_insulin with 4 fitted subjects, each on its own basal rate."""
    model = registry.get("glucose_insulin")
    rng = np.random.default_rng(seed)
    population = {p.name: np.full(n_draws, p.typical) for p in model.parameters}
    omega = {p.name: np.full(n_draws, p.bsv) for p in model.structural if p.bsv > 0}
    eta = {k: rng.normal(0, v[0], (n_draws, 4)) for k, v in omega.items()}
    return PosteriorDraws(
        model=model,
        population=population,
        omega=omega,
        eta=eta,
        subject_ids=("a", "b", "c", "d"),
        covariates={"BASAL": np.array([0.6, 0.9, 1.2, 1.8])},
    )


def test_new_glucose_patients_get_a_basal_rate_titrated_to_their_donors_fasting_glucose():
    draws = glucose_draws()
    model = draws.model
    pop = sample_population(draws, 400, seed=5)
    assert pop.provenance["covariates_titrated"] == ["BASAL"]
    # Each new patient's fasting glucose equals one of the donors' fasting glucoses under the same
    # draw (up to the 0.2-4 U/h pump range), instead of whatever the donor's rate would give them.
    fasting = np.asarray(model.fasting_glucose(pop.params))
    donors = []
    for s in range(4):
        theta_s = {k: draws.population[k][pop.draw] for k in draws.population}
        for k, e in draws.eta.items():
            theta_s[k] = theta_s[k] * np.exp(e[pop.draw, s])
        theta_s["BASAL"] = np.full(pop.n_patients, draws.covariates["BASAL"][s])
        donors.append(np.asarray(model.fasting_glucose(theta_s)))
    inside = (pop.covariates["BASAL"] > 0.2 + 1e-6) & (pop.covariates["BASAL"] < 4.0 - 1e-6)
    assert inside.mean() > 0.5  # most patients need a rate inside the pump range; the check below is not vacuous
    gap = np.min(np.abs(np.stack(donors) - fasting), axis=0)
    # float32 evaluation of the steady state: relative round-off ~1e-6, allow 1e-4 relative.
    assert np.all(gap[inside] < 1e-4 * fasting[inside])
    np.testing.assert_allclose(pop.params["BASAL"], pop.covariates["BASAL"])


def test_a_user_given_basal_rate_is_not_retitrated():
    pop = sample_population(glucose_draws(), 50, seed=5, covariates={"BASAL": 1.1})
    assert pop.provenance["covariates_titrated"] == []
    np.testing.assert_allclose(pop.covariates["BASAL"], 1.1)
