"""From checked records to a :class:`~medsim.data.Cohort`: expand ADDL doses, group by subject."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medsim.data.cohort import Cohort
from medsim.data.covariates import CovariateValues
from medsim.data.parse import Parsed
from medsim.data.records import RecordKinds
from medsim.data.subject import Subject


def expand_additional_doses(time: np.ndarray, addl: np.ndarray, ii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NONMEM ADDL/II: a dose record stands for ``1 + ADDL`` doses at ``time + k * II``, k = 0..ADDL.

    Times are computed as ``time + k * II`` (not by repeated addition), so the k-th dose lands
    exactly where a record written at that time would put it, up to one rounding.

    Parameters
    ----------
    time, addl, ii : (n_dose,) float64
        Dose record times, additional-dose counts (whole numbers >= 0) and intervals.

    Returns
    -------
    source : (n_expanded,) int64
        Index of the dose record each expanded dose comes from.
    times : (n_expanded,) float64
    """
    reps = 1 + addl.astype(np.int64)
    source = np.repeat(np.arange(time.size), reps)
    k = np.arange(source.size) - np.repeat(np.cumsum(reps) - reps, reps)
    return source, time[source] + k * ii[source]


def build_cohort(
    p: Parsed,
    kinds: RecordKinds,
    covariates: CovariateValues,
    *,
    units: Mapping[str, str],
    name: str,
    source: str,
) -> Cohort:
    """Assemble the cohort (call only when ``p`` has no problems)."""
    v = p.values
    n_subjects = len(kinds.subject_ids)
    obs = np.flatnonzero(kinds.obs)
    dose_rows = np.flatnonzero(kinds.dose)
    origin, dose_time = expand_additional_doses(v["TIME"][dose_rows], v["ADDL"][dose_rows], v["II"][dose_rows])
    dose = dose_rows[origin]

    def grouped(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Record order grouped by subject (stable), and each subject's slice bounds."""
        order = np.argsort(kinds.subject[records], kind="stable")
        counts = np.bincount(kinds.subject[records], minlength=n_subjects)
        return order, np.concatenate([[0], np.cumsum(counts)])

    obs_order, obs_bounds = grouped(obs)
    dose_order, dose_bounds = grouped(dose)
    obs_sorted = obs[obs_order]
    dose_sorted = dose[dose_order]
    dose_time_sorted = dose_time[dose_order]
    subjects = []
    for s, sid in enumerate(kinds.subject_ids):
        o = obs_sorted[obs_bounds[s] : obs_bounds[s + 1]]
        d = dose_sorted[dose_bounds[s] : dose_bounds[s + 1]]
        subjects.append(
            Subject(
                sid,
                obs_time=v["TIME"][o],
                obs_value=v["DV"][o],
                obs_cmt=v["CMT"][o].astype(np.int64),
                dose_time=dose_time_sorted[dose_bounds[s] : dose_bounds[s + 1]],
                dose_cmt=v["CMT"][d].astype(np.int64),
                dose_amount=v["AMT"][d],
                dose_rate=kinds.rate[d],
                covariates={c: float(covariates.per_subject[c][s]) for c in covariates.names},
                obs_cens=v["CENS"][o].astype(np.int64) if "CENS" in v else None,
            )
        )
    return Cohort(tuple(subjects), name=name, units=units, covariate_names=covariates.names, source=source)
