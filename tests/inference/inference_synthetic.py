"""Small synthetic cohorts with known parameters, in the PaddedCohort layout."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Theophylline-like sampling times (h) after a single oral dose at time 0.
THEOPH_TIMES = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 3.5, 5.0, 7.0, 9.0, 12.0, 24.0])


@dataclass(frozen=True)
class Padded:
    """The fields of ``medsim.data.PaddedCohort`` that inference reads."""

    ids: tuple[str, ...]
    obs_time: np.ndarray
    obs_value: np.ndarray
    obs_cmt: np.ndarray
    obs_mask: np.ndarray
    dose_time: np.ndarray
    dose_cmt: np.ndarray
    dose_amount: np.ndarray
    dose_rate: np.ndarray
    dose_mask: np.ndarray
    covariates: dict = field(default_factory=dict)
    obs_cens: np.ndarray | None = None


@dataclass(frozen=True)
class SyntheticCohort:
    """Duck-typed cohort: ``padded()``, ``data_hash()`` and ``name``."""

    arrays: Padded
    name: str = "synthetic"
    truth: dict = field(default_factory=dict)

    def padded(self) -> Padded:
        return self.arrays

    def data_hash(self) -> str:
        import hashlib

        digest = hashlib.sha256()
        for name in ("obs_time", "obs_value", "obs_cmt", "dose_time", "dose_amount", "dose_rate"):
            digest.update(np.ascontiguousarray(getattr(self.arrays, name), np.float64).tobytes())
        return digest.hexdigest()


def oral_conc(t, dose, ka, cl, v):
    """Closed-form one-compartment oral concentration (mg/L), e.g. Gabrielsson & Weiner eq. 2.5."""
    k = cl / v
    return dose * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))


def oral_cohort(n_subjects: int = 3, *, seed: int = 1, dose: float = 320.0, sd: float = 0.5) -> SyntheticCohort:
    """Theophylline-like cohort simulated from the ODE with log-normal BSV and additive error."""
    rng = np.random.default_rng(seed)
    s, n = n_subjects, len(THEOPH_TIMES)
    ka = 1.6 * np.exp(0.5 * rng.standard_normal(s))
    cl = 2.75 * np.exp(0.25 * rng.standard_normal(s))
    v = 31.9 * np.exp(0.15 * rng.standard_normal(s))
    times = np.tile(THEOPH_TIMES, (s, 1))
    values = oral_conc(times, dose, ka[:, None], cl[:, None], v[:, None]) + sd * rng.standard_normal((s, n))
    padded = Padded(
        ids=tuple(f"S{i + 1}" for i in range(s)),
        obs_time=times,
        obs_value=values,
        obs_cmt=np.full((s, n), 2),
        obs_mask=np.ones((s, n), bool),
        dose_time=np.zeros((s, 1)),
        dose_cmt=np.ones((s, 1), int),
        dose_amount=np.full((s, 1), dose),
        dose_rate=np.zeros((s, 1)),
        dose_mask=np.ones((s, 1), bool),
        covariates={"WT": 70.0 * np.exp(0.1 * rng.standard_normal(s))},
    )
    return SyntheticCohort(padded, name="synthetic-oral", truth={"ka": ka, "CL": cl, "V": v, "conc_add": sd})
