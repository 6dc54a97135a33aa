"""Rectangular (padded) cohort arrays for likelihoods vectorised over subjects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from medsim.data.cohort import Cohort
    from medsim.data.subject import Subject


@dataclass(frozen=True, eq=False)
class PaddedCohort:
    """A cohort as (S, width) arrays plus masks; padding entries are inert.

    Padding is chosen so that code which ignores the masks still does no harm: padded
    observation times repeat the subject's last time (no extra simulation time), padded doses
    sit at ``+inf`` with amount 0 (never applied). Widths are at least 1.

    Attributes
    ----------
    ids : tuple of str, length S
    obs_time : (S, max_obs) float64
        Observation times; padding = the subject's last observation time (0 if none).
    obs_value : (S, max_obs) float64
        Measured values; padding 0.
    obs_cmt : (S, max_obs) int64
        Observation CMT; padding = the subject's first observation CMT (1 if none).
    obs_mask : (S, max_obs) bool
        True for real observations.
    dose_time : (S, max_dose) float64
        Dose times; padding ``+inf``.
    dose_cmt, dose_amount, dose_rate : (S, max_dose)
        int64 / float64 / float64; padding 1 / 0 / 0.
    dose_mask : (S, max_dose) bool
        True for real doses.
    covariates : dict name -> (S,) float64
    obs_cens : (S, max_obs) int64
        Censoring code of each observation (:class:`~medsim.data.Subject`); padding 0.
    """

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
    covariates: dict[str, np.ndarray]
    obs_cens: np.ndarray | None = None

    @property
    def n_subjects(self) -> int:
        return len(self.ids)

    @property
    def n_observations(self) -> int:
        return int(self.obs_mask.sum())

    def to_cohort(self, *, units: Mapping[str, str] | None = None, name: str = "", source: str = "") -> Cohort:
        """The cohort these arrays hold (masked entries dropped); inverse of :meth:`Cohort.padded`.

        Convenient for cohorts synthesised by simulation on a rectangular grid: fill the arrays,
        set the masks, convert.
        """
        from medsim.data.cohort import Cohort

        def rows(values: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
            return [v[m] for v, m in zip(values, mask, strict=True)]

        return Cohort.from_arrays(
            self.ids,
            rows(self.obs_time, self.obs_mask),
            rows(self.obs_value, self.obs_mask),
            rows(self.obs_cmt, self.obs_mask),
            dose_time=rows(self.dose_time, self.dose_mask),
            dose_amount=rows(self.dose_amount, self.dose_mask),
            dose_cmt=rows(self.dose_cmt, self.dose_mask),
            dose_rate=rows(self.dose_rate, self.dose_mask),
            covariates=self.covariates,
            obs_cens=None if self.obs_cens is None else rows(self.obs_cens, self.obs_mask),
            units=units,
            name=name,
            source=source,
        )


def _width(requested: int | None, needed: int, what: str) -> int:
    if requested is None:
        return max(needed, 1)
    if requested < max(needed, 1):
        raise ValueError(f"padded: {what}={requested} is smaller than the {max(needed, 1)} columns needed")
    return int(requested)


def pad_cohort(
    subjects: Sequence[Subject],
    covariate_names: Sequence[str],
    *,
    obs_width: int | None = None,
    dose_width: int | None = None,
) -> PaddedCohort:
    """Build a :class:`PaddedCohort` (see :meth:`medsim.data.Cohort.padded`)."""
    n = len(subjects)
    n_obs = np.array([s.n_obs for s in subjects], dtype=np.int64)
    n_dose = np.array([s.n_dose for s in subjects], dtype=np.int64)
    w_obs = _width(obs_width, int(n_obs.max(initial=0)), "obs_width")
    w_dose = _width(dose_width, int(n_dose.max(initial=0)), "dose_width")
    obs_mask = np.arange(w_obs)[None, :] < n_obs[:, None]
    dose_mask = np.arange(w_dose)[None, :] < n_dose[:, None]

    last_time = np.array([s.obs_time[-1] if s.n_obs else 0.0 for s in subjects], dtype=np.float64)
    first_cmt = np.array([s.obs_cmt[0] if s.n_obs else 1 for s in subjects], dtype=np.int64)
    obs_time = np.repeat(last_time[:, None], w_obs, axis=1)
    obs_value = np.zeros((n, w_obs))
    obs_cmt = np.repeat(first_cmt[:, None], w_obs, axis=1)
    dose_time = np.full((n, w_dose), np.inf)
    dose_cmt = np.ones((n, w_dose), dtype=np.int64)
    dose_amount = np.zeros((n, w_dose))
    dose_rate = np.zeros((n, w_dose))

    def fill(target: np.ndarray, mask: np.ndarray, field: str) -> np.ndarray:
        # Boolean-mask assignment fills row-major, i.e. subject by subject in record order.
        parts = [getattr(s, field) for s in subjects]
        if parts:
            target[mask] = np.concatenate(parts)
        target.setflags(write=False)
        return target

    covariates = {}
    for name in covariate_names:
        values = np.array([s.covariates[name] for s in subjects], dtype=np.float64)
        values.setflags(write=False)
        covariates[name] = values
    obs_mask.setflags(write=False)
    dose_mask.setflags(write=False)
    return PaddedCohort(
        ids=tuple(s.id for s in subjects),
        obs_time=fill(obs_time, obs_mask, "obs_time"),
        obs_value=fill(obs_value, obs_mask, "obs_value"),
        obs_cmt=fill(obs_cmt, obs_mask, "obs_cmt"),
        obs_mask=obs_mask,
        dose_time=fill(dose_time, dose_mask, "dose_time"),
        dose_cmt=fill(dose_cmt, dose_mask, "dose_cmt"),
        dose_amount=fill(dose_amount, dose_mask, "dose_amount"),
        dose_rate=fill(dose_rate, dose_mask, "dose_rate"),
        dose_mask=dose_mask,
        covariates=covariates,
        obs_cens=fill(np.zeros((n, w_obs), np.int64), obs_mask, "obs_cens"),
    )
