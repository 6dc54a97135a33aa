"""Twins start from where the patient is: the filtered state after the subject's record.

A synthetic cohort of the linear SDE of ``inference_linear`` with strong process noise on the
central compartment: each subject's path wanders far from the noise-free solution, so a forecast
that starts from the model's initial state at time 0 (and so from the noise-free mean) misses
where the subject is, and one that starts from the filtered state after its last measurement
does not. The path under test is the one ``medsim sample`` / ``medsim risk --mode personalized``
take: fit assembly stores the filtered state (``build_inference_data``), ``Posterior.draws()``
reads it, ``sample_population`` starts each twin there and ``VirtualPopulation.initial_state``
returns it.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from inference_linear import LinearOral
from inference_synthetic import Padded
from scipy.linalg import expm

from medsim.inference.assemble import build_inference_data
from medsim.inference.posterior import Posterior
from medsim.inference.problem import prepare
from medsim.population import sample_population

TRUTH = {"ka": 1.2, "k": 0.15, "V": 20.0, "s_gut": 0.5, "s_central": 15.0}
RESIDUAL_SD = 0.3
TRAIN = np.arange(0.0, 12.5, 1.0)  # hourly samples 0-12 h
HELD_OUT = np.array([12.25, 12.5, 13.0])  # 15 min to 1 h after the last sample
N_SUBJECTS = 24
DOSE = 300.0  # mg into the gut at time 0


def drift_matrix() -> np.ndarray:
    return np.array([[-TRUTH["ka"], 0.0], [TRUTH["ka"], -TRUTH["k"]]])


def simulate_subjects(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Exact transitions of the linear SDE (Van Loan), sampled on a 0.25-h grid: conc at TRAIN and HELD_OUT."""
    rng = np.random.default_rng(seed)
    a, dt = drift_matrix(), 0.25
    f = expm(a * dt)
    vl = np.zeros((4, 4))
    vl[:2, :2], vl[:2, 2:], vl[2:, 2:] = -a, np.diag([TRUTH["s_gut"] ** 2, TRUTH["s_central"] ** 2]), a.T
    ev = expm(vl * dt)
    q = ev[2:, 2:].T @ ev[:2, 2:]
    root = np.linalg.cholesky(0.5 * (q + q.T))
    grid = np.arange(0.0, HELD_OUT[-1] + dt / 2, dt)
    x = np.tile([DOSE, 0.0], (N_SUBJECTS, 1))
    path = [x]
    for _ in grid[1:]:
        x = x @ f.T + rng.standard_normal(x.shape) @ root.T
        path.append(x)
    conc = np.stack(path, axis=1)[..., 1] / TRUTH["V"]  # (S, grid)
    at = {t: round(t / dt) for t in (*TRAIN, *HELD_OUT)}
    train = conc[:, [at[t] for t in TRAIN]] + RESIDUAL_SD * rng.standard_normal((N_SUBJECTS, len(TRAIN)))
    return train, conc[:, [at[t] for t in HELD_OUT]]


def cohort(train: np.ndarray) -> Padded:
    s, n = train.shape
    return Padded(
        ids=tuple(f"s{i}" for i in range(s)),
        obs_time=np.tile(TRAIN, (s, 1)),
        obs_value=train,
        obs_cmt=np.full((s, n), 2),
        obs_mask=np.ones((s, n), bool),
        dose_time=np.zeros((s, 1)),
        dose_cmt=np.ones((s, 1), int),
        dose_amount=np.full((s, 1), DOSE),
        dose_rate=np.zeros((s, 1)),
        dose_mask=np.ones((s, 1), bool),
    )


def truth_posterior(data) -> Posterior:
    """A two-draw "posterior" at the true parameters (no fit: what is tested is where twins start)."""
    samples = {}
    for site in data.priors.sites:
        value = {"omega": 0.1, "residual_add": RESIDUAL_SD}.get(site.role, TRUTH.get(site.target, site.median()))
        samples[site.site] = np.full((1, 2), value)
    for p in data.priors.random_effects:
        samples[f"eta_{p}"] = np.zeros((1, 2, data.n_subjects))
    attrs = {"medsim_posterior": "1", "model_name": "linear_oral_test", "model_version": "1"}
    attrs |= {"priors": data.priors.to_json(), "method": "svi", "backend": "numpyro", "data_hash": data.data_hash}
    return Posterior(build_inference_data(data, samples, None, attrs), data.model)


@pytest.fixture(scope="module")
def fitted():
    train, held_out = simulate_subjects()
    with jax.enable_x64(True):
        data = prepare(cohort(train), LinearOral(), dtype=np.float64)
        draws = truth_posterior(data).draws()
    return draws, held_out


def test_twins_start_at_the_filtered_state_of_their_subject(fitted):
    draws, _ = fitted
    s = 4
    mean = np.array([draws.state["gut"][0, s], draws.state["central"][0, s]])
    assert draws.state_time[s] == pytest.approx(TRAIN[-1])
    pop = sample_population(draws, 4000, mode="personalized", subject="s4", seed=1)
    x0 = np.stack([pop.initial_state()["gut"], pop.initial_state()["central"]], axis=1)
    assert pop.provenance["start_time"] == pytest.approx(TRAIN[-1])
    # drawn from Normal(mean, cov): the sample mean lies within 4 standard errors of it
    se = np.sqrt(np.diag(draws.state_cov[0, s]) / len(x0))
    assert np.all(np.abs(x0.mean(axis=0) - mean) < 4 * se + 1e-9)
    cov, target = np.cov(x0.T), draws.state_cov[0, s]
    # sample variances of 4000 normal draws have a relative SE of sqrt(2 / 4000) = 2.2 %; the
    # covariance's SE is sqrt(var_1 var_2 (1 + rho^2) / 4000)
    np.testing.assert_allclose(np.diag(cov), np.diag(target), rtol=0.1)
    assert abs(cov[0, 1] - target[0, 1]) < 4 * np.sqrt(target[0, 0] * target[1, 1] * 2 / len(x0))
    # start="initial" keeps the model's initial state (both compartments empty at time 0)
    steady = sample_population(draws, 8, mode="personalized", subject="s4", seed=1, start="initial")
    assert np.all(steady.initial_state()["central"] == 0.0)
    assert steady.provenance["start_time"] == 0.0


def test_filtered_start_improves_the_held_out_forecast(fitted):
    draws, held_out = fitted
    a = drift_matrix()
    errors = {"filtered": [], "initial": []}
    for s in range(N_SUBJECTS):
        pop = sample_population(draws, 400, mode="personalized", subject=f"s{s}", seed=s)
        x0 = np.stack([pop.initial_state()["gut"], pop.initial_state()["central"]], axis=1).mean(axis=0)
        t0 = pop.provenance["start_time"]
        start = sample_population(draws, 2, mode="personalized", subject=f"s{s}", seed=s, start="initial")
        z0 = np.array([start.initial_state()["gut"][0] + DOSE, start.initial_state()["central"][0]])
        for j, t in enumerate(HELD_OUT):
            errors["filtered"].append((expm(a * (t - t0)) @ x0)[1] / TRUTH["V"] - held_out[s, j])
            errors["initial"].append((expm(a * t) @ z0)[1] / TRUTH["V"] - held_out[s, j])
    rmse = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in errors.items()}
    # From time 0 the forecast error is the path's own spread around the noise-free solution:
    # nearly its stationary variance v = s_central^2 / (2 k) / V^2 (1.9 (mg/L)^2). From the
    # filtered state at 12 h it is the filter's variance (0.08 (mg/L)^2) plus what the noise
    # adds over the horizon h, v (1 - exp(-2 k h)): 0.07 v, 0.14 v, 0.26 v at 15, 30, 60 min.
    # Expected RMSE ratio sqrt((0.08 + 0.16 v) / v) = 0.45; over 72 held-out points its
    # sampling SD is about 0.05, so 0.7 fails only if the forecast does not start where the
    # filter left the subject.
    assert rmse["filtered"] < 0.7 * rmse["initial"], rmse


def test_start_is_checked(fitted):
    draws, _ = fitted
    from dataclasses import replace

    with pytest.raises(ValueError, match="only used with mode='personalized'"):
        sample_population(draws, 4, mode="population", seed=0, start="filtered")
    with pytest.raises(ValueError, match="needs draws with the fitted subjects' filtered states"):
        sample_population(
            replace(draws, state={}, state_cov=None, state_time=None),
            4,
            mode="personalized",
            subject="s0",
            seed=0,
            start="filtered",
        )
    with pytest.raises(ValueError, match="start must be 'filtered' or 'initial'"):
        sample_population(draws, 4, mode="personalized", subject="s0", seed=0, start="now")


def test_posterior_predictive_forecasts_from_the_filtered_state(fitted):
    """``posterior_predictive(start="filtered")``, the forecast the held-out checks score, starts there too."""
    from medsim.inference.checks.predictive import PredictiveError, posterior_predictive

    draws, held_out = fitted
    s_count = held_out.shape[0]
    times = np.tile(HELD_OUT, (s_count, 1))
    padded = cohort(np.zeros((s_count, len(TRAIN))))
    key = jax.random.key(5)
    sample = posterior_predictive(draws, padded, key=key, n_draws=None, times=times, start="filtered")
    assert sample.prediction.shape == (2, s_count, len(HELD_OUT))
    a, t0 = drift_matrix(), TRAIN[-1]
    for s in range(s_count):
        mean = np.array([draws.state["gut"][0, s], draws.state["central"][0, s]])
        cov = draws.state_cov[0, s]
        for j, t in enumerate(HELD_OUT):
            f = expm(a * (t - t0))
            expected = (f @ mean)[1] / TRUTH["V"]
            # two replicates: their mean's SD is at most sqrt((F P F^T)_cc + s_central^2 h) / V / sqrt(2)
            sd = np.sqrt((f @ cov @ f.T)[1, 1] + TRUTH["s_central"] ** 2 * (t - t0)) / TRUTH["V"] / np.sqrt(2)
            assert abs(sample.prediction[:, s, j].mean() - expected) < 5 * sd, (s, j)
    initial = posterior_predictive(draws, padded, key=key, n_draws=None, times=times, start="initial")
    rmse = {
        name: float(np.sqrt(np.mean((x.prediction.mean(axis=0) - held_out) ** 2)))
        for name, x in (("filtered", sample), ("initial", initial))
    }
    # the same bound as the twin test above (expected ratio 0.45, sampling SD about 0.05)
    assert rmse["filtered"] < 0.7 * rmse["initial"], rmse
    with pytest.raises(PredictiveError, match="before its filtered state"):
        posterior_predictive(draws, padded, key=key, times=np.tile(TRAIN, (s_count, 1)), start="filtered")
    with pytest.raises(PredictiveError, match="needs mode='individual'"):
        posterior_predictive(draws, padded, key=key, times=times, start="filtered", mode="population")


def test_the_heldout_gate_forecasts_from_the_filtered_state(fitted):
    """The calibration gate scores the forecast twins make: from the filtered state (``start="auto"``)."""
    from dataclasses import replace

    from medsim.inference.checks.calibration_gate import forecast_start, heldout_check

    draws, held_out = fitted
    s_count = held_out.shape[0]
    rng = np.random.default_rng(11)
    full = cohort(np.zeros((s_count, len(TRAIN))))
    times = np.concatenate([TRAIN, HELD_OUT])
    values = np.concatenate([np.zeros((s_count, len(TRAIN))), held_out], axis=1)
    values[:, len(TRAIN) :] += RESIDUAL_SD * rng.standard_normal(held_out.shape)
    full = replace(
        full,
        obs_time=np.tile(times, (s_count, 1)),
        obs_value=values,
        obs_cmt=np.full(values.shape, 2),
        obs_mask=np.ones(values.shape, bool),
    )
    held = np.zeros(values.shape, bool)
    held[:, len(TRAIN) :] = True
    assert forecast_start(draws, full, held) == "filtered"
    # a held-out point before the filtered state (12 h) cannot be forecast from it
    early = held.copy()
    early[:, len(TRAIN) - 2] = True
    assert forecast_start(draws, full, early) == "initial"
    assert forecast_start(replace(draws, state={}, state_cov=None, state_time=None), full, held) == "initial"
    gate = heldout_check(draws, full, held, key=jax.random.key(2), n_draws=None)
    assert "filtered state" in gate.method
