"""Priors built from model metadata, the numpyro program's sites, and cohort checks."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from inference_synthetic import oral_cohort

from medsim.inference.hierarchical import constrain, hierarchical_model, split_sites
from medsim.inference.priors import OMEGA_SCALE_FACTOR, PriorSpec, build_priors
from medsim.inference.problem import FitDataError, prepare
from medsim.models import get


def test_pk_iv_priors_cover_every_parameter_with_the_documented_forms():
    model = get("pk_iv_1cmt")
    spec = build_priors(model, ["conc"])
    by_site = {s.site: s for s in spec.sites}
    assert by_site["CL"].distribution == "lognormal" and by_site["CL"].loc == pytest.approx(math.log(0.0047))
    assert by_site["theta_apgr"].distribution == "normal" and by_site["theta_apgr"].scale == 0.5
    assert by_site["sigma_central"].distribution == "halfnormal" and by_site["sigma_central"].scale == 0.1
    assert by_site["omega_V"].scale == pytest.approx(OMEGA_SCALE_FACTOR * 0.1670)
    assert by_site["res_prop_conc"].loc == pytest.approx(math.log(0.1149))
    assert "res_add_conc" not in by_site  # proportional error only
    assert spec.random_effects == ("CL", "V")
    assert PriorSpec.from_json(spec.to_json()) == spec


def test_ode_limit_fixes_process_noise_at_zero():
    spec = build_priors(get("pk_oral_1cmt"), ["conc"], process_noise=False)
    assert not spec.process_noise
    assert spec.fixed == {"sigma_central": 0.0}
    assert "sigma_central" not in {s.site for s in spec.sites}


def test_unconstrained_maps_match_numpyro_bijections():
    from numpyro.distributions.transforms import biject_to

    for site in build_priors(get("pk_iv_1cmt"), ["conc"]).sites:
        value = site.median() * 1.3
        # the sampler's coordinate: a signed process-noise scale is sampled on the real line
        expected = float(biject_to(site.sampled_prior().support).inv(jnp.asarray(value)))
        assert site.to_unconstrained(value) == pytest.approx(expected, rel=1e-6)
        assert site.from_unconstrained(site.to_unconstrained(value)) == pytest.approx(value, rel=1e-6)


def test_numpyro_program_has_named_sites_with_a_subject_plate():
    from numpyro import handlers

    data = prepare(oral_cohort(3), get("pk_oral_1cmt"))
    trace = handlers.trace(handlers.seed(hierarchical_model, jax.random.key(0))).get_trace(data)
    for name in ("ka", "CL", "V", "omega_ka", "omega_CL", "omega_V", "sigma_central_signed", "res_add_conc"):
        assert trace[name]["type"] == "sample" and jnp.shape(trace[name]["value"]) == ()
    # the process-noise scale is the absolute value of its signed coordinate, whose prior is
    # Normal(0, scale): |z| is then HalfNormal(scale), the stated prior
    assert trace["sigma_central"]["type"] == "deterministic"
    assert float(trace["sigma_central"]["value"]) == abs(float(trace["sigma_central_signed"]["value"]))
    assert trace["sigma_central_signed"]["fn"].scale == data.priors.site("sigma_central").scale
    assert trace["eta_ka_decentered"]["value"].shape == (3,)
    assert trace["eta_ka_decentered"]["cond_indep_stack"][0].name == "subject"
    assert trace["eta_ka"]["type"] == "deterministic"
    np.testing.assert_allclose(
        trace["eta_ka"]["value"], trace["omega_ka"]["value"] * trace["eta_ka_decentered"]["value"], rtol=1e-6
    )
    assert trace["log_likelihood"]["type"] == "sample"  # numpyro.factor


def test_split_sites_and_constrain_agree_with_the_prior_spec():
    data = prepare(oral_cohort(3), get("pk_oral_1cmt"), process_noise=False)
    unconstrained = {s.site: np.full((2, 5), s.to_unconstrained(s.median())) for s in data.priors.sites}
    unconstrained.update({f"eta_{p}_decentered": np.ones((2, 5, 3)) for p in data.priors.random_effects})
    values = constrain(data, unconstrained)
    np.testing.assert_allclose(values["omega_CL"], data.priors.site("omega_CL").median(), rtol=1e-6)
    np.testing.assert_allclose(values["eta_CL"], np.broadcast_to(values["omega_CL"][..., None], (2, 5, 3)))
    population, eta, noise, residual = split_sites(data.priors, values)
    assert noise is None and float(population["sigma_central"]) == 0.0
    assert set(eta) == {"ka", "CL", "V"} and set(residual) == {"conc_add"}


def test_prepare_names_a_missing_covariate():
    cohort = oral_cohort(3)
    with pytest.raises(FitDataError, match="needs covariate 'WGT' \\[kg\\], which the cohort lacks"):
        prepare(cohort, get("pk_iv_1cmt"))


def test_prepare_rejects_subjects_without_observations():
    cohort = oral_cohort(3)
    padded = cohort.padded()
    mask = padded.obs_mask.copy()
    mask[1] = False
    broken = dataclasses.replace(cohort, arrays=dataclasses.replace(padded, obs_mask=mask))
    with pytest.raises(FitDataError, match="subjects without observations cannot be fitted: \\['S2'\\]"):
        prepare(broken, get("pk_oral_1cmt"))


def test_fix_holds_a_structural_parameter_without_between_subject_variability():
    spec = build_priors(get("pk_oral_1cmt"), ["conc"])
    spec = dataclasses.replace(spec, scaling={"ka": 3.0, "CL": 1.0}, centering={"V": 1.0})
    held = spec.fix({"ka": 1.2, "V": 30.0})
    sites = {s.site for s in held.sites}
    assert {"ka", "omega_ka", "V", "omega_V"}.isdisjoint(sites) and {"CL", "omega_CL", "sigma_central"} <= sites
    assert held.random_effects == ("CL",) and held.fixed == {"ka": 1.2, "V": 30.0}
    assert held.scaling == {"CL": 1.0} and held.centering == {}
    assert held.held == {"ka": 1.2, "V": 30.0}
    assert PriorSpec.from_json(held.to_json()) == held
    # the ODE limit's zero noise scales are fixed too, but they are not "held" structural values
    both = build_priors(get("pk_oral_1cmt"), ["conc"], process_noise=False).fix({"CL": 2.0})
    assert both.fixed == {"sigma_central": 0.0, "CL": 2.0} and both.held == {"CL": 2.0}
    assert spec.fix({}) is spec


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"Q": 1.0}, "'Q' \\(not a structural parameter of this prior; structural: CL, V, ka\\)"),
        ({"sigma_central": 0.1}, "'sigma_central' \\(not a structural"),
        ({"ka": 0.0}, "'ka' = 0.0 \\(a structural parameter's value must be finite and > 0\\)"),
        ({"ka": float("nan")}, "'ka' = nan"),
        ({"ka": "fast"}, "'ka' = 'fast'"),
    ],
)
def test_fix_names_what_cannot_be_fixed(values, message):
    from medsim.inference.priors import PriorError

    with pytest.raises(PriorError, match=message):
        build_priors(get("pk_oral_1cmt"), ["conc"]).fix(values)
    with pytest.raises(PriorError, match="'ka' \\(already fixed"):
        build_priors(get("pk_oral_1cmt"), ["conc"]).fix({"ka": 1.0}).fix({"ka": 2.0})


def test_prepare_fixes_at_the_typical_value_and_the_likelihood_uses_it():
    model = get("pk_oral_1cmt")
    data = prepare(oral_cohort(3), model, fix={"ka": None, "V": 25.0})
    assert data.priors.fixed == {"ka": model.parameter("ka").typical, "V": 25.0}
    values = {s.site: np.asarray(s.median(), np.float32) for s in data.priors.sites}
    values.update({f"eta_{p}": np.zeros(3, np.float32) for p in data.priors.random_effects})
    population, eta, _, _ = split_sites(data.priors, values)
    assert float(population["V"]) == 25.0 and set(eta) == {"CL"}
    theta = model.individual_parameters(population, eta, {})
    np.testing.assert_allclose(np.asarray(theta["V"]), 25.0)
