"""``medsim fit`` on an event-table file, and the command's usage errors."""

from __future__ import annotations

import json

import pytest
from inference_synthetic import oral_cohort
from typer.testing import CliRunner

import medsim.cli.fit_cmds  # noqa: F401  (registers `fit` and `check` on the app)
from medsim.cli import app
from medsim.data import Cohort, write_event_table
from medsim.inference import Posterior


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    padded = oral_cohort(3).padded()
    cohort = Cohort.from_arrays(
        padded.ids,
        padded.obs_time,
        padded.obs_value,
        2,
        dose_time=padded.dose_time,
        dose_amount=padded.dose_amount,
        dose_cmt=1,
        units={"TIME": "h", "DV": "mg/L", "AMT": "mg"},
        name="three subjects",
    )
    return write_event_table(cohort, tmp_path_factory.mktemp("cohort") / "cohort.csv")


def test_fit_an_event_table_with_svi_and_check_it(table, tmp_path):
    out = tmp_path / "post.nc"
    # 3000 steps: at 300 the guide's spread has not converged and the spread test fails the fit
    args = ["fit", str(table), "--model", "pk_oral_1cmt", "--method", "svi", "--svi-steps", "3000"]
    result = CliRunner().invoke(app, [*args, "--draws", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "not applicable" in result.output and out.exists()
    posterior = Posterior.load(out)
    assert posterior.attrs["method"] == "svi" and posterior.attrs["svi_steps"] == 3000
    d = posterior.diagnostics()
    assert not d.applicable and d.ok and d.elbo == pytest.approx(posterior.attrs["elbo"])
    assert "sample_stats" not in posterior.idata.groups()
    assert posterior.draws().n_draws == 100
    checked = CliRunner().invoke(app, ["check", str(out), "--json"])
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.output)
    assert report["method"] == "svi" and report["diagnostics"]["applicable"] is False
    cl = report["parameters"]["CL"]
    assert cl["hdi_low"] <= cl["median"] <= cl["hdi_high"] and cl["r_hat"] is None and cl["unit"] == "L/h"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "no_such_dataset", "--model", "pk_oral_1cmt"], "neither an existing event-table file nor"),
        (["fit", "theoph", "--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["fit", "theoph", "--model", "pk_iv_1cmt"], "needs covariate 'WGT'"),
        (["fit", "theoph", "--model", "pk_oral_1cmt", "--backend", "stan"], "unknown backend 'stan'"),
        (["fit", "theoph", "--model", "pk_oral_1cmt", "--fix", "ka=-1"], "--fix ka: expected a finite value > 0"),
        (["fit", "theoph", "--model", "pk_oral_1cmt", "--fix", "Q"], "cannot fix 'Q' (not a structural parameter"),
        (["fit", "no_such_file.csv", "--model", "pk_oral_1cmt", "--fix", "Q"], "cannot fix 'Q'"),  # before reading
        (["fit", "theoph", "--model", "neural", "--fix", "ka"], "the neural model has none to hold"),
    ],
)
def test_usage_errors_exit_2_with_a_message(args, message, tmp_path):
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x.nc"), "--chain-method", "vectorized"])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "x.nc").exists()


def test_check_rejects_a_file_that_is_not_a_posterior(tmp_path):
    bogus = tmp_path / "bogus.nc"
    bogus.write_bytes(b"\x89HDF\r\n")
    result = CliRunner().invoke(app, ["check", str(bogus)])
    assert result.exit_code == 2 and "not a netCDF InferenceData file" in result.output


def test_fit_passes_the_filter_step_and_svi_options(monkeypatch, tmp_path):
    from medsim import inference

    seen = {}

    def fake_fit(cohort, model, **options):
        seen.update(options)
        raise inference.FitConfigError("stopped after reading the options")

    monkeypatch.setattr(inference, "fit", fake_fit)
    args = ["fit", "theoph", "--model", "pk_oral_1cmt", "--method", "svi", "--out", str(tmp_path / "x.nc")]
    options = ["--max-substep", "10", "--substeps", "2", "--guide", "lowrank", "--svi-particles", "4"]
    options += ["--fix", "ka", "--fix", "V=30", "--svi-start", "prior,ode", "--svi-coarse-steps", "300"]
    result = CliRunner().invoke(app, [*args, *options, "--svi-learning-rate", "0.02", "--chain-method", "vectorized"])
    assert result.exit_code == 2 and "stopped after reading the options" in result.output
    assert seen["fix"] == {"ka": None, "V": 30.0}
    assert seen["max_substep"] == 10.0 and seen["substeps"] == 2 and seen["guide"] == "lowrank"
    assert seen["svi_particles"] == 4 and seen["svi_learning_rate"] == 0.02 and seen["method"] == "svi"
    assert seen["svi_start"] == "prior,ode"
    assert seen["svi_coarse_steps"] == 300 and seen["svi_coarse_substeps"] is None


def test_a_diverged_svi_fit_is_a_clear_error_and_writes_nothing(monkeypatch, tmp_path):
    from medsim import inference

    def diverging_fit(cohort, model, **options):
        raise inference.SviDivergedError("SVI diverged: after 10 steps at learning rate 100 the guide is not valid")

    monkeypatch.setattr(inference, "fit", diverging_fit)
    out = tmp_path / "x.nc"
    args = ["fit", "theoph", "--model", "pk_oral_1cmt", "--method", "svi", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--svi-learning-rate", "100"])
    assert result.exit_code == 2 and "SVI diverged" in result.output and not out.exists()


def test_a_fit_with_a_fixed_parameter_keeps_it_fixed_downstream(table, tmp_path):
    from medsim.cli.check_cmds import refit_settings
    from medsim.population import sample_population

    out = tmp_path / "post.nc"
    args = ["fit", str(table), "--model", "pk_oral_1cmt", "--method", "svi", "--svi-steps", "1000", "--fix", "ka=1.5"]
    args += ["--max-substep", "0.5"]
    result = CliRunner().invoke(app, [*args, "--draws", "50", "--out", str(out)])
    assert result.exit_code in (0, 1), result.output  # 1: the short fit's own checks may flag it
    assert "held fixed (not estimated): ka = 1.5" in result.output
    posterior = Posterior.load(out)
    assert posterior.priors.fixed == {"ka": 1.5} and posterior.priors.random_effects == ("CL", "V")
    assert "ka" not in posterior.idata.posterior and "omega_ka" not in posterior.idata.posterior
    draws = posterior.draws()
    assert set(draws.omega) == {"CL", "V"} and (draws.population["ka"] == 1.5).all()
    # the held-out gate refits the training part with the same parameter held and the same filter step
    assert refit_settings(posterior)["fix"] == {"ka": 1.5} and refit_settings(posterior)["max_substep"] == 0.5
    checked = CliRunner().invoke(app, ["check", str(out), "--json"])
    assert json.loads(checked.output)["held_fixed"] == {"ka": 1.5}
    # new patients and twins take the fixed value, without between-subject variability
    new = sample_population(draws, 20, seed=0)
    assert (new.params["ka"] == 1.5).all() and new.params["CL"].std() > 0
    twin = sample_population(draws, 5, seed=0, mode="personalized", subject=draws.subject_ids[0])
    assert (twin.params["ka"] == 1.5).all()


def test_an_optional_covariate_the_cohort_lacks_is_fitted_at_its_reference_and_said(table, tmp_path, monkeypatch):
    """A model whose optional covariate (here a weight on pk_oral_1cmt) the table lacks: the fit
    goes ahead at the reference value and says so in its output and in the posterior file."""
    from dataclasses import replace

    import medsim.models as models
    from medsim.models.base import Covariate

    weighted = replace(
        models.get("pk_oral_1cmt"),
        name="pk_oral_wt",
        covariates=(Covariate("WT", "kg", 70.0, "weight", optional=True),),
    )
    monkeypatch.setitem(models._REGISTRY, "pk_oral_wt", lambda: weighted)
    out = tmp_path / "post.nc"
    args = ["fit", str(table), "--model", "pk_oral_wt", "--method", "svi", "--svi-steps", "300", "--draws", "20"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code in (0, 1), result.output  # 1: the short fit's own checks may flag it
    assert "covariates not in the cohort, every subject at the model's reference: WT = 70" in result.output
    posterior = Posterior.load(out)
    assert json.loads(posterior.attrs["assumed_covariates"]) == {"WT": 70.0}
    assert posterior.draws().covariates["WT"].tolist() == [70.0, 70.0, 70.0]
    checked = CliRunner().invoke(app, ["check", str(out), "--json"])
    assert json.loads(checked.output)["assumed_covariates"] == {"WT": 70.0}
