"""Calibration, the calibration gate, virtual patients, and a rollout of neural patients."""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from medsim.inference.neural import calibrate, interval_metrics
from medsim.models.neural import (
    MiscalibratedModelError,
    NeuralConfig,
    NeuralPatientModel,
    require_calibrated,
    sample_neural_population,
)
from medsim.models.neural.dose_filter import filter_values
from medsim.population import load_population


@pytest.fixture(scope="module")
def held_out(cohort):
    return list(cohort.subjects[:3])


@pytest.fixture(scope="module")
def report(trained, held_out):
    return calibrate(trained.model, held_out, steps_ahead=3, samples=64, seed=0)


def _calibrated(model, coverage: float):
    out = copy.deepcopy(model)
    out.config = out.config.with_calibration(
        {
            "coverage": {"0.5": coverage - 0.3, "0.9": coverage},
            "coverage_by_step": {"0.9": [coverage]},
            "width_by_step": {"0.9": [1.5]},
            "n_predictions": 40,
            "n_subjects": 3,
        }
    )
    return out


def test_interval_metrics_of_a_calibrated_forecaster():
    # Measurements drawn from the predictive distribution itself: coverage is binomial around
    # the nominal level (SE sqrt(0.9 * 0.1 / 4000) = 0.005; 4 SE allowed, plus O(1/M) from
    # empirical quantiles of M = 400 draws), widths are those of N(0, 2^2) intervals.
    rng = np.random.default_rng(0)
    simulated = 2.0 * rng.standard_normal((2000, 2, 400))
    measured = 2.0 * rng.standard_normal((2000, 2))
    mask = np.ones((2000, 2), bool)
    mask[:10, 1] = False
    m = interval_metrics(simulated, measured, mask)
    assert m["n_by_step"] == [2000, 1990] and m["n_predictions"] == 3990
    assert m["coverage"]["0.9"] == pytest.approx(0.9, abs=0.025)
    assert m["coverage"]["0.5"] == pytest.approx(0.5, abs=0.035)
    assert m["width"]["0.9"] == pytest.approx(2 * 1.6449 * 2.0, rel=0.03)
    assert m["width"]["0.5"] == pytest.approx(2 * 0.6745 * 2.0, rel=0.03)
    # RMSE of the predictive mean against an independent draw: sqrt(4 + 4/400)
    assert m["rmse"] == pytest.approx(np.sqrt(4.01), rel=0.05)


def test_calibration_report_is_consistent(report, held_out):
    assert report.n_subjects == 3 and report.subjects == [s.id for s in held_out]
    assert sum(report.n_by_step) == report.n_predictions > 0
    for level in ("0.5", "0.9"):
        assert 0.0 <= report.coverage[level] <= 1.0
        assert len(report.coverage_by_step[level]) == 3
    assert 0 < report.width["0.5"] < report.width["0.9"]
    assert report.coverage["0.5"] <= report.coverage["0.9"]
    assert report.rmse > 0


def test_wider_residual_error_raises_coverage(trained, held_out, report):
    # With the residual SD inflated to ~50 mg/L (measurements span 0-10 mg/L) every measurement
    # lies inside its 90% interval; with residual error and diffusion shrunk towards zero the
    # intervals narrow and coverage must fall below the trained model's.
    wide, narrow = copy.deepcopy(trained.model), copy.deepcopy(trained.model)
    with torch.no_grad():
        wide.decoder.raw_add.fill_(50.0)
        narrow.decoder.raw_add.fill_(-12.0)
        narrow.decoder.raw_prop.fill_(-12.0)
        narrow.dynamics.diffusion_offset.fill_(-12.0)
    high = calibrate(wide, held_out, steps_ahead=3, samples=64, seed=0)
    low = calibrate(narrow, held_out, steps_ahead=3, samples=64, seed=0)
    assert high.coverage["0.9"] == 1.0
    assert low.coverage["0.9"] < report.coverage["0.9"]
    assert low.width["0.9"] < report.width["0.9"] < high.width["0.9"]


def test_the_gate_refuses_uncalibrated_and_miscalibrated_models(trained, cohort):
    with pytest.raises(MiscalibratedModelError, match="no held-out calibration"):
        sample_neural_population(trained.model, 4, seed=0)
    bad = _calibrated(trained.model, 0.6)
    with pytest.raises(
        MiscalibratedModelError, match=r"covered 0\.600 of 40 .*floor 0\.80.*1: 0\.60 \(width 1\.5\)"
    ) as err:
        sample_neural_population(bad, 4, seed=0)
    assert err.value.coverage == 0.6 and err.value.floor == 0.8
    assert require_calibrated(bad, floor=0.5)["coverage"]["0.9"] == 0.6
    forced = sample_neural_population(bad, 4, seed=0, force=True)
    assert forced.provenance["forced"] is True
    with pytest.raises(ValueError, match="floor"):
        require_calibrated(bad, floor=1.5)


def test_population_patients(trained, cohort):
    model = _calibrated(trained.model, 0.9)
    pop = sample_neural_population(model, 10, seed=1, subjects=cohort.subjects, n_draws=5)
    again = sample_neural_population(model, 10, seed=1, subjects=cohort.subjects, n_draws=5)
    assert pop.n_patients == 10 and pop.mode == "population" and pop.patients_per_draw == 2
    np.testing.assert_array_equal(pop.draw, np.repeat(np.arange(5), 2))
    for name, values in pop.params.items():
        np.testing.assert_array_equal(values, again.params[name])
    # patients of one draw share the drift weights, not the latent state
    np.testing.assert_array_equal(pop.params["weight_delta_00"][0], pop.params["weight_delta_00"][1])
    assert pop.params["initial_latent_00"][0] != pop.params["initial_latent_00"][1]
    assert set(pop.covariates["WT"]) <= {s.covariates["WT"] for s in cohort.subjects}
    # the exported model carries the calibration, so a risk report can gate on it too
    assert require_calibrated(pop.model)["coverage"]["0.9"] == 0.9
    x0 = pop.initial_state()
    np.testing.assert_allclose(x0["latent_01"], pop.params["initial_latent_01"], rtol=1e-6)
    assert np.all(x0["dose_cmt1"] == 0)
    given = sample_neural_population(model, 4, seed=1, covariates={"WT": 55.0})
    assert np.all(given.covariates["WT"] == 55.0)
    with pytest.raises(ValueError, match="unknown covariate 'AGE'"):
        sample_neural_population(model, 4, seed=1, covariates={"AGE": 3.0})
    # a model conditioned on no covariate samples from one population distribution
    bare = NeuralPatientModel(NeuralConfig.from_dict({**model.config.to_dict(), "covariates": []}))
    assert sample_neural_population(bare, 3, seed=0, force=True).covariates == {}


def test_digital_twin(trained, cohort, tmp_path):
    model = _calibrated(trained.model, 0.9)
    subject = cohort.subject("2")  # two boluses, the second after its last observation or before
    twin = sample_neural_population(model, 6, seed=2, mode="personalized", subject="2", subjects=cohort.subjects)
    assert list(twin.subject) == ["2"] * 6 and twin.mode == "personalized"
    # a slot (draw) shares everything but the noise: latent state, embedding and weights
    for name in ("initial_latent_00", "embedding_00", "weight_delta_01"):
        assert twin.params[name][0] == twin.params[name][1] != twin.params[name][2]
    last = subject.obs_time[-1]
    before = subject.dose_time < last
    expected = filter_values(
        torch.tensor([[last]], dtype=torch.float64),
        torch.tensor(subject.dose_time[before][None]),
        torch.zeros(1, int(before.sum()), dtype=torch.long),
        torch.tensor(subject.dose_amount[before][None]),
        torch.tensor(subject.dose_rate[before][None]),
        torch.ones(1, int(before.sum()), dtype=torch.bool),
        model.filter_time_constants.detach().double(),
    )[0, 0, 0]
    np.testing.assert_allclose(twin.params["initial_dose_cmt1"], float(expected), rtol=1e-5)
    with pytest.raises(KeyError, match="no subject 'nobody'"):
        sample_neural_population(model, 2, seed=0, mode="personalized", subject="nobody", subjects=cohort.subjects)
    path = twin.save(tmp_path / "twin.nc")
    back = load_population(path, model=twin.model)
    for name, values in twin.params.items():
        np.testing.assert_allclose(back.params[name], values)


def test_rollout_runs_neural_patients_unchanged(trained, cohort):
    from medsim.policies import parse_policy
    from medsim.policies.rollout import rollout
    from medsim.simulate import Bound

    pop = sample_neural_population(_calibrated(trained.model, 0.9), 8, seed=0, subjects=cohort.subjects)
    model = pop.model
    assert np.all(
        np.isfinite(
            np.asarray(
                model.observe({k: jnp.asarray(v) for k, v in pop.initial_state().items()}, pop.simulation_parameters())[
                    "conc"
                ]
            )
        )
    )
    result = rollout(
        model,
        pop,
        parse_policy("fixed:dose=320,every=6"),
        bounds=(Bound("conc", 8.0, "upper"),),
        horizon=12.0,
        dt=0.25,
        seed=0,
        scheme="euler",
        n_paths_saved=0,
    )
    assert result.n_patients == 8
    assert np.all(np.isfinite(result.log_survival[result.mask]))
    # the fixed policy doses 320 mg at 0 and 6 h: the neural patients saw both doses
    np.testing.assert_allclose(result.efficacy["total_dose_cmt1"], 640.0)


def test_neural_patients_do_not_depend_on_n_and_follow_the_conditional_prior(trained, cohort):
    from medsim.models.neural.population import _empty_history

    model = _calibrated(trained.model, 0.9)
    kwargs = {"seed": 3, "subjects": cohort.subjects, "n_draws": 5, "patients_per_draw": 2}
    small = sample_neural_population(model, 4, **kwargs)
    large = sample_neural_population(model, 10, **kwargs)
    # The random draws are the same; the network runs on batches of 4 and 10 patients, for which
    # a CPU may pick different float32 matrix kernels (summation order), so the values agree to
    # float32 rounding (eps 1.2e-7, a few operations deep), not bit for bit.
    for name, values in small.params.items():
        np.testing.assert_allclose(values, large.params[name][:4], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(small.covariates["WT"], large.covariates["WT"][:4])
    # With the covariates fixed every new patient's (z, e) has one Normal(mean, sd): 4-SE bands
    # (SE of the mean sd / sqrt(n), of the sample SD ~ sd / sqrt(2 n)).
    n, wt = 2000, 55.0
    pop = sample_neural_population(model, n, seed=4, covariates={"WT": wt}, n_draws=5)
    (c,) = model.config.covariates
    with torch.no_grad():
        hidden = model.encode(_empty_history(model, np.full((1, 1), (wt - c.mean) / c.sd)))
        mean, sd = (t.cpu().numpy()[0] for t in model.initial_prior(hidden[:, 0]))
    x = pop.params["initial_latent_00"]
    assert abs(x.mean() - mean[0]) < 4 * sd[0] / np.sqrt(n)
    assert abs(x.std(ddof=1) - sd[0]) < 4 * sd[0] / np.sqrt(2 * n)
