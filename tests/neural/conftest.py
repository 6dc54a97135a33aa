"""Tiny cohorts, configurations and models shared by the neural-model tests (module/session scope)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medsim.data.cohort import Cohort
from medsim.models.neural import NeuralPatientModel, config_from_cohort
from medsim.models.pk_oral_1cmt import PKOral1Cmt

# Under a bare ``pytest`` the test folders are on sys.path and ``tests/policies`` (no __init__.py)
# would shadow the ``policies`` package as a namespace package; the repository root comes first.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path[:1]:
    sys.path.insert(0, _ROOT)

# Tiny networks keep every test to a few seconds on 2 shared cores.
TINY = {
    "latent_dim": 3,
    "embedding_dim": 1,
    "hidden": 8,
    "cde_hidden": 6,
    "context_dim": 4,
    "weight_rank": 2,
    "horizon": 12.0,
    "dt": 0.75,
}


def pk_cohort(n_subjects: int = 8, seed: int = 0) -> Cohort:
    """One-compartment oral PK (theophylline-like) with irregular sampling, measured with noise.

    Concentrations come from a fine Euler solution of the ODE (step 0.01 h, error far below the
    0.3 mg/L measurement noise); subjects get 5-8 samples at their own random times, an oral dose
    at 0 and some a second dose or a 1-h infusion into the depot at 12 h.
    """
    rng = np.random.default_rng(seed)
    ka = 1.6 * np.exp(0.3 * rng.standard_normal(n_subjects))
    ke = 2.75 / 31.9 * np.exp(0.2 * rng.standard_normal(n_subjects))
    volume = 31.9 * np.exp(0.1 * rng.standard_normal(n_subjects))
    obs_time, obs_value, dose_time, dose_amount, dose_rate = [], [], [], [], []
    grid = np.arange(0.0, 24.0 + 1e-9, 0.01)
    for i in range(n_subjects):
        times = np.sort(rng.choice(np.arange(0.25, 24.0, 0.25), size=rng.integers(5, 9), replace=False))
        doses, amounts, rates = [0.0], [320.0], [0.0]
        if i % 3 == 1:
            doses, amounts, rates = [0.0, 12.0], [320.0, 160.0], [0.0, 0.0]
        elif i % 3 == 2:
            doses, amounts, rates = [0.0, 12.0], [320.0, 160.0], [0.0, 160.0]
        depot, central, conc = 0.0, 0.0, []
        for t in grid:
            inflow = 0.0
            for d, a, r in zip(doses, amounts, rates, strict=True):
                if r == 0 and abs(t - d) < 0.005:
                    depot += a
                if r > 0 and d <= t < d + a / r:
                    inflow += r
            conc.append(central / volume[i])
            depot, central = (
                depot + 0.01 * (inflow - ka[i] * depot),
                central + 0.01 * (ka[i] * depot - ke[i] * central),
            )
        values = np.interp(times, grid, np.array(conc)) + 0.3 * rng.standard_normal(times.size)
        obs_time.append(times)
        obs_value.append(values)
        dose_time.append(np.array(doses))
        dose_amount.append(np.array(amounts))
        dose_rate.append(np.array(rates))
    return Cohort.from_arrays(
        [str(i + 1) for i in range(n_subjects)],
        obs_time,
        obs_value,
        2,
        dose_time=dose_time,
        dose_amount=dose_amount,
        dose_cmt=1,
        dose_rate=dose_rate,
        covariates={"WT": 70.0 + 8.0 * rng.standard_normal(n_subjects)},
        units={"TIME": "h", "DV": "mg/L", "AMT": "mg", "WT": "kg"},
        name="tiny-pk",
    )


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # Small networks: one thread is faster than two contending ones and keeps results bitwise stable.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def cohort() -> Cohort:
    return pk_cohort()


@pytest.fixture(scope="session")
def config(cohort):
    return config_from_cohort(cohort, template=PKOral1Cmt(), name="tiny", **TINY)


@pytest.fixture(scope="session")
def model(config) -> NeuralPatientModel:
    torch.manual_seed(0)
    return NeuralPatientModel(config).eval()


@pytest.fixture(scope="session")
def trained(cohort, config):
    """A tiny model trained for 20 epochs (shared: training is the slowest step of these tests)."""
    from medsim.inference.neural import TrainSettings, train

    settings = TrainSettings(epochs=20, batch_size=64, learning_rate=1e-2, patience=100, kl_warmup_epochs=5)
    return train(cohort.subjects, config, seed=3, settings=settings)
