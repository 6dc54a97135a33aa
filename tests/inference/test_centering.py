"""Per-parameter centred / non-centred random effects: same prior, different sampler coordinates."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from inference_synthetic import oral_cohort

import medsim.data
from inference.hierarchical import (
    choose_centering,
    constrain,
    potential_fn,
    unconstrained_sites,
    with_centering,
)
from inference.priors import PriorError, PriorSpec
from inference.problem import prepare
from medsim.models import get


@pytest.fixture(scope="module")
def oral():
    return prepare(oral_cohort(n_subjects=4, seed=3), get("pk_oral_1cmt"))


def test_the_choice_round_trips_through_json_and_names_must_be_random_effects(oral):
    spec = dataclasses.replace(oral.priors, centered=("V",))
    assert PriorSpec.from_json(spec.to_json()).centered == ("V",)
    with pytest.raises(PriorError, match="sigma_central"):
        dataclasses.replace(oral.priors, centered=("sigma_central",))


def test_centred_and_noncentred_densities_differ_only_by_the_jacobian(oral):
    """log p(omega, eta) = log p(omega, z = eta / omega) - S log omega for each centred parameter.

    The two parametrisations are the same prior; numpyro's potential must differ exactly by the
    change-of-variables term (float32 evaluation: a few 1e-5 relative on a potential of ~1e2).
    """
    centred = with_centering(oral, ("ka", "V"))
    rng = np.random.default_rng(0)
    u_nc = {s.site: np.float32(s.to_unconstrained(s.median()) + rng.uniform(-0.3, 0.3)) for s in oral.priors.sites}
    for p in oral.priors.random_effects:
        u_nc[f"eta_{p}_decentered"] = rng.normal(size=oral.n_subjects).astype(np.float32)
    values = constrain(oral, u_nc)
    u_c = {k: v for k, v in u_nc.items() if k not in ("eta_ka_decentered", "eta_V_decentered")}
    u_c["eta_ka"], u_c["eta_V"] = values["eta_ka"], values["eta_V"]
    assert set(u_c) == set(unconstrained_sites(centred))
    jacobian = oral.n_subjects * (np.log(values["omega_ka"]) + np.log(values["omega_V"]))
    nc = float(potential_fn(oral)({k: jnp.asarray(v) for k, v in u_nc.items()}))
    c = float(potential_fn(centred)({k: jnp.asarray(v) for k, v in u_c.items()}))
    assert c == pytest.approx(nc + jacobian, rel=1e-4, abs=1e-3)
    # And the centred sites map back to the same individual effects.
    back = constrain(centred, u_c)
    for p in ("ka", "CL", "V"):
        np.testing.assert_allclose(back[f"eta_{p}"], values[f"eta_{p}"], rtol=1e-6)
        np.testing.assert_allclose(back[f"eta_{p}_decentered"], values[f"eta_{p}_decentered"], rtol=1e-5)


def test_auto_centres_what_each_subjects_data_pin_down():
    """Theophylline (11 samples per subject) pins down each subject's V; pheno's 1-3 samples per
    neonate say little about an individual CL, so CL stays non-centred there."""
    theoph, ratios_t = choose_centering(prepare(medsim.data.load("theoph"), get("pk_oral_1cmt")))
    pheno, ratios_p = choose_centering(prepare(medsim.data.load("pheno"), get("pk_iv_1cmt")))
    assert "V" in theoph and "V" in pheno
    assert "CL" not in pheno and ratios_p["CL"] < 0.1 < 1.0 < ratios_p["V"]
    assert all(r >= 0 for r in [*ratios_t.values(), *ratios_p.values()])
