"""Simulation-based calibration, held-out coverage and their statistics."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from medsim.inference.calibration import Design, _prior_draws, _simulate, narrowed_priors, run_calibration
from medsim.inference.checks.coverage import binomial_interval, rank_uniformity
from medsim.inference.checks.heldout import heldout_mask, split_last
from medsim.inference.checks.predictive import PredictiveError
from medsim.inference.problem import prepare
from medsim.models import get

MODEL = narrowed_priors(get("pk_oral_1cmt"))


def test_binomial_interval_matches_the_clopper_pearson_closed_form():
    # With 0 successes the exact upper bound solves (1 - p)^n = alpha / 2; with n of n, p^n = alpha / 2.
    out = binomial_interval(0, 10, confidence=0.99)
    assert out["lower"] == 0.0 and out["upper"] == pytest.approx(1 - 0.005 ** (1 / 10), rel=1e-9)
    out = binomial_interval(10, 10, confidence=0.99)
    assert out["upper"] == 1.0 and out["lower"] == pytest.approx(0.005 ** (1 / 10), rel=1e-9)
    assert binomial_interval(9, 10)["rate"] == 0.9
    with pytest.raises(ValueError, match="hits"):
        binomial_interval(11, 10)


def test_rank_uniformity_accepts_uniform_and_rejects_skewed_ranks():
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 100, 2000)  # ranks among 99 draws: 0..99
    assert rank_uniformity(uniform, 99)["p_value"] > 1e-3  # a false alarm has probability 1e-3
    skewed = np.minimum(rng.integers(0, 100, 2000), rng.integers(0, 100, 2000))  # biased low
    result = rank_uniformity(skewed, 99)
    assert result["p_value"] < 1e-10 and sum(result["counts"]) == 2000
    with pytest.raises(ValueError, match="divide"):
        rank_uniformity(uniform, 98, n_bins=10)
    with pytest.raises(ValueError, match="ranks"):
        rank_uniformity(np.array([100]), 99)


def test_narrowed_priors_only_narrow():
    base = get("pk_oral_1cmt")
    for p, q in zip(base.parameters, MODEL.parameters, strict=True):
        assert q.name == p.name and q.typical == p.typical and q.kind == p.kind
        if p.kind == "structural":
            assert q.prior_log_sd == min(p.prior_log_sd, 0.5) and q.bsv == min(p.bsv, 0.35)
        else:
            assert q == p
    assert MODEL.residual == base.residual and type(MODEL) is type(base)


def test_design_validation_and_heldout_split():
    with pytest.raises(ValueError, match="increasing"):
        Design(obs_time=(1.0, 0.5))
    with pytest.raises(ValueError, match="held_out"):
        Design(obs_time=(1.0,), held_out=1)
    design = Design(n_subjects=3, obs_time=(1.0, 2.0, 4.0), held_out=1)
    with pytest.raises(ValueError, match="svi_learning_rate > 0"):  # refused before any prior draw or fit
        run_calibration(MODEL, design, n_cohorts=2, seed=0, method="svi", svi_learning_rate=0.0)
    full = design.cohort(np.arange(9.0).reshape(3, 3), fitted_only=False)
    mask = heldout_mask(full, 1)
    assert mask.tolist() == [[False, False, True]] * 3
    fitted = split_last(full, 1).padded()
    np.testing.assert_array_equal(fitted.obs_value, [[0.0, 1.0], [3.0, 4.0], [6.0, 7.0]])
    np.testing.assert_array_equal(fitted.dose_amount, full.padded().dose_amount)
    with pytest.raises(PredictiveError, match="nothing to fit"):
        heldout_mask(full, 3)


def test_prior_draws_follow_the_fitted_prior_specification():
    """SBC is only valid if truths come from the prior the fit uses: compare moments to PriorSpec.

    Tolerances: 4 Monte Carlo standard errors of a mean (sd / sqrt(n)) with n = 4000.
    """
    data = prepare(Design(n_subjects=2).cohort(), MODEL, process_noise=True)
    n = 4000
    values = _prior_draws(data, n, key=jax.random.key(0))
    for site in data.priors.sites:
        x = np.asarray(values[site.site]).ravel()
        if site.distribution == "lognormal":
            assert abs(np.log(x).mean() - site.loc) < 4 * site.scale / math.sqrt(n), site.site
        elif site.distribution == "halfnormal":  # E|X| = scale sqrt(2 / pi), sd = scale sqrt(1 - 2 / pi)
            mean, sd = site.scale * math.sqrt(2 / math.pi), site.scale * math.sqrt(1 - 2 / math.pi)
            assert abs(x.mean() - mean) < 4 * sd / math.sqrt(n), site.site
    for p in data.priors.random_effects:
        np.testing.assert_allclose(values[f"eta_{p}"], values[f"omega_{p}"] * values[f"eta_{p}_decentered"])


def test_simulated_cohorts_follow_the_closed_form():
    """ODE limit, residual error switched off via a tiny SD: one-compartment oral closed form
    (Gabrielsson & Weiner 2016, eq. 2:5); Euler's relative error ~ ka dt / 2 < 1e-3 here."""
    design = Design(n_subjects=2, obs_time=(0.5, 2.0, 6.0), held_out=0)
    data = prepare(design.cohort(), MODEL, process_noise=False)
    values = {s.site: np.full((1, 1), s.median()) for s in data.priors.sites}
    values["res_add_conc"] = np.full((1, 1), 1e-6)
    for p, eta in zip(data.priors.random_effects, ([0.2, -0.1], [0.0, 0.3], [-0.2, 0.1]), strict=True):
        values[f"eta_{p}"] = np.asarray([eta])
    y = _simulate(data, design, values, key=jax.random.key(0), dt=0.001)
    ka = 1.6 * np.exp([0.2, -0.1])[:, None]
    cl = 2.75 * np.exp([0.0, 0.3])[:, None]
    v = 31.9 * np.exp([-0.2, 0.1])[:, None]
    t = np.asarray(design.obs_time)[None, :]
    k = cl / v
    expected = design.dose_amount * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))
    np.testing.assert_allclose(y[0], expected, rtol=2e-3)


@pytest.mark.slow
def test_simulation_based_calibration_of_the_ode_fit():
    """20 cohorts x 8 subjects drawn from the prior, fitted by vectorised NUTS, ranked and covered.

    Every check is an exact binomial or chi-square test at level 3e-4, so the ~31 checks together
    raise a false alarm with probability below 1 % (Bonferroni). Coverage intervals are central
    50 % and 90 % credible intervals of each population site and of one subject's random effects;
    held-out coverage is of each subject's 24 h sample by its 90 % posterior predictive interval
    (160 points: a 90 % rate is told from 80 % with this many).
    """
    design = Design(n_subjects=8)
    result = run_calibration(
        MODEL,
        design,
        n_cohorts=20,
        seed=1,
        chains=1,
        warmup=200,
        draws=200,
        n_rank_draws=49,
        max_tree_depth=7,
        n_predictive_draws=100,
    )
    summary = result.summary(n_bins=5, confidence=1 - 3e-4)
    assert result.n_cohorts == 20 and len(summary["sites"]) == 10
    problems = []
    for site, entry in summary["sites"].items():
        if entry["rank_test"]["p_value"] < 3e-4:
            problems.append((site, "ranks", entry["rank_test"]))
        for level in (50, 90):
            cov = entry[f"coverage_{level}"]
            if not cov["lower"] <= level / 100 <= cov["upper"]:
                problems.append((site, level, cov))
    held = summary["heldout_coverage_90"]
    if not held["lower"] <= 0.9 <= held["upper"]:
        problems.append(("held-out", 90, held))
    assert not problems
    assert summary["divergences"] <= 0.01 * 20 * 200  # under 1 % divergent transitions


def test_design_with_several_doses_gives_every_subject_all_of_them():
    design = Design(n_subjects=2, obs_time=(1.0, 2.0), obs_cmt=3, doses=((30.0, 1, 6.0), (0.0, 2, 60.0)))
    assert design.events == ((0.0, 2, 60.0), (30.0, 1, 6.0))  # time order
    padded = design.cohort().padded()
    np.testing.assert_array_equal(padded.dose_time, [[0.0, 30.0]] * 2)
    np.testing.assert_array_equal(padded.dose_amount, [[60.0, 6.0]] * 2)
    np.testing.assert_array_equal(padded.dose_cmt, [[2, 1]] * 2)
    assert Design().events == ((0.0, 1, 320.0),)  # no doses: the single bolus, as before
    with pytest.raises(ValueError, match="amount >= 0"):
        Design(doses=((0.0, 1, -5.0),))


def test_calibration_summary_leaves_out_cohorts_whose_predictions_could_not_be_simulated():
    from medsim.inference.calibration import CalibrationResult

    held = np.array([[[True]], [[False]], [[True]]])  # 3 cohorts x 1 subject x 1 held-out point
    result = CalibrationResult(
        sites=("a",),
        truth={"a": np.zeros(3)},
        ranks={"a": np.array([1, 50, 98])},
        n_rank_draws=99,
        covered={0.9: {"a": np.array([True, True, False])}},
        heldout_covered=held,
        divergences=np.zeros(3, int),
        settings={"heldout_unsimulated": [{"cohort": 1, "why": "runaway state"}]},
    )
    summary = result.summary(n_bins=2)
    assert summary["heldout_coverage_90"]["n"] == 2 and summary["heldout_coverage_90"]["hits"] == 2
    assert summary["heldout_cohorts_unsimulated"] == 1
    all_failed = {"heldout_unsimulated": [{"cohort": c, "why": "runaway state"} for c in range(3)]}
    none = CalibrationResult(**{**result.__dict__, "settings": all_failed})
    assert none.summary(n_bins=2)["heldout_coverage_90"]["rate"] is None  # unknown, not 0


@pytest.mark.slow  # three small SVI fits
def test_a_diverged_svi_fit_leaves_its_cohort_out_listed_and_the_others_unchanged():
    # One cohort whose fit left no valid guide (SviDivergedError on a worker) must not stop the
    # others' fits or shift their seeds: its cohort is left out of the ranks and listed.
    design = Design(n_subjects=4, obs_time=(0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0))
    settings = dict(n_cohorts=2, seed=5, draws=50, n_rank_draws=49, method="svi", svi_steps=100, n_predictive_draws=50)
    full = run_calibration(MODEL, design, **settings)

    def first_diverges(fn, tasks):
        return [{"diverged": "SVI diverged (as a test)"} if i == 0 else fn(task) for i, task in enumerate(tasks)]

    part = run_calibration(MODEL, design, map_tasks=first_diverges, **settings)
    assert part.settings["fits_diverged"] == [{"cohort": 0, "why": "SVI diverged (as a test)"}]
    assert full.settings["fits_diverged"] == [] and part.n_cohorts == 1
    for site in full.sites:
        np.testing.assert_array_equal(part.ranks[site], full.ranks[site][1:], err_msg=site)
        np.testing.assert_array_equal(part.truth[site], full.truth[site][1:], err_msg=site)
    np.testing.assert_array_equal(part.heldout_covered, full.heldout_covered[1:])
    assert part.settings["elbo"] == full.settings["elbo"][1:]
    with pytest.raises(ValueError, match="every one of the 2 SVI fits diverged"):
        run_calibration(MODEL, design, map_tasks=lambda fn, tasks: [{"diverged": "x"} for _ in tasks], **settings)
