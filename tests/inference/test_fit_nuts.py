"""A small NUTS fit end to end: posterior layout, provenance, files, conversion, diagnostics.

The fit is deliberately short (3 subjects, 2 chains x 100 draws): this module checks structure
and bookkeeping; convergence on real data is checked by the slow theophylline test.
"""

from __future__ import annotations

import json

import h5py
import jax.numpy as jnp
import numpy as np
import pytest
from inference_synthetic import oral_cohort

from medsim import inference
from medsim.inference import Posterior, PosteriorFormatError
from medsim.inference.hierarchical import pointwise_loglik
from medsim.inference.problem import prepare
from medsim.models import get
from medsim.population import PosteriorDraws

CHAINS, DRAWS = 2, 100


@pytest.fixture(scope="module")
def cohort():
    return oral_cohort(3)


@pytest.fixture(scope="module")
def fitted(cohort):
    calls = []
    post = inference.fit(
        cohort,
        get("pk_oral_1cmt"),
        chains=CHAINS,
        draws=DRAWS,
        warmup=100,
        seed=5,
        process_noise=False,
        progress=lambda done, total: calls.append((done, total)),
    )
    return post, calls


@pytest.fixture(scope="module")
def posterior(fitted):
    return fitted[0]


def test_groups_dimensions_and_names(posterior):
    idata = posterior.idata
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data", "constant_data"} <= set(idata.groups())
    post = idata.posterior
    assert post.sizes["chain"] == CHAINS and post.sizes["draw"] == DRAWS
    assert list(post["subject"].values) == ["S1", "S2", "S3"]
    for name in ("ka", "CL", "V", "omega_ka", "omega_CL", "omega_V", "res_add_conc"):
        assert post[name].dims == ("chain", "draw")
    for name in ("eta_ka", "eta_CL_decentered", "ka_i", "V_i"):
        assert post[name].dims == ("chain", "draw", "subject")
    assert "sigma_central" not in post  # ODE limit: fixed, not sampled
    stats = set(idata.sample_stats.data_vars)
    assert {"diverging", "energy", "n_steps", "tree_depth", "acceptance_rate", "step_size", "lp"} <= stats
    assert idata.log_likelihood["conc"].dims == ("chain", "draw", "conc_obs")
    assert idata.observed_data["conc"].size == 33  # 3 subjects x 11 observations


def test_individual_parameters_are_typical_times_exp_eta(posterior):
    post = posterior.idata.posterior
    expected = post["CL"].values[..., None] * np.exp(post["eta_CL"].values)
    np.testing.assert_allclose(post["CL_i"].values, expected, rtol=1e-5)


def test_pointwise_log_likelihood_matches_the_filter_for_a_draw(posterior, cohort):
    data = prepare(cohort, get("pk_oral_1cmt"), process_noise=False)
    post = posterior.idata.posterior
    values = {name: jnp.asarray(post[name].values[1, 7]) for name in post.data_vars}
    expected = np.asarray(pointwise_loglik(data, values))[data.obs_mask]
    np.testing.assert_allclose(posterior.idata.log_likelihood["conc"].values[1, 7], expected, rtol=1e-5, atol=1e-5)


def test_provenance_attributes(posterior, cohort):
    attrs = posterior.attrs
    assert attrs["model_name"] == "pk_oral_1cmt" and attrs["model_version"] == "1"
    assert attrs["data_hash"] == cohort.data_hash() and attrs["cohort_name"] == "synthetic-oral"
    assert attrs["backend"] == "numpyro" and attrs["method"] == "nuts" and attrs["seed"] == 5
    assert attrs["process_noise"] == 0
    assert json.loads(attrs["priors"])["fixed"] == {"sigma_central": 0.0}
    assert "jax" in json.loads(attrs["versions"]) and attrs["wall_time_s"] > 0
    assert attrs["created"].endswith("+00:00")
    assert json.loads(attrs["diagnostics"])["ok"] == bool(attrs["diagnostics_ok"])


def test_progress_reaches_the_total(fitted):
    calls = fitted[1]
    assert calls[-1] == (CHAINS * 200, CHAINS * 200)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(calls) > 5  # reported along the way, monotone


def test_diagnostics_match_arviz(posterior):
    import arviz as az

    d = posterior.diagnostics()
    assert d.applicable and d.chains == CHAINS and d.draws == DRAWS
    rhat = az.rhat(posterior.idata, var_names=["CL"])["CL"].item()
    assert d.parameters["CL"].rhat == pytest.approx(rhat)
    assert d.divergences == int(posterior.idata.sample_stats["diverging"].sum())
    # ESS threshold is 100 per chain
    assert d.thresholds["ess_min"] == 100 * CHAINS
    assert d.ok == (not d.problems)


def test_divergences_are_reported_as_problems(posterior):
    idata = posterior.idata.copy()
    idata.sample_stats["diverging"].values[0, :5] = True
    d = Posterior(idata=idata, model=posterior.model).diagnostics()
    assert d.divergences >= 5 and not d.ok
    assert any("divergent transitions" in p for p in d.problems)


def test_save_and_load_round_trip(posterior, tmp_path):
    path = posterior.save(tmp_path / "fit.nc")
    assert [p.name for p in tmp_path.iterdir()] == ["fit.nc"]  # no temporary left behind
    loaded = Posterior.load(path)
    assert loaded.model.name == "pk_oral_1cmt"
    for group in ("posterior", "log_likelihood", "sample_stats", "observed_data", "constant_data"):
        a, b = getattr(posterior.idata, group), getattr(loaded.idata, group)
        for name in a.data_vars:
            np.testing.assert_array_equal(a[name].values, b[name].values)
    assert loaded.attrs == posterior.attrs


def test_draws_for_the_population_sampler(posterior):
    draws = posterior.draws()
    assert isinstance(draws, PosteriorDraws)
    n = CHAINS * DRAWS
    assert draws.n_draws == n and draws.subject_ids == ("S1", "S2", "S3")
    np.testing.assert_array_equal(draws.population["sigma_central"], np.zeros(n))
    np.testing.assert_allclose(draws.population["CL"], posterior.idata.posterior["CL"].values.reshape(n))
    assert draws.eta["V"].shape == (n, 3) and set(draws.omega) == {"ka", "CL", "V"}
    assert set(draws.residual) == {"conc_add"}
    assert draws.provenance["data_hash"] == posterior.attrs["data_hash"]


def test_load_rejects_files_that_are_not_medsim_posteriors(posterior, tmp_path):
    text = tmp_path / "notes.nc"
    text.write_text("not a netCDF file")
    with pytest.raises(PosteriorFormatError, match="not a netCDF InferenceData file"):
        Posterior.load(text)
    foreign = tmp_path / "foreign.nc"
    idata = posterior.idata.copy()
    idata.posterior.attrs.pop("medsim_posterior")
    idata.to_netcdf(str(foreign))
    with pytest.raises(PosteriorFormatError, match="attribute 'medsim_posterior' is missing"):
        Posterior.load(foreign)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Posterior.load(tmp_path / "absent.nc")


def test_load_rejects_a_wrong_model_and_missing_groups(posterior, tmp_path):
    path = posterior.save(tmp_path / "fit.nc")
    with pytest.raises(PosteriorFormatError, match="is for model 'pk_oral_1cmt' version 1, not 'pk_iv_1cmt'"):
        Posterior.load(path, model=get("pk_iv_1cmt"))
    with h5py.File(path, "a") as f:
        del f["log_likelihood"]
    with pytest.raises(PosteriorFormatError, match=r"posterior groups missing: \['log_likelihood'\]"):
        Posterior.load(path)


def test_check_command_prints_json_and_fails_on_bad_diagnostics(posterior, tmp_path):
    from typer.testing import CliRunner

    import medsim.cli.fit_cmds  # noqa: F401  (registers `fit` and `check`)
    from medsim.cli import app

    idata = posterior.idata.copy()
    idata.sample_stats["diverging"].values[1, :3] = True  # a fit that must be flagged
    path = Posterior(idata=idata, model=posterior.model).save(tmp_path / "flagged.nc")
    result = CliRunner().invoke(app, ["check", str(path), "--json", "--figures", str(tmp_path / "figs")])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["divergences"] >= 3 and report["diagnostics"]["ok"] is False
    assert {"mean", "median", "sd", "hdi_low", "hdi_high", "r_hat", "ess_bulk", "ess_tail"} <= set(
        report["parameters"]["V"]
    )
    assert report["wall_time_s"] == pytest.approx(posterior.attrs["wall_time_s"])
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["energy.png", "rank.png", "trace.png"]
    text = CliRunner().invoke(app, ["check", str(path)])
    assert text.exit_code == 1 and "DIAGNOSTICS FAILED" in text.output
