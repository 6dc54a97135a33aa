"""The agent's vectors and medsim's protocol: features from an Observation, Options from actions.

One translation, used by the environment (:mod:`medsim.policies.env.core`), by behaviour policies and
by learned policies evaluated in ``medsim risk`` (:mod:`medsim.policies.learned`), so an agent sees and
acts through the same mapping in training and in evaluation.
"""

from __future__ import annotations

import numpy as np

from medsim.policies.env.task import EnvTask, TaskError
from medsim.policies.protocol import Observation, Option


def features(names: tuple[str, ...], obs: Observation, last: np.ndarray, xp=np) -> np.ndarray:
    """The feature vector ``(n, len(names))`` float32 named by ``names`` (:attr:`EnvParams.observation_names`).

    ``measured:<observable>``, ``announced:cmt<c>``, ``last:<treatment label>`` (the column of
    ``last`` in order of appearance), ``time_fraction`` (time / horizon) and
    ``covariate:<name>``. Shared by the environment and by learned policies evaluated in
    ``medsim risk`` (:mod:`medsim.policies.learned`), so a trained agent sees the same features in
    both. A missing measurement reads 0, and so does a noisy one below 0 (features are >= 0).
    ``xp``: numpy, or ``jax.numpy`` inside the compiled environment (:mod:`medsim.policies.env.functional`).

    Raises
    ------
    TaskError
        For a name of no known kind, or a covariate or observable the observation lacks.
    """
    cols, j = [], 0
    for name in names:
        kind, _, what = name.partition(":")
        if kind == "measured" and what in obs.measured:
            cols.append(xp.nan_to_num(xp.asarray(obs.measured[what], np.float64)))
        elif kind == "announced" and what.startswith("cmt"):
            cols.append(xp.asarray(obs.announced.get(int(what[3:]), xp.zeros(obs.n)), np.float64))
        elif kind == "last":
            cols.append(xp.asarray(last, np.float64)[:, j])
            j += 1
        elif name == "time_fraction":
            cols.append(xp.asarray(obs.time, np.float64) / float(obs.horizon))
        elif kind == "covariate" and what in obs.covariates:
            cols.append(xp.asarray(obs.covariates[what], np.float64))
        else:
            raise TaskError(
                f"observation feature {name!r}: not one of measured:<observable>, announced:cmt<c>, last:<treatment>, "
                f"time_fraction, covariate:<name> available here (measured {sorted(obs.measured)}, covariates "
                f"{sorted(obs.covariates)})"
            )
    return xp.maximum(xp.stack(cols, axis=1), 0.0).astype(np.float32)


def option_action(task: EnvTask, option: Option) -> np.ndarray:
    """A medsim :class:`Option` as an action ``(n, treatments + 1)`` (amounts, then the interval).

    Raises
    ------
    TaskError
        When the option doses into a compartment or by a route the task does not declare.
    """
    n = int(np.shape(option.interval)[0])
    declared = {(t.kind, t.cmt) for t in task.treatments}
    for kind, amounts in (("bolus", option.bolus), ("rate", option.rate)):
        for cmt, a in amounts.items():
            if (kind, int(cmt)) not in declared and np.any(np.asarray(a) > 0):
                raise TaskError(f"option gives a {kind} into cmt {cmt}; the task declares {sorted(declared)}")
    cols = [
        np.broadcast_to(np.asarray((option.bolus if t.kind == "bolus" else option.rate).get(t.cmt, 0.0)), (n,))
        for t in task.treatments
    ]
    cols.append(np.asarray(option.interval, np.float64))
    return np.stack(cols, axis=1)


def check_action(task: EnvTask, action: np.ndarray) -> np.ndarray:
    """``action`` as float64 ``(n, treatments + 1)``; raises :class:`TaskError` for a wrong shape or a NaN."""
    a = np.asarray(action, np.float64)
    if a.ndim != 2 or a.shape[1] != len(task.treatments) + 1:
        raise TaskError(f"action: expected shape (n, {len(task.treatments) + 1}) ({task.action_names}), got {a.shape}")
    if np.isnan(a).any():
        raise TaskError(f"action: NaN in row {int(np.flatnonzero(np.isnan(a).any(1))[0])} ({task.action_names})")
    return a


def action_option(task: EnvTask, action: np.ndarray) -> tuple[Option, np.ndarray]:
    """An action ``(n, treatments + 1)`` as an :class:`Option`, clipped to the task's declared bounds.

    Returns the option and, per row, whether clipping changed the action.
    """
    a = check_action(task, action)
    c = np.clip(a, task.action_low.astype(np.float64), task.action_high.astype(np.float64))
    clipped = (c != a).any(axis=1)
    bolus: dict[int, np.ndarray] = {}
    rate: dict[int, np.ndarray] = {}
    for j, t in enumerate(task.treatments):
        target = bolus if t.kind == "bolus" else rate
        target[t.cmt] = target.get(t.cmt, 0.0) + c[:, j]
    return Option(interval=c[:, -1], bolus=bolus, rate=rate), clipped


def action_matrix(task: EnvTask, option: Option) -> np.ndarray:
    """The treatment part of :func:`option_action` (``(n, treatments)``)."""
    return option_action(task, option)[:, :-1]
