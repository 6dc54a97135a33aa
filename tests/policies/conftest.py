"""Shared helpers for the policy and rollout tests."""

from __future__ import annotations

import numpy as np
import pytest

from medsim.policies.protocol import Observation


def _make_obs(
    time,
    measured=None,
    *,
    announced=None,
    covariates=None,
    index=None,
    patient=None,
    time_unit="h",
    horizon=1e9,
) -> Observation:
    """An Observation of n patients (n from ``time``); scalars broadcast."""
    time = np.atleast_1d(np.asarray(time, np.float64))
    n = time.size

    def full(v):
        return np.broadcast_to(np.asarray(v, np.float64), (n,)).copy()

    return Observation(
        time=time,
        measured={k: full(v) for k, v in (measured or {}).items()},
        announced={k: full(v) for k, v in (announced or {}).items()},
        covariates={k: full(v) for k, v in (covariates or {}).items()},
        active=np.ones(n, bool),
        patient=np.arange(n, dtype=np.int64) if patient is None else np.asarray(patient, np.int64),
        index=np.zeros(n, np.int64) if index is None else np.broadcast_to(np.asarray(index, np.int64), (n,)).copy(),
        subject=np.full(n, "", dtype=object),
        time_unit=time_unit,
        horizon=horizon,
    )


@pytest.fixture
def make_obs():
    """Builder of small Observations: ``make_obs(time, measured, *, announced=..., covariates=...)``."""
    return _make_obs


def concentrated_draws(model, n_draws: int = 40, spread: float = 0.1, seed: int = 0):
    """Posterior-like draws: typical values x exp(spread z), BSV and residual error at the model's values.

    Prior draws (``PosteriorDraws.from_prior``) span orders of magnitude (e.g. an absorption
    rate of 30 /h), which an explicit fixed step cannot follow at test-sized ``dt``; a fitted
    posterior is concentrated like this.
    """
    from medsim.population import PosteriorDraws

    rng = np.random.default_rng(seed)
    population = {p.name: p.typical * np.exp(spread * rng.standard_normal(n_draws)) for p in model.parameters}
    omega = {p.name: np.full(n_draws, p.bsv) for p in model.structural if p.bsv > 0}
    residual = {}
    for obs, err in model.residual.items():
        if err.kind in ("additive", "combined"):
            residual[f"{obs}_add"] = np.full(n_draws, err.add)
        if err.kind in ("proportional", "combined"):
            residual[f"{obs}_prop"] = np.full(n_draws, err.prop)
    return PosteriorDraws(model=model, population=population, omega=omega, residual=residual)


@pytest.fixture(scope="module")
def pk_draws():
    import medsim.models as registry

    return concentrated_draws(registry.get("pk_oral_1cmt"))
