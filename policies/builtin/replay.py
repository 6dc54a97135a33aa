"""``replay``: the recorded doses of a cohort, given again as they were (open loop, "as treated").

``replay:cohort=COHORT.csv`` reads an event table (e.g. written by ``medsim import-t1d``) and
gives each virtual patient the dosing record of one subject: every bolus at its recorded time
and every zero-order infusion at its recorded rate over its recorded interval, whatever is
measured. A personalized twin gets its own subject's record (``Observation.subject``); a
population patient gets the record of subject ``patient mod S`` in the table's order. It answers
"what would the risk have been under the treatment actually given?", the reference against
which a policy is compared.

With ``meals=true`` (the default) recorded carbohydrate (the doses into the model's meal
compartment) is replayed too: evaluate with the scenario ``none`` so that no meal is added twice.
``meals=false`` replays the insulin only, for use with a meal scenario.

Interactions happen at every recorded dose time, infusion start and end, and every
``measure_every`` time units (0: only at dose events); the treatment never depends on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from medsim.policies.protocol import Observation, Option, spec_string


@dataclass(frozen=True)
class _Record:
    """One subject's doses, split by compartment: boluses and infusion intervals."""

    bolus: dict[int, tuple[np.ndarray, np.ndarray]]  # cmt -> (times, amounts)
    infusion: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]  # cmt -> (start, end, rate)
    breaks: np.ndarray  # sorted event times


@dataclass(frozen=True)
class Replay:
    """Replay of recorded doses (see the module docstring).

    Parameters
    ----------
    cohort : str
        Event table (CSV, CSV.gz, Parquet) with the recorded doses.
    meals : bool
        Also replay doses into the meal compartment (``meal_cmt``).
    meal_cmt : int
        The model's meal compartment (2 in the glucose models).
    measure_every : float
        Measurement interval (model time unit); 0 = only at dose events.
    """

    cohort: str = ""
    meals: bool = True
    meal_cmt: int = 2
    measure_every: float = 0.0
    _records: tuple = field(init=False, repr=False, compare=False)
    _ids: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.cohort:
            raise ValueError("replay: give the recorded doses, replay:cohort=COHORT.csv")
        if self.measure_every < 0:
            raise ValueError(f"replay: measure_every must be >= 0, got {self.measure_every}")
        from medsim.data import read_event_table

        try:
            table = read_event_table(Path(self.cohort))
        except FileNotFoundError as err:
            raise ValueError(str(err)) from None
        if table.n_subjects == 0:
            raise ValueError(f"replay: {self.cohort} has no subjects")
        object.__setattr__(self, "_records", tuple(self._record(s) for s in table.subjects))
        object.__setattr__(self, "_ids", table.ids)

    def _record(self, subject) -> _Record:
        keep = np.ones(subject.n_dose, bool) if self.meals else subject.dose_cmt != self.meal_cmt
        bolus, infusion = {}, {}
        for cmt in np.unique(subject.dose_cmt[keep]):
            at = keep & (subject.dose_cmt == cmt)
            b = at & (subject.dose_rate == 0)
            i = at & (subject.dose_rate > 0)
            bolus[int(cmt)] = (subject.dose_time[b], subject.dose_amount[b])
            start = subject.dose_time[i]
            infusion[int(cmt)] = (start, start + subject.dose_amount[i] / subject.dose_rate[i], subject.dose_rate[i])
        times = [t for b in bolus.values() for t in b[:1]] + [t for i in infusion.values() for t in i[:2]]
        breaks = np.unique(np.concatenate(times)) if times else np.zeros(0)
        return _Record(bolus, infusion, breaks)

    @property
    def name(self) -> str:
        changed = {f.name: getattr(self, f.name) for f in fields(self) if f.init and getattr(self, f.name) != f.default}
        return spec_string("replay", changed)

    def init(self, n: int, *, seed: int) -> None:
        """Memoryless: the record is a function of time."""
        return None

    def _subject_of(self, obs: Observation) -> np.ndarray:
        index = {sid: k for k, sid in enumerate(self._ids)}
        subject = np.asarray(obs.subject).astype(str)
        unknown = sorted({str(s) for s in subject if s and s not in index})
        if unknown:
            raise ValueError(f"replay: subjects {unknown[:5]} are not in {self.cohort} (it has {list(self._ids)[:10]})")
        by_patient = np.asarray(obs.patient) % len(self._ids)
        return np.array([index[s] if s else p for s, p in zip(subject, by_patient, strict=True)], dtype=np.int64)

    def act(self, state: None, obs: Observation, *, rng: np.random.Generator) -> tuple[None, Option]:
        t = np.asarray(obs.time, np.float64)
        tol = 1e-6 * max(1.0, float(np.max(np.abs(t), initial=1.0)))
        which = self._subject_of(obs)
        cmts = sorted({c for r in self._records for c in (*r.bolus, *r.infusion)})
        bolus = {c: np.zeros(t.size) for c in cmts}
        rate = {c: np.zeros(t.size) for c in cmts}
        following = np.full(t.size, np.inf)
        for k in np.unique(which):
            rows = np.flatnonzero(which == k)
            record, now = self._records[k], t[rows][:, None]
            for c, (times, amounts) in record.bolus.items():
                bolus[c][rows] = (np.abs(times[None, :] - now) <= tol) @ amounts
            for c, (start, end, r) in record.infusion.items():
                rate[c][rows] = ((start[None, :] <= now + tol) & (now + tol < end[None, :])) @ r
            later = np.where(record.breaks[None, :] > now + tol, record.breaks[None, :], np.inf)
            following[rows] = later.min(axis=1, initial=np.inf)
        measure = np.ones(t.size, bool)
        if self.measure_every > 0:
            grid = (np.floor((t + tol) / self.measure_every) + 1.0) * self.measure_every
            measure = grid <= following + tol
            following = np.minimum(following, grid)
        interval = np.where(np.isfinite(following), following - t, np.inf)
        return None, Option(interval=interval, bolus=bolus, rate=rate, measure_next=measure)
