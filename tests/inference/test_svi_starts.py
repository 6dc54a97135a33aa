"""SVI from several starts: the ODE-limit start, the best ELBO kept, and the check that equally good
optima agree (:func:`medsim.inference.svi_diagnostics.start_checks`)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from inference_synthetic import oral_cohort

from medsim import inference
from medsim.inference import FitConfigError
from medsim.inference.backends.numpyro_svi import STARTS, ode_start, parse_starts, run_svi, start_values
from medsim.inference.diagnostics import diagnose_posterior_attrs
from medsim.inference.problem import prepare
from medsim.inference.svi_diagnostics import ELBO_REL_TOL, START_SEPARATION, start_checks
from medsim.models import get

STEPS = 600


@pytest.fixture(scope="module")
def posterior():
    return inference.fit(
        oral_cohort(3), get("pk_oral_1cmt"), method="svi", svi_steps=STEPS, draws=100, seed=3, svi_start="prior,ode"
    )


def record(start, elbo, sites, se=0.0):
    return {"start": start, "elbo": elbo, "elbo_se": se, "sites": sites}


# --- start_checks on records made by hand -------------------------------------------------------


def test_equally_good_optima_that_agree_pass():
    kept = record("ode", -1000.0, {"omega_EGP": [np.log(0.2), 0.1, True], "beta": [0.5, 0.2, False]})
    other = record("prior", -1000.5, {"omega_EGP": [np.log(0.2) + 0.25, 0.1, True], "beta": [0.9, 0.2, False]})
    checks, problems = start_checks([kept, other])
    assert problems == []  # 2.5 and 2.0 SDs apart: below START_SEPARATION
    assert any("agree within 3 posterior SDs" in c for c in checks)


def test_equally_good_optima_that_disagree_are_a_problem_naming_the_sites():
    # seed-1 glucose figures: ELBO 2.3 nats apart (tolerance 1e-3 x 8336 = 8.3), omega_EGP 0.057 vs 0.17
    kept = record("prior", -8333.7, {"omega_EGP": [np.log(0.057), 0.2, True], "EGP": [0.1, 0.05, True]})
    other = record("ode", -8336.0, {"omega_EGP": [np.log(0.17), 0.15, True], "EGP": [0.12, 0.05, True]})
    checks, problems = start_checks([kept, other])
    assert len(problems) == 1
    assert "omega_EGP 0.057 vs 0.17 (5.5 SDs)" in problems[0] and "EGP " not in problems[0].split("disagree")[1][:10]
    assert "tolerance 8.3" in problems[0] and "NUTS" in problems[0]
    assert any("2.3 below the kept one" in c for c in checks)


def test_a_start_that_reached_a_worse_optimum_is_reported_not_flagged():
    kept = record("ode", -1000.0, {"omega_CL": [0.0, 0.1, True]})
    other = record("prior", -1000.0 - 2 * ELBO_REL_TOL * 1000, {"omega_CL": [5.0, 0.1, True]})
    checks, problems = start_checks([kept, other])
    assert problems == [] and any("worse optimum" in c for c in checks)


def test_the_elbo_noise_widens_the_tolerance():
    # 1e-3 of a 50-nat ELBO is 0.05 nats, below the noise of the two estimates (3 x hypot(0.4, 0.3) = 1.5)
    sites = {"omega_CL": [0.0, 0.1, True]}
    apart = {"omega_CL": [1.0, 0.1, True]}
    _, problems = start_checks([record("a", -50.0, sites, 0.4), record("b", -51.0, apart, 0.3)])
    assert len(problems) == 1 and "tolerance 1.5" in problems[0]
    _, problems = start_checks([record("a", -50.0, sites, 0.4), record("b", -52.0, apart, 0.3)])
    assert problems == []


def test_sites_on_different_scales_or_missing_are_not_compared():
    kept = record("a", -10.0, {"x": [0.0, 0.1, True], "only_kept": [0.0, 0.1, True]})
    other = record("b", -10.0, {"x": [3.0, 0.1, False]})
    assert start_checks([kept, other])[1] == []


def test_one_start_has_nothing_to_compare_and_no_finite_elbo_is_a_problem():
    assert start_checks(None) == ([], []) and start_checks([record("prior", -1.0, {})]) == ([], [])
    _, problems = start_checks([record("prior", None, {}), record("ode", None, {})])
    assert problems and "no start" in problems[0]
    checks, problems = start_checks([record("prior", -1.0, {}), record("ode", None, {})])
    assert problems == [] and any("no finite ELBO" in c for c in checks)


# --- parsing ------------------------------------------------------------------------------------


@given(st.lists(st.sampled_from(STARTS), min_size=1, max_size=2, unique=True), st.sampled_from([",", ", ", " ,"]))
def test_valid_start_lists_parse_in_order(names, sep):
    assert parse_starts(sep.join(names)) == tuple(names) == parse_starts(names)


@given(st.text(max_size=20))
def test_anything_else_is_refused_with_the_value_named(text):
    names = [n.strip() for n in text.split(",")]
    valid = all(n in STARTS for n in names) and len(set(names)) == len(names)
    if valid:
        assert parse_starts(text) == tuple(names)
    else:
        with pytest.raises(ValueError, match="expected distinct names from prior, ode"):
            parse_starts(text)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "svi", "svi_start": "prior,prior"}, "svi_start: SVI start: expected distinct names"),
        ({"method": "svi", "svi_start": "map"}, "'map'"),
        ({"method": "nuts", "svi_start": "ode"}, "applies to method 'svi', not 'nuts'"),
        ({"method": "svi", "svi_start": "ode", "process_noise": False}, "this fit is the ODE limit"),
    ],
)
def test_bad_starts_are_refused_before_any_work(options, message):
    with pytest.raises(FitConfigError, match=message):
        inference.fit(oral_cohort(3), get("pk_oral_1cmt"), **options)


# --- the ODE-limit start and a real two-start fit -------------------------------------------------


@pytest.mark.slow
def test_the_ode_start_is_the_ode_limit_fits_median_with_noise_at_its_prior_median():
    data = prepare(oral_cohort(3), get("pk_oral_1cmt"))
    data = dataclasses.replace(data, priors=data.priors.with_log_noise())
    values, info = ode_start(data, steps=300, seed=0, draws=7)  # draws: ignored (the start needs the median)
    ode = run_svi(dataclasses.replace(data, priors=data.priors.ode_limit()), steps=300, seed=0, draws=200)
    prior = start_values(data)
    assert set(values) == set(prior)
    noise = {s.sampled_site for s in data.priors.by_role("process_noise")}
    assert noise and all(values[n] == prior[n] for n in noise)
    shared = set(values) - noise
    assert shared and shared == set(ode.info["median"]) & set(values)
    for name in shared:  # same seed, same steps: the same ODE-limit fit, bit for bit
        np.testing.assert_array_equal(values[name], ode.info["median"][name])
    assert info["elbo_ode_limit"] == ode.info["elbo"] and info["steps"] == 300
    assert info["sites"] == ode.info["sites"] and "sigma_central" not in info["sites"]
    with pytest.raises(ValueError, match="ODE limit already"):
        ode_start(dataclasses.replace(data, priors=data.priors.ode_limit()), steps=10)


@pytest.mark.slow
def test_a_two_start_fit_keeps_the_best_elbo_and_records_both(posterior):
    attrs = posterior.idata.posterior.attrs
    starts = json.loads(attrs["svi_starts"])
    assert attrs["svi_start"] == "prior,ode" and {s["start"] for s in starts} == {"prior", "ode"}
    assert starts[0]["elbo"] >= starts[1]["elbo"] and attrs["elbo"] == pytest.approx(starts[0]["elbo"])
    assert json.loads(attrs["sampler"])["start"] == starts[0]["start"]
    ode = next(s for s in starts if s["start"] == "ode")
    assert ode["ode_limit"]["steps"] == STEPS and np.isfinite(ode["ode_limit"]["elbo_ode_limit"])
    # the kept fit's draws are the ones summarised first
    kept_cl = np.log(np.asarray(posterior.idata.posterior["CL"]).ravel())
    assert starts[0]["sites"]["CL"][0] == pytest.approx(np.median(kept_cl), rel=1e-6)
    lines = posterior.diagnostics().checks
    assert any(line.startswith(f"kept start {starts[0]['start']!r}") for line in lines)
    from medsim.cli.check_cmds import refit_settings

    assert refit_settings(posterior)["svi_start"] == "prior,ode"  # the held-out gate refits the same way


@pytest.mark.slow
def test_the_prior_stage_of_two_starts_is_the_default_fit_bit_for_bit(posterior):
    """``prior,ode`` runs the default fit (same seed, same steps) as its "prior" stage: its ELBO,
    the ELBO's standard error and its population sites are the default fit's exactly, and where the
    prior start is kept, so are the draws. A user comparing the two files sees one fit, not two."""
    default = inference.fit(oral_cohort(3), get("pk_oral_1cmt"), method="svi", svi_steps=STEPS, draws=100, seed=3)
    prior = next(s for s in json.loads(posterior.attrs["svi_starts"]) if s["start"] == "prior")
    assert prior["elbo"] == default.attrs["elbo"]
    assert prior["elbo_se"] == json.loads(default.attrs["sampler"])["elbo_se"]
    draws = default.idata.posterior
    for site, (median, sd, log) in prior["sites"].items():
        x = np.asarray(draws[site], np.float64).ravel()
        z = np.log(np.abs(x)) if log else x
        assert (median, sd) == (float(np.median(z)), float(np.std(z))), site
    if posterior.attrs["svi_start"] and json.loads(posterior.attrs["sampler"])["start"] == "prior":
        for name in draws.data_vars:
            np.testing.assert_array_equal(posterior.idata.posterior[name], draws[name])


@pytest.mark.slow
def test_the_stored_starts_are_judged_when_the_file_is_read(posterior):
    idata = posterior.idata.copy()
    starts = json.loads(idata.posterior.attrs["svi_starts"])
    starts[1]["elbo"] = starts[0]["elbo"]  # make the other start as good...
    mean, sd, log = starts[0]["sites"]["omega_CL"]
    starts[1]["sites"]["omega_CL"] = [mean + 2 * START_SEPARATION * sd, sd, log]  # ...and far apart
    idata.posterior.attrs["svi_starts"] = json.dumps(starts)
    diagnostics = diagnose_posterior_attrs(idata, "svi")
    assert not diagnostics.ok and any("omega_CL" in p and "cannot tell apart" in p for p in diagnostics.problems)


@pytest.mark.slow
def test_progress_runs_once_over_every_stage_and_a_diverged_start_is_recorded(monkeypatch):
    from medsim.inference.backends import numpyro_svi

    data = prepare(oral_cohort(3), get("pk_oral_1cmt"))
    data = dataclasses.replace(data, priors=data.priors.with_log_noise())
    seen = []
    real = numpyro_svi.run_svi

    def prior_start_diverges(fit_data, **options):
        if options.get("init_values") is None and fit_data.priors.process_noise:
            raise numpyro_svi.SviDivergedError("SVI diverged: test")
        return real(fit_data, **options)

    monkeypatch.setattr(numpyro_svi, "run_svi", prior_start_diverges)
    out = numpyro_svi.run_svi_starts(
        data, ("prior", "ode"), steps=100, draws=20, chunk=50, progress=lambda n, total: seen.append((n, total))
    )
    assert out.info["start"] == "ode" and [s["start"] for s in out.info["starts"]] == ["ode", "prior"]
    assert out.info["starts"][1] == {"start": "prior", "elbo": None, "error": "SVI diverged: test"}
    # three stages' worth of steps (prior, ODE limit, SDE from it), the diverged one never reported
    assert {t for _, t in seen} == {300} and seen[-1][0] == 300 and [n for n, _ in seen] == sorted(n for n, _ in seen)
    checks, problems = start_checks(out.info["starts"])
    assert problems == [] and any("'prior' reached no finite ELBO (SVI diverged: test)" in c for c in checks)

    def ode_diverges(*args, **kwargs):
        raise numpyro_svi.SviDivergedError("ODE limit diverged")

    monkeypatch.setattr(numpyro_svi, "ode_start", ode_diverges)
    with pytest.raises(numpyro_svi.SviDivergedError, match="every start: prior: SVI diverged: test; ode: ODE limit"):
        numpyro_svi.run_svi_starts(data, ("prior", "ode"), steps=10)
    with pytest.raises(numpyro_svi.SviDivergedError, match=r"^SVI diverged: test$"):  # one start: its own error
        numpyro_svi.run_svi_starts(data, ("prior",), steps=10)
