"""Training and forecasting windows cut from a cohort's irregular records.

A *window* is one forecasting problem: a subject's record up to a forecast origin ``t_c`` (the
history, read by the encoder), the doses it receives (which drive the latent SDE) and the
observations after ``t_c`` up to ``t_c + horizon`` (the targets). The history of window
``n_history = h`` holds the subject's first ``h`` observations (in time order) and every dose
given strictly before ``t_c``; ``t_c`` is the time of the ``h``-th observation, or the subject's
first record when ``h = 0`` (no information yet: the population case). A dose at ``t_c`` itself
is a planned treatment of the forecast, as a bolus at the start of an ``advance`` interval is.

Encoder channels at each knot (:class:`ControlPath`), in order:

* time since the subject's first record, divided by ``time_scale``;
* per observable: the last measured value on the normalised link scale (0 before any), and
  ``log1p`` of the number of measurements so far;
* per dose compartment: ``log1p`` of the cumulative amount delivered so far / ``amount_scale``
  (infusions delivered at their rate, so the channel is continuous through an infusion).

Knots are the subject's start, every record (observation, dose, infusion end) and nothing else;
padding repeats the last knot. Windows are built once, in numpy, and batched as torch tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medsim.models.neural.config import NeuralConfig

_KIND_OBS, _KIND_DOSE, _KIND_INFUSION_END = 0, 1, 2


def normalise_observation(value: np.ndarray, positive: bool, loc: float, scale: float) -> np.ndarray:
    """Measured values on the encoder's normalised link scale (clipped to [-6, 6])."""
    value = np.asarray(value, dtype=np.float64)
    if positive:
        floor = np.exp(loc - 3.0 * scale)
        link = np.log(np.maximum(value, floor))
    else:
        link = value
    return np.clip((link - loc) / scale, -6.0, 6.0)


@dataclass(frozen=True)
class WindowBatch:
    """A batch of windows as tensors (see :class:`WindowSet` for the fields)."""

    knot_time: torch.Tensor
    knot_value: torch.Tensor
    cut_index: torch.Tensor
    last_index: torch.Tensor
    target_time: torch.Tensor
    target_value: torch.Tensor
    target_obs: torch.Tensor
    target_mask: torch.Tensor
    dose_time: torch.Tensor
    dose_index: torch.Tensor
    dose_amount: torch.Tensor
    dose_rate: torch.Tensor
    dose_mask: torch.Tensor
    covariates: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.cut_index.shape[0])


@dataclass(frozen=True)
class WindowSet:
    """Forecasting windows of a cohort, padded numpy arrays (``N`` windows).

    Attributes
    ----------
    subject_ids : tuple of str
        IDs of the cohort's subjects; ``subject`` indexes it.
    subject, n_history : (N,) int
        Subject of each window and number of observations in its history.
    start_time, cut_time : (N,) float64
        Subject's first record and the forecast origin ``t_c`` (model time unit, absolute).
    knot_time : (N, K) float64
        Knot times, absolute; padding repeats the last.
    knot_value : (N, K, C) float32
        Encoder channels at the knots.
    cut_index, last_index : (N,) int
        Knot of the forecast origin and last knot of the window.
    target_time : (N, F) float64
        Target observation times relative to ``t_c`` (in ``[0, horizon]``).
    target_value : (N, F) float64
        Measured values (observable unit).
    target_obs, target_rank : (N, F) int
        Observable index and steps ahead (1 = first observation after ``t_c``).
    target_mask : (N, F) bool
    dose_time : (N, E) float64
        Every dose of the subject up to ``t_c + horizon``, relative to ``t_c`` (past doses are
        negative: they set the dose filters at ``t_c``).
    dose_index : (N, E) int
        Position of the dose's compartment in ``config.doses``.
    dose_amount, dose_rate : (N, E) float64
    dose_mask : (N, E) bool
    covariates : (N, n_cov) float32
        Standardised covariates.
    """

    subject_ids: tuple[str, ...]
    subject: np.ndarray
    n_history: np.ndarray
    start_time: np.ndarray
    cut_time: np.ndarray
    knot_time: np.ndarray
    knot_value: np.ndarray
    cut_index: np.ndarray
    last_index: np.ndarray
    target_time: np.ndarray
    target_value: np.ndarray
    target_obs: np.ndarray
    target_rank: np.ndarray
    target_mask: np.ndarray
    dose_time: np.ndarray
    dose_index: np.ndarray
    dose_amount: np.ndarray
    dose_rate: np.ndarray
    dose_mask: np.ndarray
    covariates: np.ndarray

    def __len__(self) -> int:
        return int(self.subject.shape[0])

    @property
    def n_targets(self) -> int:
        return int(self.target_mask.sum())

    def batch(
        self, index: np.ndarray | Sequence[int], *, device: str | torch.device = "cpu", history_only: bool = False
    ) -> WindowBatch:
        """Tensors for windows ``index``, trimmed to the sizes this batch needs.

        ``history_only`` keeps the knots up to the forecast origin only (what a forecast may see).
        """
        index = np.asarray(index, dtype=np.int64)
        last = self.cut_index[index] if history_only else self.last_index[index]
        k = int(last.max()) + 1
        knot_time = self.knot_time[index, :k].copy()
        knot_value = self.knot_value[index, :k].copy()
        # Knots past a window's last knot repeat it (zero increments: the CDE stands still).
        beyond = np.arange(k)[None, :] > last[:, None]
        rows = np.arange(len(index))
        knot_time[beyond] = np.broadcast_to(knot_time[rows, last][:, None], knot_time.shape)[beyond]
        knot_value[beyond] = np.broadcast_to(knot_value[rows, last][:, None], knot_value.shape)[beyond]
        f = max(1, int(self.target_mask[index].sum(axis=1).max()))
        e = max(1, int(self.dose_mask[index].sum(axis=1).max()))

        def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

        return WindowBatch(
            knot_time=t(knot_time, torch.float32),
            knot_value=t(knot_value, torch.float32),
            cut_index=t(self.cut_index[index], torch.long),
            last_index=t(np.minimum(self.last_index[index], k - 1), torch.long),
            target_time=t(self.target_time[index, :f], torch.float32),
            target_value=t(self.target_value[index, :f], torch.float32),
            target_obs=t(self.target_obs[index, :f], torch.long),
            target_mask=t(self.target_mask[index, :f], torch.bool),
            dose_time=t(self.dose_time[index, :e], torch.float32),
            dose_index=t(self.dose_index[index, :e], torch.long),
            dose_amount=t(self.dose_amount[index, :e], torch.float32),
            dose_rate=t(self.dose_rate[index, :e], torch.float32),
            dose_mask=t(self.dose_mask[index, :e], torch.bool),
            covariates=t(self.covariates[index], torch.float32),
        )


def _subject_records(subject, config: NeuralConfig) -> dict[str, np.ndarray]:
    """Knot times and channel values of one subject's full record (start knot first)."""
    obs_index = np.array([config.observable_of_cmt(int(c)) for c in subject.obs_cmt], dtype=np.int64)
    dose_index = np.array([config.dose_index(int(c)) for c in subject.dose_cmt], dtype=np.int64)
    infusion = subject.dose_rate > 0
    ends = subject.dose_time[infusion] + subject.dose_amount[infusion] / subject.dose_rate[infusion]
    time = np.concatenate([subject.obs_time, subject.dose_time, ends])
    kind = np.concatenate(
        [
            np.full(subject.obs_time.size, _KIND_OBS),
            np.full(subject.dose_time.size, _KIND_DOSE),
            np.full(ends.size, _KIND_INFUSION_END),
        ]
    )
    ref = np.concatenate(
        [np.arange(subject.obs_time.size), np.arange(subject.dose_time.size), np.flatnonzero(infusion)]
    )
    # Observations before doses at equal times (pre-dose samples), then input order.
    order = np.lexsort((ref, kind, time))
    time, kind, ref = time[order], kind[order], ref[order]
    start = float(time.min()) if time.size else 0.0
    n_rec = time.size
    n_obs_vars = len(config.observables)
    channels = np.zeros((n_rec + 1, config.n_channels), dtype=np.float64)
    knot_time = np.concatenate([[start], time])
    channels[:, 0] = (knot_time - start) / config.time_scale
    is_obs = kind == _KIND_OBS
    is_dose = kind == _KIND_DOSE
    # Observable / dose compartment of each record (-1 where the record is of another kind).
    obs_of_record = np.full(n_rec, -1, dtype=np.int64)
    obs_of_record[is_obs] = obs_index[ref[is_obs]]
    dose_of_record = np.full(n_rec, -1, dtype=np.int64)
    dose_of_record[is_dose] = dose_index[ref[is_dose]]
    for j, spec in enumerate(config.observables):
        mine = obs_of_record == j
        values = normalise_observation(subject.obs_value[ref[mine]], spec.positive, spec.loc, spec.scale)
        latest = np.cumsum(mine) - 1  # position in ``values`` of the latest measurement so far
        filled = np.zeros(n_rec)
        filled[latest >= 0] = values[latest[latest >= 0]]
        channels[1:, 1 + 2 * j] = filled
        channels[1:, 2 + 2 * j] = np.log1p(np.cumsum(mine))
    base = 1 + 2 * n_obs_vars
    bolus_record = np.zeros(n_rec, dtype=bool)
    bolus_record[is_dose] = subject.dose_rate[ref[is_dose]] <= 0
    for c, spec in enumerate(config.doses):
        bolus_here = (dose_of_record == c) & bolus_record
        amounts = np.zeros(n_rec)
        amounts[bolus_here] = subject.dose_amount[ref[bolus_here]]
        cumulative = np.cumsum(amounts)
        mine = infusion & (dose_index == c)
        if mine.any():
            rate = subject.dose_rate[mine]
            duration = subject.dose_amount[mine] / rate
            delivered = np.clip(time[:, None] - subject.dose_time[mine][None, :], 0.0, duration)
            cumulative = cumulative + (delivered * rate).sum(axis=1)
        channels[1:, base + c] = np.log1p(cumulative / spec.amount_scale)
    record_of_obs = np.full(subject.obs_time.size, -1, dtype=np.int64)
    record_of_obs[ref[is_obs]] = np.flatnonzero(is_obs)
    return {
        "start": start,
        "knot_time": knot_time,
        "channels": channels,
        "record_of_obs": record_of_obs,
        "obs_index": obs_index,
        "dose_index": dose_index,
    }


def make_windows(
    subjects: Sequence,
    config: NeuralConfig,
    *,
    max_cuts_per_subject: int | None = None,
    history_at_end: bool = False,
) -> WindowSet:
    """Cut forecasting windows from subjects.

    Parameters
    ----------
    subjects : sequence of medsim.data.Subject
    config : NeuralConfig
        Observables, dose compartments, covariates (standardisation), time scale, horizon.
    max_cuts_per_subject : int, optional
        Use at most this many forecast origins per subject, evenly spread over its
        observations (dense monitoring would otherwise give one window per sample).
    history_at_end : bool
        Instead of training windows, one window per subject whose history is the whole record
        (the forecast origin is the last observation; no targets). Used to start digital twins.

    Raises
    ------
    KeyError
        If a subject has an observation or dose CMT the configuration does not know (naming
        the subject and CMT).
    ValueError
        If a subject lacks a covariate of the configuration.
    """
    rows: list[dict] = []
    for s_index, subject in enumerate(subjects):
        try:
            rec = _subject_records(subject, config)
        except KeyError as err:
            raise KeyError(f"subject {subject.id!r}: {err.args[0]}") from None
        missing = [c.name for c in config.covariates if c.name not in subject.covariates]
        if missing:
            raise ValueError(f"subject {subject.id!r} lacks covariates {missing} the neural model is conditioned on")
        cov = np.array([(subject.covariates[c.name] - c.mean) / c.sd for c in config.covariates], dtype=np.float32)
        n_obs = subject.obs_time.size
        if history_at_end:
            cuts = [n_obs]
        else:
            cuts = list(range(n_obs))
            if max_cuts_per_subject is not None and len(cuts) > max_cuts_per_subject:
                cuts = sorted({round(v) for v in np.linspace(0, n_obs - 1, max_cuts_per_subject)})
        for n_hist in cuts:
            t_cut = rec["start"] if n_hist == 0 else float(subject.obs_time[n_hist - 1])
            cut_knot = 0 if n_hist == 0 else int(rec["record_of_obs"][n_hist - 1]) + 1
            end_time = t_cut + (0.0 if history_at_end else config.horizon)
            future = np.arange(n_hist, n_obs)
            future = future[subject.obs_time[future] <= end_time]
            if not history_at_end and future.size == 0:
                continue
            last_knot = max(cut_knot, int(np.searchsorted(rec["knot_time"][1:], end_time, side="right")))
            doses = np.flatnonzero(subject.dose_time <= end_time)
            rows.append(
                {
                    "subject": s_index,
                    "n_history": n_hist,
                    "start": rec["start"],
                    "cut": t_cut,
                    "knot_time": rec["knot_time"][: last_knot + 1],
                    "knot_value": rec["channels"][: last_knot + 1],
                    "cut_index": cut_knot,
                    "target_time": subject.obs_time[future] - t_cut,
                    "target_value": subject.obs_value[future],
                    "target_obs": rec["obs_index"][future],
                    "dose_time": subject.dose_time[doses] - t_cut,
                    "dose_index": rec["dose_index"][doses],
                    "dose_amount": subject.dose_amount[doses],
                    "dose_rate": subject.dose_rate[doses],
                    "covariates": cov,
                }
            )
    return _stack(rows, tuple(s.id for s in subjects), config)


def _stack(rows: list[dict], ids: tuple[str, ...], config: NeuralConfig) -> WindowSet:
    n = len(rows)
    k = max([r["knot_time"].size for r in rows], default=1)
    f = max([r["target_time"].size for r in rows] + [1])
    e = max([r["dose_time"].size for r in rows] + [1])
    knot_time = np.zeros((n, k))
    knot_value = np.zeros((n, k, config.n_channels), dtype=np.float32)
    target = {name: np.zeros((n, f)) for name in ("time", "value")}
    target_obs = np.zeros((n, f), dtype=np.int64)
    target_rank = np.zeros((n, f), dtype=np.int64)
    target_mask = np.zeros((n, f), dtype=bool)
    dose = {name: np.zeros((n, e)) for name in ("time", "amount", "rate")}
    dose_index = np.zeros((n, e), dtype=np.int64)
    dose_mask = np.zeros((n, e), dtype=bool)
    for i, r in enumerate(rows):
        m = r["knot_time"].size
        knot_time[i, :m], knot_time[i, m:] = r["knot_time"], r["knot_time"][-1]
        knot_value[i, :m], knot_value[i, m:] = r["knot_value"], r["knot_value"][-1]
        m = r["target_time"].size
        target["time"][i, :m] = r["target_time"]
        target["value"][i, :m] = r["target_value"]
        target_obs[i, :m] = r["target_obs"]
        target_rank[i, :m] = np.arange(1, m + 1)
        target_mask[i, :m] = True
        m = r["dose_time"].size
        dose["time"][i, :m], dose["amount"][i, :m], dose["rate"][i, :m] = (
            r["dose_time"],
            r["dose_amount"],
            r["dose_rate"],
        )
        dose_index[i, :m] = r["dose_index"]
        dose_mask[i, :m] = True

    def col(name: str, dtype: type) -> np.ndarray:
        return np.array([r[name] for r in rows], dtype=dtype).reshape(n)

    return WindowSet(
        subject_ids=ids,
        subject=col("subject", np.int64),
        n_history=col("n_history", np.int64),
        start_time=col("start", np.float64),
        cut_time=col("cut", np.float64),
        knot_time=knot_time,
        knot_value=knot_value,
        cut_index=col("cut_index", np.int64),
        last_index=np.array([r["knot_time"].size - 1 for r in rows], dtype=np.int64).reshape(n),
        target_time=target["time"],
        target_value=target["value"],
        target_obs=target_obs,
        target_rank=target_rank,
        target_mask=target_mask,
        dose_time=dose["time"],
        dose_index=dose_index,
        dose_amount=dose["amount"],
        dose_rate=dose["rate"],
        dose_mask=dose_mask,
        covariates=np.stack([r["covariates"] for r in rows]).reshape(n, len(config.covariates)).astype(np.float32)
        if n
        else np.zeros((0, len(config.covariates)), np.float32),
    )
