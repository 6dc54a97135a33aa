"""Goodness of fit (PRED, CWRES), prediction-corrected VPC, shrinkage and the fit report of ``medsim check``.

The fast tests use hand-built :class:`PosteriorDraws` with known values (no sampler), so the
expected numbers are known in closed form; the slow one builds a posterior file of three
synthetic subjects from set draws, drives ``medsim check --report/--figures`` end to end and
renders the HTML in headless Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
from test_checks_predictive import DOSE, oral_conc, point_mass

from medsim.data import Cohort
from medsim.inference.checks import goodness_of_fit, posterior_predictive, vpc
from medsim.inference.checks.fit_report_render import NOT_ESTIMABLE, number, percent
from medsim.inference.checks.gof import population_prediction
from medsim.inference.checks.shrinkage import eta_shrinkage
from medsim.inference.checks.vpc import doses_vary

TIMES = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0])  # h
DT = 0.01  # h; Euler's relative error ~ ka * DT / 2 < 1 % (first order), see test_pcvpc_*
OMEGA = {"ka": 0.3, "CL": 0.27, "V": 0.14}


def dosed(values: np.ndarray, doses: np.ndarray) -> Cohort:
    n = values.shape[0]
    return Cohort.from_arrays(
        [f"S{i + 1}" for i in range(n)],
        np.tile(TIMES, (n, 1)),
        values,
        2,
        dose_time=np.zeros((n, 1)),
        dose_amount=np.asarray(doses, float)[:, None],
        dose_cmt=1,
    )


def test_cwres_are_standard_normal_when_the_model_made_the_data():
    """Data simulated by the same simulator and dt from subjects with eta ~ N(0, omega) and additive
    error 0.5 mg/L: CWRES (linearised at the true eta) are close to iid N(0, 1). Tolerances: 4
    standard errors of the mean (1 / sqrt(M)) and of the SD (1 / sqrt(2 M)) over M = 140 points.
    With the residual SD halved in the draws the same data give CWRES with SD near 2: the check fails."""
    rng = np.random.default_rng(7)
    n = 20
    eta = {p: rng.normal(0.0, w, n) for p, w in OMEGA.items()}
    truth = point_mass(eta, n_draws=1, omega=OMEGA, add=0.5)
    template = dosed(np.ones((n, TIMES.size)), np.full(n, DOSE))
    simulated = posterior_predictive(truth, template, key=jax.random.key(3), n_draws=None, dt=DT)
    data = simulated.replicate[0]
    cohort = dosed(data, np.full(n, DOSE))
    gof = goodness_of_fit(point_mass(eta, n_draws=4, omega=OMEGA, add=0.5), cohort, key=jax.random.key(1), dt=DT)
    m = gof.cwres.size
    assert m == n * TIMES.size and np.isfinite(gof.cwres).all()
    assert abs(gof.cwres.mean()) < 4 / np.sqrt(m)
    assert abs(gof.cwres.std(ddof=1) - 1.0) < 4 / np.sqrt(2 * m)
    assert np.allclose(
        gof.ipred, simulated.prediction[0].ravel(), rtol=1e-5
    )  # IPRED at the true eta, in measurement order
    wrong = goodness_of_fit(point_mass(eta, n_draws=4, omega=OMEGA, add=0.25), cohort, key=jax.random.key(1), dt=DT)
    assert wrong.cwres.std(ddof=1) > 1.5


def test_pcvpc_removes_the_dose_from_linear_pk():
    """Typical subjects at 160 and 320 mg: concentrations are proportional to the dose (linear PK),
    so after prediction correction every value of a time bin is the bin's median PRED and the
    observed percentiles coincide (float32 precision). The t = 0 samples (PRED 0) are left out.
    PRED itself is checked against the closed form (Gabrielsson & Weiner eq. 2:5) at the typical
    values; tolerance: Euler's first-order error ka * DT / 2 = 0.8 % of the value."""
    doses = np.array([160.0, 320.0, 160.0, 320.0])
    values = np.stack([oral_conc(TIMES, 1.6, 2.75, 31.9) * d / DOSE for d in doses])
    cohort = dosed(values, doses)
    assert doses_vary(cohort) and not doses_vary(dosed(values, np.full(4, DOSE)))
    draws = point_mass({p: np.full(4, 0.3) for p in OMEGA}, n_draws=20, omega=OMEGA, add=0.5, sigma=0.1)
    pred = population_prediction(draws, cohort, dt=DT)  # random effects 0 and no process noise, whatever the draws
    assert np.allclose(pred, values, rtol=0.01, atol=1e-4)
    draws = point_mass({p: np.zeros(4) for p in OMEGA}, n_draws=20, omega=OMEGA, add=0.5)
    edges = np.concatenate([[0.25], (TIMES[1:-1] + TIMES[2:]) / 2, [12.0]])
    check = vpc(draws, cohort, key=jax.random.key(2), n_replicates=20, bins=edges, dt=DT)
    assert check.prediction_corrected and check.n_excluded == 4
    spread = np.nanmax(check.observed, axis=0) - np.nanmin(check.observed, axis=0)
    assert (spread < 1e-4 * np.nanmax(check.observed)).all()
    plain = vpc(draws, cohort, key=jax.random.key(2), n_replicates=20, bins=edges, dt=DT, prediction_corrected=False)
    assert not plain.prediction_corrected and plain.n_excluded == 0
    assert (np.nanmax(plain.observed, axis=0) - np.nanmin(plain.observed, axis=0) > 0.5).any()  # the dose spread


def test_shrinkage_and_unestimable_values():
    """eta-shrinkage 1 - SD(eta_hat) / omega in closed form for point-mass draws; with two subjects
    it is not estimable, and the report prints that instead of a number."""
    eta = {"ka": np.array([0.3, -0.3, 0.0]), "CL": np.array([0.1, -0.1, 0.0]), "V": np.zeros(3)}
    omega = {"ka": 0.6, "CL": 0.2, "V": 0.14}
    shrink = eta_shrinkage(point_mass(eta, n_draws=5, omega=omega))
    assert shrink["ka"] == pytest.approx(1 - 0.3 / 0.6) and shrink["CL"] == pytest.approx(1 - 0.1 / 0.2)
    assert shrink["V"] == pytest.approx(1.0)
    two = eta_shrinkage(point_mass({p: v[:2] for p, v in eta.items()}, n_draws=5, omega=omega))
    assert set(two.values()) == {None}
    assert number(None, "mg/L") == NOT_ESTIMABLE and percent(float("nan")) == NOT_ESTIMABLE
    assert number(2.5, "mg/L") == "2.5 mg/L" and percent(0.125) == "12.5 %"


# ---------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Three synthetic subjects (one at half the dose) as an event table, and a NUTS-format posterior
    of them whose draws are set, not sampled: independent draws around the truth (so R-hat, ESS
    and E-BFMI are computed as for a sampler's), with the pointwise log-likelihood of the real
    filter. Seconds, where a fit would take half a minute of CPU."""
    from inference_synthetic import oral_cohort

    from medsim.data import write_event_table
    from medsim.inference import Posterior
    from medsim.inference.assemble import build_inference_data
    from medsim.inference.fitting import prepare_fit, provenance_attrs
    from medsim.models import get

    folder = tmp_path_factory.mktemp("fitreport")
    padded = oral_cohort(3).padded()
    cohort = Cohort.from_arrays(
        padded.ids,
        padded.obs_time,
        padded.obs_value,
        2,
        dose_time=padded.dose_time,
        dose_amount=padded.dose_amount * np.array([[1.0], [0.5], [1.0]]),
        dose_cmt=1,
        units={"TIME": "h", "DV": "mg/L", "AMT": "mg"},
        name="three subjects",
    )
    table = write_event_table(cohort, folder / "cohort.csv")
    model = get("pk_oral_1cmt")
    data, _ = prepare_fit(cohort, model, centered="none", metric=False)
    rng = np.random.default_rng(0)
    chains, draws = 2, 100
    centre = {"omega": lambda s: model.parameter(s.target).bsv, "residual_add": lambda s: 0.5}
    samples = {}
    for s in data.priors.sites:
        typical = centre.get(s.role, lambda s: model.parameter(s.site).typical)(s)
        samples[s.site] = typical * np.exp(0.05 * rng.standard_normal((chains, draws)))
    for p in data.priors.random_effects:
        z = rng.standard_normal((chains, draws, 3))
        samples[f"eta_{p}_decentered"] = z
        samples[f"eta_{p}"] = samples[f"omega_{p}"][..., None] * z
    stats = {"diverging": np.zeros((chains, draws), bool), "energy": 10 + 3 * rng.standard_normal((chains, draws))}
    attrs = provenance_attrs(data, backend="numpyro", method="nuts", seed=0, info={})
    attrs.update(chains=chains, draws=draws, warmup=0, wall_time_s=0.0)
    posterior = Posterior(idata=build_inference_data(data, samples, stats, attrs), model=model)
    return {"table": table, "posterior": posterior.save(folder / "fit.nc"), "folder": folder}


@pytest.mark.slow
def test_check_writes_the_fit_report_and_its_figures(fitted, tmp_path):
    from typer.testing import CliRunner

    import medsim.cli.fit_cmds  # noqa: F401  (registers `check`)
    from medsim.cli import app

    runner = CliRunner()
    report, figures = tmp_path / "report", tmp_path / "figs"
    args = ["check", str(fitted["posterior"]), "--cohort", str(fitted["table"]), "--predictive-draws", "10"]
    result = runner.invoke(app, [*args, "--report", str(report), "--figures", str(figures)])
    assert result.exit_code in (0, 1), result.output  # 1: 200 draws may miss the ESS threshold of 200
    assert "fit report:" in result.output
    assert sorted(p.name for p in report.iterdir()) == [
        "fit_figures",
        "fit_report.html",
        "fit_report.json",
        "fit_report.md",
    ]
    pngs = ["energy.png", "goodness_of_fit.png", "individual_fits.png", "rank.png", "trace.png", "vpc.png"]
    assert sorted(p.name for p in figures.iterdir()) == pngs
    record = json.loads((report / "fit_report.json").read_text())
    assert record["vpc"]["prediction_corrected"]  # one subject got half the dose
    assert all(row["unit"] for row in record["parameters"].values())
    markdown = (report / "fit_report.md").read_text()
    for heading in ("Parameters", "Visual predictive check", "Individual fits", "Goodness of fit", "Held-out check"):
        assert f"## {heading}" in markdown
    assert re.search(r"\| largest R-hat \| 1\.0\d\d \| <= 1\.01 \|", markdown)
    assert re.search(r"\| smallest bulk ESS \| \d+ draws \|", markdown)
    assert "| divergent transitions | 0 of 200 draws | 0 |" in markdown
    html = (report / "fit_report.html").read_text()
    assert html.count("data:image/png;base64,") == 5  # the trace plot only under --figures (rank plots here)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", markdown + html)
    assert not re.search(r"\b(nan|NaN|None|inf)\b", text)  # unestimable values are said in words

    # A variational fit has no R-hat or ESS: the report says so instead of printing numbers (the
    # simulations are compiled already, in this process).
    from dataclasses import replace

    from medsim.data import read_event_table
    from medsim.inference import Posterior
    from medsim.inference.checks.fit_report import build_fit_report
    from medsim.inference.checks.fit_report_render import render_markdown
    from medsim.inference.diagnostics import Diagnostics

    built = build_fit_report(Posterior.load(fitted["posterior"]), read_event_table(fitted["table"]), n_draws=10)
    svi = Diagnostics(method="svi", applicable=False, chains=1, draws=200, elbo=-120.5, checks=("ELBO flat",))
    text = render_markdown(replace(built, diagnostics=svi), {})
    assert "| not applicable (SVI) | not applicable (SVI) | not applicable (SVI) |" in text
    assert "Checked: ELBO flat" in text and not re.search(r"\b(nan|None)\b", text)
    # A parameter held fixed in the fit (--fix) is listed as such, with no interval or diagnostics.
    held = dict(built.parameters)
    held["ka"] = {**held["ka"], "kind": "fixed", "median": 1.5, "r_hat": None, "ess_bulk": None, "ess_tail": None}
    text = render_markdown(replace(built, parameters=held), {})
    assert re.search(r"\| ka \| [^|]+ \| 1/h \| 1\.5 \| held fixed \(--fix\) \| - \| - \| - \| - \|", text)
    # An optional covariate the cohort lacked is stated with the value every subject was fitted at.
    assert "Covariates not in the cohort" not in text
    assumed = {**built.provenance, "assumed_covariates": {"WT": 70.0}}
    text = render_markdown(replace(built, provenance=assumed), {})
    assert "Covariates not in the cohort, every subject at the model's reference: WT = 70." in text

    # Refused before any work: a file as --report, a cohort the posterior was not fitted to.
    (tmp_path / "file").write_text("x")
    assert runner.invoke(app, [*args, "--report", str(tmp_path / "file")]).exit_code == 2
    other = runner.invoke(app, ["check", str(fitted["posterior"]), "--cohort", "theoph", "--report", str(report)])
    assert other.exit_code == 2 and "data hash" in other.output
    # --figures without a known cohort: the sampler plots only, and the output says what is missing.
    alone = runner.invoke(app, ["check", str(fitted["posterior"]), "--figures", str(tmp_path / "only")])
    assert sorted(p.name for p in (tmp_path / "only").iterdir()) == ["energy.png", "rank.png", "trace.png"]
    assert "give --cohort" in " ".join(alone.output.split())  # the console may wrap the line

    root = Path(__file__).resolve().parents[2]
    tools = [folder / "shared" / "tools" / "screenshot-html" for folder in (root.parent, root.parent.parent)]
    tool = next((t for t in tools if t.exists()), None)
    if tool is None or shutil.which("chromium") is None:
        pytest.skip(f"rendering not checked: no screenshot-html in {[str(t.parent) for t in tools]} or no chromium")
    shot = tmp_path / "report.png"
    subprocess.run([str(tool), str(report / "fit_report.html"), str(shot), "1200x2400"], check=True, timeout=120)
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1200) and pixels.std() > 0.05  # drawn, not a blank page
