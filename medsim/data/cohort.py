"""The Cohort: measured subjects with irregular observations, doses and covariates."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from medsim.data.padded import PaddedCohort, pad_cohort
from medsim.data.subject import Subject

_HASH_VERSION = b"medsim-cohort-v1"


def id_sort_key(subject_id: str) -> tuple[int, float, str]:
    """Natural order of subject IDs: numeric IDs by value (2 before 10), then text IDs."""
    try:
        return (0, float(subject_id), subject_id)
    except ValueError:
        return (1, 0.0, subject_id)


@dataclass(frozen=True)
class Cohort:
    """Measured subjects, with units and provenance.

    Two cohorts are equal when they hold the same data (subjects in the same order, units,
    covariate names); ``name`` and ``source`` are provenance and do not take part.

    Attributes
    ----------
    subjects : tuple of Subject
        In file order (order of first appearance).
    name : str
        Short name (file stem or bundled dataset name).
    units : mapping str -> str
        Unit of each column, e.g. ``{"TIME": "h", "DV": "mg/L", "AMT": "mg", "WGT": "kg"}``.
    covariate_names : tuple of str
        Covariates every subject carries (inferred from the first subject when empty).
    source : str
        File path, ``"<DataFrame>"``, or ``"medsim:<dataset>"`` for bundled data.
    """

    subjects: tuple[Subject, ...]
    name: str = field(default="", compare=False)
    units: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    covariate_names: tuple[str, ...] = ()
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        subjects = tuple(self.subjects)
        bad = [type(s).__name__ for s in subjects if not isinstance(s, Subject)]
        if bad:
            raise TypeError(f"Cohort.subjects must be Subject objects, got {bad[0]}")
        ids = [s.id for s in subjects]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1}, key=id_sort_key)
            raise ValueError(f"cohort {self.name!r}: subject IDs must be unique; repeated: {dupes[:10]}")
        names = tuple(self.covariate_names) or (tuple(subjects[0].covariates) if subjects else ())
        for s in subjects:
            if set(s.covariates) != set(names):
                raise ValueError(
                    f"cohort {self.name!r}: subject {s.id!r} has covariates {sorted(s.covariates)}; "
                    f"expected exactly {list(names)}"
                )
        object.__setattr__(self, "subjects", subjects)
        object.__setattr__(self, "covariate_names", names)
        object.__setattr__(self, "units", MappingProxyType({str(k): str(v) for k, v in self.units.items()}))

    def __reduce__(self) -> tuple:
        return (_rebuild, (self.subjects, self.name, dict(self.units), self.covariate_names, self.source))

    # ------------------------------------------------------------------ counts and lookup
    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.subjects)

    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    @property
    def n_observations(self) -> int:
        return sum(s.n_obs for s in self.subjects)

    @property
    def n_doses(self) -> int:
        return sum(s.n_dose for s in self.subjects)

    @property
    def time_unit(self) -> str:
        return self.units.get("TIME", "")

    def subject(self, subject_id: str) -> Subject:
        """The subject with this ID.

        Raises
        ------
        KeyError
            Naming the ID and listing some valid ones.
        """
        for s in self.subjects:
            if s.id == str(subject_id):
                return s
        some = ", ".join(repr(i) for i in self.ids[:10]) + (", …" if self.n_subjects > 10 else "")
        raise KeyError(f"cohort {self.name!r} has no subject {str(subject_id)!r}; its IDs include {some}")

    def subset(self, ids: Iterable[str]) -> Cohort:
        """The cohort restricted to ``ids``, in the given order (KeyError for an unknown ID)."""
        return Cohort(tuple(self.subject(i) for i in ids), self.name, self.units, self.covariate_names, self.source)

    def split(self, fraction: float, seed: int) -> tuple[Cohort, Cohort]:
        """Split subjects into (train, test) with ``round(fraction * n_subjects)`` in train.

        Deterministic in ``seed`` and independent of the order of subjects in the file: the
        subjects are shuffled in natural ID order by ``numpy.random.default_rng(seed)``. Both
        parts keep the cohort's subject order.

        Raises
        ------
        ValueError
            If ``fraction`` is not strictly between 0 and 1 or a part would be empty.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"split fraction must be strictly between 0 and 1, got {fraction}")
        n_train = round(fraction * self.n_subjects)
        if not 0 < n_train < self.n_subjects:
            raise ValueError(
                f"split({fraction}) of {self.n_subjects} subjects leaves a part empty; expected at least one "
                "subject in each part"
            )
        canonical = sorted(self.ids, key=id_sort_key)
        shuffled = np.random.default_rng(seed).permutation(len(canonical))
        train = {canonical[i] for i in shuffled[:n_train]}
        return (
            self.subset([i for i in self.ids if i in train]),
            self.subset([i for i in self.ids if i not in train]),
        )

    # ------------------------------------------------------------------ identity
    def data_hash(self) -> str:
        """SHA-256 (hex) of a canonical serialisation of the data.

        Covers units, covariate names and every subject's records (with their censoring flags,
        when any is set) and covariates, with subjects in natural ID order and records in
        canonical order; not ``name`` or ``source``. So the
        hash is the same after a CSV or Parquet round trip and whatever the row order of the file.
        """
        h = hashlib.sha256(_HASH_VERSION)
        h.update(json.dumps(dict(sorted(self.units.items())), sort_keys=True).encode())
        h.update(json.dumps(sorted(self.covariate_names)).encode())
        for s in sorted(self.subjects, key=lambda s: id_sort_key(s.id)):
            sid = s.id.encode()
            h.update(len(sid).to_bytes(8, "little") + sid)
            for name in ("obs_time", "obs_value", "obs_cmt", "dose_time", "dose_cmt", "dose_amount", "dose_rate"):
                array = getattr(s, name)
                h.update(array.size.to_bytes(8, "little") + array.astype(array.dtype.newbyteorder("<")).tobytes())
            cens = s.obs_cens
            if cens is not None and np.any(cens):
                # only when used, so that an uncensored cohort keeps the hash it always had
                h.update(b"CENS" + np.asarray(cens, np.int64).astype("<i8").tobytes())
            for name in sorted(s.covariates):
                h.update(name.encode() + b"=" + np.float64(s.covariates[name]).astype("<f8").tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ views
    def to_event_table(self) -> pd.DataFrame:
        """Canonical event table: ``ID, TIME, DV, AMT, EVID, CMT, MDV, RATE`` (+ ``CENS`` when an
        observation is censored) + covariates.

        One record per observation (EVID 0) and per dose (EVID 1, DV missing). Within a subject
        records are in time order, observations before doses at the same time (pre-dose samples,
        see :class:`Subject`); subjects in cohort order.
        """
        n_obs = np.array([s.n_obs for s in self.subjects], dtype=np.int64)
        n_dose = np.array([s.n_dose for s in self.subjects], dtype=np.int64)
        order = np.arange(self.n_subjects)

        def cat(name: str, dtype: Any) -> np.ndarray:
            return np.concatenate([getattr(s, name) for s in self.subjects] or [np.zeros(0, dtype)]).astype(dtype)

        n_o, n_d = int(n_obs.sum()), int(n_dose.sum())
        subject_of = np.concatenate([np.repeat(order, n_obs), np.repeat(order, n_dose)])
        time = np.concatenate([cat("obs_time", np.float64), cat("dose_time", np.float64)])
        kind = np.concatenate([np.zeros(n_o, np.int64), np.ones(n_d, np.int64)])
        position = np.arange(n_o + n_d)
        sort = np.lexsort((position, kind, time, subject_of))
        ids = np.array(self.ids, dtype=object)
        frame = pd.DataFrame(
            {
                "ID": pd.array(ids[subject_of[sort]] if len(sort) else [], dtype="string"),
                "TIME": time[sort],
                "DV": np.concatenate([cat("obs_value", np.float64), np.full(n_d, np.nan)])[sort],
                "AMT": np.concatenate([np.zeros(n_o), cat("dose_amount", np.float64)])[sort],
                "EVID": kind[sort],
                "CMT": np.concatenate([cat("obs_cmt", np.int64), cat("dose_cmt", np.int64)])[sort],
                "MDV": kind[sort],
                "RATE": np.concatenate([np.zeros(n_o), cat("dose_rate", np.float64)])[sort],
            }
        )
        cens = np.concatenate([cat("obs_cens", np.int64), np.zeros(n_d, np.int64)])[sort]
        if cens.any():  # written only when used, so uncensored tables keep the canonical columns
            frame["CENS"] = cens
        for name in self.covariate_names:
            values = np.array([s.covariates[name] for s in self.subjects], dtype=np.float64)
            frame[name] = values[subject_of[sort]] if len(sort) else np.zeros(0)
        return frame

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable overview: counts, covariate ranges, time span, observations per subject, CMTs."""
        obs_counts = np.array([s.n_obs for s in self.subjects], dtype=np.int64)
        times = [t for s in self.subjects for t in (s.obs_time, s.dose_time) if t.size]
        all_times = np.concatenate(times) if times else np.zeros(0)
        obs_cmt = np.concatenate([s.obs_cmt for s in self.subjects] or [np.zeros(0, np.int64)])
        dose_cmt = np.concatenate([s.dose_cmt for s in self.subjects] or [np.zeros(0, np.int64)])

        def counts(values: np.ndarray) -> dict[str, int]:
            keys, n = np.unique(values, return_counts=True)
            return {str(int(k)): int(c) for k, c in zip(keys, n, strict=True)}

        covariates = {}
        for name in self.covariate_names:
            values = np.array([s.covariates[name] for s in self.subjects])
            covariates[name] = {
                "unit": self.units.get(name, ""),
                "min": float(values.min()) if values.size else None,
                "max": float(values.max()) if values.size else None,
            }
        return {
            "name": self.name,
            "source": self.source,
            "subjects": self.n_subjects,
            "observations": self.n_observations,
            "doses": self.n_doses,
            "infusions": int(sum(int((s.dose_rate > 0).sum()) for s in self.subjects)),
            "subjects_without_observations": int((obs_counts == 0).sum()),
            "covariates": covariates,
            "time_unit": self.time_unit,
            "time_span": [float(all_times.min()), float(all_times.max())] if all_times.size else None,
            "obs_per_subject": {
                "min": int(obs_counts.min()) if obs_counts.size else 0,
                "median": float(np.median(obs_counts)) if obs_counts.size else 0.0,
                "max": int(obs_counts.max()) if obs_counts.size else 0,
            },
            "obs_cmt": counts(obs_cmt),
            "dose_cmt": counts(dose_cmt),
            "units": dict(self.units),
            "data_hash": self.data_hash(),
        }

    def padded(self, *, obs_width: int | None = None, dose_width: int | None = None) -> PaddedCohort:
        """Rectangular arrays over subjects for one vectorised likelihood call.

        Parameters
        ----------
        obs_width, dose_width : int, optional
            Pad to this many columns instead of the largest subject's count (e.g. a bucket size
            shared by several cohorts so a compiled likelihood is reused). At least 1 either way.
        """
        return pad_cohort(self.subjects, self.covariate_names, obs_width=obs_width, dose_width=dose_width)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        ids: Sequence[str | int],
        obs_time: Sequence[Any],
        obs_value: Sequence[Any],
        obs_cmt: Any = 1,
        *,
        dose_time: Sequence[Any] | None = None,
        dose_amount: Sequence[Any] | None = None,
        dose_cmt: Any = 1,
        dose_rate: Any = 0.0,
        covariates: Mapping[str, Sequence[float]] | None = None,
        units: Mapping[str, str] | None = None,
        name: str = "",
        source: str = "",
        obs_cens: Any = None,
    ) -> Cohort:
        """Build a cohort from per-subject arrays (for synthesised cohorts).

        Parameters
        ----------
        ids : sequence, length S
            Subject identifiers (converted to str).
        obs_time, obs_value : sequence of S 1-D arrays, or a (S, n) array
            Each subject's observation times and values; a 2-D array gives every subject ``n``.
        obs_cmt : int, or per-subject like ``obs_time``
            Observation CMT (broadcast when an int or a length-S vector of ints).
        dose_time, dose_amount : like ``obs_time``, optional
            Dosing events; omit both for a cohort without doses.
        dose_cmt, dose_rate : scalar, length-S vector, or per-subject arrays
            Dosed CMT (default 1) and rate (default 0 = bolus).
        covariates : mapping name -> (S,) values, optional
        units : mapping, optional
            e.g. ``{"TIME": "min", "DV": "mg/dL"}``.
        name, source : str
            Provenance (e.g. ``"synthetic T1D, seed 3"``).
        obs_cens : int, or per-subject like ``obs_time``, optional
            Censoring codes (:class:`Subject`): 0 measured, 1 below / -1 above the limit held in
            ``obs_value``; default none censored.

        Raises
        ------
        ValueError
            If lengths disagree (naming the argument and subject).
        """
        ids = [str(i) for i in ids]
        n = len(ids)
        if (dose_time is None) != (dose_amount is None):
            raise ValueError("from_arrays: give both dose_time and dose_amount, or neither")
        o_time = _ragged(obs_time, n, "obs_time")
        o_value = _ragged(obs_value, n, "obs_value")
        o_cmt = _broadcast(obs_cmt, [len(t) for t in o_time], "obs_cmt")
        if dose_time is None:
            d_time = [np.zeros(0)] * n
            d_amount = [np.zeros(0)] * n
        else:
            d_time = _ragged(dose_time, n, "dose_time")
            d_amount = _ragged(dose_amount, n, "dose_amount")
        d_lengths = [len(t) for t in d_time]
        d_cmt = _broadcast(dose_cmt, d_lengths, "dose_cmt")
        d_rate = _broadcast(dose_rate, d_lengths, "dose_rate")
        covariates = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in (covariates or {}).items()}
        for k, v in covariates.items():
            if v.shape != (n,):
                raise ValueError(f"from_arrays: covariate {k!r} has shape {v.shape}; expected ({n},), one per subject")
        o_cens = _broadcast(0 if obs_cens is None else obs_cens, [len(t) for t in o_time], "obs_cens")
        subjects = tuple(
            Subject(
                ids[i],
                o_time[i],
                o_value[i],
                o_cmt[i],
                d_time[i],
                d_cmt[i],
                d_amount[i],
                d_rate[i],
                {k: float(v[i]) for k, v in covariates.items()},
                o_cens[i],
            )
            for i in range(n)
        )
        return cls(subjects, name, units or {}, tuple(covariates), source)


def _rebuild(subjects: tuple, name: str, units: dict, covariate_names: tuple, source: str) -> Cohort:
    return Cohort(subjects, name, units, covariate_names, source)


def _ragged(values: Any, n: int, what: str) -> list[np.ndarray]:
    """``values`` as a list of ``n`` 1-D arrays (a 2-D array is split by rows)."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        values = list(values)
    if len(values) != n:
        raise ValueError(f"from_arrays: {what} has {len(values)} entries; expected {n}, one per subject")
    return [np.asarray(v).reshape(-1) for v in values]


def _broadcast(values: Any, lengths: list[int], what: str) -> list[np.ndarray]:
    """Per-subject arrays from a scalar, a length-S vector of scalars, or per-subject arrays."""
    if np.isscalar(values) or (isinstance(values, np.ndarray) and values.ndim == 0):
        return [np.full(k, values) for k in lengths]
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.shape[0] == len(lengths):
        return [np.full(k, v) for k, v in zip(lengths, values, strict=True)]
    per_subject = _ragged(values, len(lengths), what)
    for i, (v, k) in enumerate(zip(per_subject, lengths, strict=True)):
        if v.size == 1 and k != 1:
            per_subject[i] = np.full(k, v[0])
        elif v.size != k:
            raise ValueError(f"from_arrays: {what} for subject {i} has {v.size} entries; expected {k}")
    return per_subject


__all__ = ["Cohort", "PaddedCohort", "Subject", "id_sort_key"]
