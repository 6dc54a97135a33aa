"""Per-parameter centred / non-centred random effects: same prior, different sampler coordinates."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from inference_synthetic import oral_cohort

import medsim.data
from medsim.inference.hierarchical import (
    choose_centering,
    constrain,
    data_information,
    potential_fn,
    unconstrained_sites,
    with_centering,
)
from medsim.inference.priors import PriorError, PriorSpec, build_priors
from medsim.inference.problem import prepare
from medsim.models import get


@pytest.fixture(scope="module")
def oral():
    return prepare(oral_cohort(n_subjects=4, seed=3), get("pk_oral_1cmt"))


def _non_centred_point(data, *, seed: int) -> dict[str, np.ndarray]:
    """Sampler coordinates with every random effect non-centred: population sites near their
    prior medians (unconstrained scale), standard-normal ``eta_<p>_decentered``."""
    rng = np.random.default_rng(seed)
    point = {
        s.sampled_site: np.float32(s.to_unconstrained(s.median()) + rng.uniform(-0.3, 0.3)) for s in data.priors.sites
    }
    for p in data.priors.random_effects:
        point[f"eta_{p}_decentered"] = rng.normal(size=data.n_subjects).astype(np.float32)
    return point


def test_the_weights_round_trip_through_json_and_are_checked(oral):
    spec = dataclasses.replace(oral.priors, centering={"V": 0.7, "ka": 1.0})
    back = PriorSpec.from_json(spec.to_json())
    assert back.centering == {"V": 0.7, "ka": 1.0} and back.centered == ("ka",)
    assert [back.eta_site(p) for p in ("ka", "CL", "V")] == ["eta_ka", "eta_CL_decentered", "eta_V_partial"]
    # files written before weights list the fully centred effects
    old = spec.to_json().replace('"centering": {"V": 0.7, "ka": 1.0}', '"centered": ["V"]')
    assert PriorSpec.from_json(old).centering == {"V": 1.0}
    with pytest.raises(PriorError, match="sigma_central"):
        dataclasses.replace(oral.priors, centering={"sigma_central": 1.0})
    with pytest.raises(PriorError, match=r"\[0, 1\]"):
        dataclasses.replace(oral.priors, centering={"V": 1.5})


def test_densities_of_any_centring_differ_only_by_the_jacobian(oral):
    """The coordinate of weight w is u = eta / omega^(1 - w) = z * omega^w, so
    log p(omega, u) = log p(omega, z) - S w log omega for each random effect.

    Every weight is the same prior; numpyro's potential must differ exactly by the
    change-of-variables term (float32 evaluation: a few 1e-5 relative on a potential of ~1e2).
    """
    weights = {"ka": 1.0, "CL": 0.25, "V": 0.6}
    centred = with_centering(oral, weights)
    u_nc = _non_centred_point(oral, seed=0)
    values = constrain(oral, u_nc)
    u_c = {k: v for k, v in u_nc.items() if not k.startswith("eta_")}
    for p, w in weights.items():
        u_c[centred.priors.eta_site(p)] = values[f"eta_{p}_decentered"] * values[f"omega_{p}"] ** w
    assert set(u_c) == set(unconstrained_sites(centred))
    jacobian = oral.n_subjects * sum(w * np.log(values[f"omega_{p}"]) for p, w in weights.items())
    nc = float(potential_fn(oral)({k: jnp.asarray(v) for k, v in u_nc.items()}))
    c = float(potential_fn(centred)({k: jnp.asarray(v) for k, v in u_c.items()}))
    assert c == pytest.approx(nc + jacobian, rel=1e-4, abs=1e-3)
    # And every coordinate maps back to the same individual effects (and no partial site is kept).
    back = constrain(centred, u_c)
    assert "eta_V_partial" not in back and "eta_CL_partial" not in back
    for p in ("ka", "CL", "V"):
        np.testing.assert_allclose(back[f"eta_{p}"], values[f"eta_{p}"], rtol=1e-5)
        np.testing.assert_allclose(back[f"eta_{p}_decentered"], values[f"eta_{p}_decentered"], rtol=1e-5)


def test_scaled_coordinates_differ_only_by_the_jacobian(oral):
    """The scaled coordinate is u = eta / s(omega) = z sqrt(1 + I omega^2), so the potential
    differs from the non-centred one by S/2 log(1 + I omega^2) per random effect (float32: same
    tolerance as above), and maps back to the same effects."""
    info = {"ka": 30.0, "CL": 2.0, "V": 80.0}
    scaled = dataclasses.replace(oral, priors=dataclasses.replace(oral.priors, scaling=info))
    assert [scaled.priors.eta_site(p) for p in ("ka", "CL", "V")] == ["eta_ka_scaled", "eta_CL_scaled", "eta_V_scaled"]
    u_nc = _non_centred_point(oral, seed=1)
    values = constrain(oral, u_nc)
    u_s = {k: v for k, v in u_nc.items() if not k.startswith("eta_")}
    for p, i in info.items():
        u_s[f"eta_{p}_scaled"] = values[f"eta_{p}_decentered"] * np.sqrt(1 + i * values[f"omega_{p}"] ** 2)
    assert set(u_s) == set(unconstrained_sites(scaled))
    jacobian = oral.n_subjects * sum(0.5 * np.log1p(i * values[f"omega_{p}"] ** 2) for p, i in info.items())
    nc = float(potential_fn(oral)({k: jnp.asarray(v) for k, v in u_nc.items()}))
    s = float(potential_fn(scaled)({k: jnp.asarray(v) for k, v in u_s.items()}))
    assert s == pytest.approx(nc + jacobian, rel=1e-4, abs=1e-3)
    back = constrain(scaled, u_s)
    assert not any(k.endswith("_scaled") or k.endswith("_signed") for k in back)
    for p in info:
        np.testing.assert_allclose(back[f"eta_{p}"], values[f"eta_{p}"], rtol=1e-5)
    assert float(back["sigma_central"]) == pytest.approx(abs(float(u_nc["sigma_central_signed"])))


def test_scaling_is_validated_and_stored():
    spec = build_priors(get("pk_oral_1cmt"), ["conc"])
    scaled = dataclasses.replace(spec, scaling={"ka": 32.4, "V": 0.0})
    assert PriorSpec.from_json(scaled.to_json()) == scaled
    assert scaled.describe_coordinates() == "ka scaled (I 32.4), CL centring 0, V scaled (I 0)"
    with pytest.raises(PriorError, match="not random effects"):
        dataclasses.replace(spec, scaling={"res_add_conc": 1.0})
    with pytest.raises(PriorError, match=">= 0"):
        dataclasses.replace(spec, scaling={"ka": -1.0})
    with pytest.raises(PriorError, match="both"):
        dataclasses.replace(spec, scaling={"ka": 1.0}, centering={"ka": 1.0})


def test_auto_scales_every_effect_by_the_median_subjects_information():
    data = prepare(medsim.data.load("theoph"), get("pk_oral_1cmt"))
    information = data_information(data)
    auto = with_centering(data, "auto", information=information).priors
    assert auto.centering == {} and set(auto.scaling) == set(data.priors.random_effects)
    for p, value in auto.scaling.items():
        assert value == pytest.approx(float(np.median(information[p])), rel=1e-3)
    # every concentration informs V; the absorption phase (a few early samples) informs ka least
    assert auto.scaling["V"] > auto.scaling["CL"] > auto.scaling["ka"] > 10.0
    assert with_centering(data, "rule", information=information).priors.centering == {"ka": 1.0, "CL": 1.0, "V": 1.0}
    assert with_centering(data, "none").priors.scaling == {}
    # the information is taken without process noise: the ODE limit's data give the same
    ode = data_information(prepare(medsim.data.load("theoph"), get("pk_oral_1cmt"), process_noise=False))
    for p in data.priors.random_effects:
        np.testing.assert_allclose(ode[p], information[p], rtol=1e-6)
    spec = data.priors.ode_limit()
    assert spec == build_priors(get("pk_oral_1cmt"), ["conc"], process_noise=False)


def test_rule_centring_follows_what_each_subjects_data_pin_down():
    """Theophylline (11 samples per subject) pins down each subject's ka, CL and V; pheno's 1-3
    samples per neonate say little about an individual CL, so CL stays non-centred."""
    theoph_data = prepare(medsim.data.load("theoph"), get("pk_oral_1cmt"))
    pheno_data = prepare(medsim.data.load("pheno"), get("pk_iv_1cmt"))
    theoph, ratios_t = choose_centering(theoph_data)
    pheno, ratios_p = choose_centering(pheno_data)
    # the rule: fully centred where the median subject's I * omega^2 exceeds 1
    assert theoph == {"ka": 1.0, "CL": 1.0, "V": 1.0} and pheno == {"CL": 0.0, "V": 1.0}
    assert ratios_p["CL"] < 1.0 < 5.0 < ratios_p["V"] and min(ratios_t.values()) > 10.0
    # partial=True: w = r / (1 + r), the partially non-centred weight of the normal hierarchy
    for data, ratios in ((theoph_data, ratios_t), (pheno_data, ratios_p)):
        weights = choose_centering(data, partial=True)[0]
        for p, r in ratios.items():
            assert r >= 0 and weights[p] == pytest.approx(r / (1 + r), abs=5e-4)
    assert with_centering(theoph_data, "partial").priors.eta_site("V") == "eta_V_partial"
