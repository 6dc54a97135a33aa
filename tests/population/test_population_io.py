"""Virtual populations on disk and the ``medsim sample`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

import medsim.models as registry
from medsim.cli import sample_cmds  # noqa: F401  (registers `medsim sample` on the app)
from medsim.cli.app import app
from medsim.population import (
    PopulationFormatError,
    PosteriorDraws,
    VirtualPopulation,
    load_population,
    sample_population,
)


@pytest.fixture(scope="module")
def population() -> VirtualPopulation:
    draws = PosteriorDraws.from_prior(registry.get("glucose_insulin"), 20, seed=1)
    return sample_population(draws, 12, seed=2, covariates={"BASAL": np.linspace(0.6, 1.8, 12)})


def test_round_trip_keeps_every_number(tmp_path, population):
    path = population.save(tmp_path / "vp.nc")
    back = VirtualPopulation.load(path)
    assert back.model == population.model
    np.testing.assert_array_equal(back.draw, population.draw)
    np.testing.assert_array_equal(back.subject, population.subject)
    for group in ("params", "covariates", "eta", "residual"):
        mine, theirs = getattr(population, group), getattr(back, group)
        assert set(mine) == set(theirs)
        for name in mine:
            np.testing.assert_array_equal(theirs[name], mine[name])
    assert (back.mode, back.seed, back.patients_per_draw) == ("population", 2, population.patients_per_draw)
    assert back.provenance["posterior"] == {"source": "prior", "seed": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["vp.nc"]  # no temporary file left behind


def test_initial_state_is_the_basal_steady_state(population):
    x0 = population.initial_state()
    theta = population.params
    # glucose_insulin steady state: glucose = EGP / (GEZI + S_I * 1e6 * basal / C_I), basal in U/min.
    basal = population.covariates["BASAL"] / 60.0
    expected = theta["EGP"] / (theta["GEZI"] + theta["S_I"] * 1e6 * basal / theta["C_I"])
    np.testing.assert_allclose(x0["glucose"], expected, rtol=1e-5)  # float32 model evaluation


def test_loading_rejects_other_files(tmp_path, population):
    with pytest.raises(FileNotFoundError, match=r"missing\.nc"):
        load_population(tmp_path / "missing.nc")
    other = tmp_path / "other.nc"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(other, engine="h5netcdf")
    with pytest.raises(PopulationFormatError, match="not a medsim virtual population"):
        load_population(other)
    text = tmp_path / "text.nc"
    text.write_text("not netcdf")
    with pytest.raises(PopulationFormatError, match="not a readable netCDF"):
        load_population(text)
    path = population.save(tmp_path / "vp.nc")
    with pytest.raises(PopulationFormatError, match="not 'pk_iv_1cmt'"):
        load_population(path, model=registry.get("pk_iv_1cmt"))
    ds = xr.load_dataset(path, engine="h5netcdf").drop_vars("param__S_I")
    broken = tmp_path / "broken.nc"
    ds.to_netcdf(broken, engine="h5netcdf")
    with pytest.raises(PopulationFormatError, match="param__S_I"):
        load_population(broken)


def test_sample_command_from_prior(tmp_path):
    out = tmp_path / "vp.nc"
    runner = CliRunner()
    args = ["sample", "--prior", "pk_iv_1cmt", "--n", "8", "--seed", "3", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    pop = load_population(out)
    assert pop.n_patients == 8 and pop.model.name == "pk_iv_1cmt" and pop.seed == 3
    assert json.loads(json.dumps(pop.provenance))["source_file"] == "prior:pk_iv_1cmt"
    again = tmp_path / "again.nc"
    assert runner.invoke(app, [*args[:-1], str(again)]).exit_code == 0
    np.testing.assert_array_equal(load_population(again).params["CL"], pop.params["CL"])


def test_sample_command_errors(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "vp.nc")
    result = runner.invoke(app, ["sample", "--n", "4", "--out", out])
    assert result.exit_code == 2 and "either a POSTERIOR file or --prior" in result.output
    result = runner.invoke(app, ["sample", "--prior", "nope", "--n", "4", "--out", out])
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output
    result = runner.invoke(
        app, ["sample", "--prior", "pk_iv_1cmt", "--n", "4", "--mode", "personalized", "--subject", "1", "--out", out]
    )
    assert result.exit_code == 2 and "no fitted subjects" in result.output
