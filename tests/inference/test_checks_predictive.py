"""Posterior predictive simulation, individual fits, VPC and the figure writer.

Posteriors here are hand-built :class:`PosteriorDraws` with known values, so every expected
number is known in closed form (no sampler in the loop).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import pytest
from matplotlib.figure import Figure

from medsim.data import Cohort
from medsim.inference.checks import (
    PredictiveError,
    individual_fits,
    plot_individual_fits,
    plot_vpc,
    posterior_predictive,
    save_figure,
    vpc,
    write_check_figures,
)
from medsim.inference.checks.vpc import time_bins
from medsim.models import get
from medsim.population.draws import PosteriorDraws

MODEL = get("pk_oral_1cmt")
TIMES = np.array([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0])  # h
DOSE = 320.0  # mg
DT = 0.002  # h; Euler's global error ~ (ka * DT / 2) ~ 0.2 % of the prediction (first order)


def oral_conc(t, ka, cl, v):
    """One-compartment oral concentration (mg/L), Gabrielsson & Weiner (2016) eq. 2:5."""
    k = cl / v
    return DOSE * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))


def cohort(values: np.ndarray, ids=None) -> Cohort:
    n = values.shape[0]
    return Cohort.from_arrays(
        ids or [f"S{i + 1}" for i in range(n)],
        np.tile(TIMES, (n, 1)),
        values,
        2,
        dose_time=np.zeros((n, 1)),
        dose_amount=np.full((n, 1), DOSE),
        dose_cmt=1,
    )


def point_mass(eta: dict[str, np.ndarray], *, n_draws: int = 50, omega=None, add=0.5, sigma=0.0) -> PosteriorDraws:
    """``n_draws`` identical draws at the model's typical values and the given random effects."""
    n_subjects = len(next(iter(eta.values())))
    population = {p.name: np.full(n_draws, p.typical) for p in MODEL.parameters}
    population["sigma_central"] = np.full(n_draws, sigma)
    omega = omega or {p.name: p.bsv for p in MODEL.structural}
    return PosteriorDraws(
        model=MODEL,
        population=population,
        omega={k: np.full(n_draws, v) for k, v in omega.items()},
        eta={k: np.tile(np.asarray(v, float), (n_draws, 1)) for k, v in eta.items()},
        residual={"conc_add": np.full(n_draws, add)},
        subject_ids=tuple(f"S{i + 1}" for i in range(n_subjects)),
    )


ETA = {"ka": np.array([0.3, -0.4, 0.0]), "CL": np.array([-0.2, 0.1, 0.25]), "V": np.array([0.1, 0.0, -0.15])}


def true_conc(t):
    ka = 1.6 * np.exp(ETA["ka"])[:, None]
    cl = 2.75 * np.exp(ETA["CL"])[:, None]
    v = 31.9 * np.exp(ETA["V"])[:, None]
    return oral_conc(np.asarray(t)[None, :] if np.ndim(t) == 1 else t, ka, cl, v)


def test_individual_predictions_match_the_closed_form_and_residuals_have_the_fitted_sd():
    draws = point_mass(ETA, n_draws=100, add=0.5)
    data = cohort(true_conc(TIMES))
    sample = posterior_predictive(draws, data, key=jax.random.key(0), n_draws=None, dt=DT)
    assert sample.prediction.shape == (100, 3, TIMES.size)
    # Euler with DT: relative error ~ ka * DT / 2 ~ 2e-3; allow 5e-3.
    np.testing.assert_allclose(sample.prediction, np.broadcast_to(true_conc(TIMES), sample.prediction.shape), rtol=5e-3)
    residuals = (sample.replicate - sample.prediction).ravel()
    n = residuals.size
    # The sample SD of n normal residuals has standard error sd / sqrt(2 n); allow 4 of them.
    assert abs(residuals.std() - 0.5) < 4 * 0.5 / np.sqrt(2 * n)
    assert abs(residuals.mean()) < 4 * 0.5 / np.sqrt(n)
    again = posterior_predictive(draws, data, key=jax.random.key(0), n_draws=None, dt=DT)
    np.testing.assert_array_equal(sample.replicate, again.replicate)  # same key, same numbers


def test_population_mode_draws_new_random_effects_with_the_fitted_omega():
    """Shortly after an oral dose conc ~ dose * ka * t / V, so sd(log conc) -> omega_V when only V varies."""
    omega_v = 0.3
    draws = point_mass({k: np.zeros(40) for k in ETA}, n_draws=100, omega={"ka": 0.0, "CL": 0.0, "V": omega_v})
    early = np.tile([0.01], (40, 1))
    data = Cohort.from_arrays(
        [f"S{i + 1}" for i in range(40)],
        early,
        np.zeros_like(early),
        2,
        dose_time=np.zeros((40, 1)),
        dose_amount=np.full((40, 1), DOSE),
        dose_cmt=1,
    )
    sample = posterior_predictive(draws, data, key=jax.random.key(3), n_draws=None, mode="population", dt=0.001)
    log_conc = np.log(sample.prediction.ravel())
    n = log_conc.size
    # SE of a normal sample SD is omega / sqrt(2 n); the V-dependence of the O(t^2) term adds < 1e-3.
    assert abs(log_conc.std() - omega_v) < 4 * omega_v / np.sqrt(2 * n) + 1e-3
    individual = posterior_predictive(draws, data, key=jax.random.key(3), n_draws=None, mode="individual", dt=0.001)
    assert np.ptp(np.log(individual.prediction)) < 1e-5  # eta = 0: every fitted subject is typical


def test_predictive_errors_name_what_is_wrong():
    draws = point_mass(ETA)
    with pytest.raises(PredictiveError, match="fitted subjects"):
        posterior_predictive(draws, cohort(true_conc(TIMES), ids=["a", "b", "c"]), key=jax.random.key(0))
    with pytest.raises(PredictiveError, match="mode"):
        posterior_predictive(draws, cohort(true_conc(TIMES)), key=jax.random.key(0), mode="typical")
    with pytest.raises(PredictiveError, match="times"):
        posterior_predictive(draws, cohort(true_conc(TIMES)), key=jax.random.key(0), times=np.zeros((2, 3)))
    iv = get("pk_iv_1cmt")
    iv_draws = PosteriorDraws(
        model=iv,
        population={p.name: np.full(3, p.typical) for p in iv.parameters},
        omega={},
        residual={"conc_prop": np.full(3, 0.1)},
    )
    no_weight = Cohort.from_arrays(["1"], [[1.0]], [[1.0]], 1, dose_time=[[0.0]], dose_amount=[[10.0]])
    with pytest.raises(PredictiveError, match="WGT"):
        posterior_predictive(iv_draws, no_weight, key=jax.random.key(0), mode="population")


def test_individual_fits_bands_and_figure():
    draws = point_mass(ETA, n_draws=20, add=0.5)
    fits = individual_fits(draws, cohort(true_conc(TIMES)), key=jax.random.key(1), n_grid=25, dt=DT)
    assert fits.grid.shape == fits.median.shape == (3, 25)
    # A point-mass posterior without process noise has no prediction uncertainty.
    np.testing.assert_allclose(fits.lower, fits.upper, rtol=1e-6)
    np.testing.assert_allclose(fits.median, true_conc(fits.grid), rtol=5e-3, atol=1e-6)
    fig = plot_individual_fits(fits, columns=2)
    assert isinstance(fig, Figure)
    assert sum(ax.get_visible() for ax in fig.axes) == 3
    noisy = individual_fits(
        point_mass(ETA, n_draws=100, sigma=0.3), cohort(true_conc(TIMES)), key=jax.random.key(1), n_grid=25, dt=0.01
    )
    assert np.all(noisy.upper[:, 1:] > noisy.lower[:, 1:])  # process noise widens the band after the dose


def test_time_bins_keep_sampling_clusters_together():
    rng = np.random.default_rng(0)
    nominal = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0])
    times = np.repeat(nominal, 12) + rng.uniform(0.0, 0.02, nominal.size * 12)
    edges = time_bins(times, nominal.size)
    counts = np.histogram(times, edges)[0]
    assert counts.tolist() == [12] * nominal.size  # one bin per nominal time
    for n_bins in (3, 5):  # fewer bins than clusters: whole clusters are merged, never split
        coarse = time_bins(times, n_bins)
        assert len(coarse) == n_bins + 1 and np.all(np.diff(coarse) > 0)
        assert all(c % 12 == 0 for c in np.histogram(times, coarse)[0])


def _simulated_cohort(n_subjects: int, seed: int) -> Cohort:
    """Subjects from the model's typical values and BSV, additive residual SD 0.5 mg/L."""
    rng = np.random.default_rng(seed)
    eta = {p.name: p.bsv * rng.standard_normal(n_subjects) for p in MODEL.structural}
    ka = 1.6 * np.exp(eta["ka"])[:, None]
    cl = 2.75 * np.exp(eta["CL"])[:, None]
    v = 31.9 * np.exp(eta["V"])[:, None]
    values = oral_conc(TIMES[None, :], ka, cl, v) + 0.5 * rng.standard_normal((n_subjects, TIMES.size))
    return cohort(values)


def test_vpc_accepts_the_true_model_and_flags_too_little_variability():
    """With the generating parameters each observed percentile is one more draw from the distribution
    its band summarises, so about 10 % of the 21 percentiles fall outside a 90 % band (deterministic
    here: fixed seeds); 6 or more would have binomial probability < 1 %. With omega 50 times too
    small the P10 and P90 bands are far too narrow and most observed P10/P90 fall outside."""
    data = _simulated_cohort(60, seed=5)
    zeros = {k: np.zeros(60) for k in ETA}
    good = vpc(point_mass(zeros, n_draws=200), data, key=jax.random.key(2), bins=7, dt=0.01)
    assert good.observed.shape == good.simulated_lower.shape == (3, 7)
    assert good.n_per_bin.sum() == 60 * TIMES.size
    assert good.outside.sum() <= 5
    tiny = {p.name: p.bsv / 50 for p in MODEL.structural}
    bad = vpc(point_mass(zeros, n_draws=200, omega=tiny), data, key=jax.random.key(2), bins=7, dt=0.01)
    assert bad.outside[[0, 2]].mean() >= 0.5
    fig = plot_vpc(good)
    assert isinstance(fig, Figure)


def test_write_check_figures_is_atomic(tmp_path):
    draws = point_mass(ETA, n_draws=20)
    paths = write_check_figures(draws, cohort(true_conc(TIMES)), tmp_path / "figs", n_draws=20)
    assert set(paths) == {"individual_fits", "vpc", "goodness_of_fit"}
    for path in paths.values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = ["goodness_of_fit.png", "individual_fits.png", "vpc.png"]
    assert sorted(os.listdir(tmp_path / "figs")) == written  # no temporary files

    class Broken(Figure):
        def savefig(self, out, **kwargs):
            out.write(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(Broken(), tmp_path / "figs" / "broken.png")
    assert sorted(os.listdir(tmp_path / "figs")) == written
