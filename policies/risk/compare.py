"""Comparing policies evaluated on the same virtual patients (common random numbers).

When two rollouts share the patients, their parameters, initial states and noise streams
(``medsim.policies.rollout.rollout_many``), the per-patient risk difference ``p_n^A - p_n^B`` cancels
most of the between-patient variability: its standard error (cluster-robust over draws) is far
smaller than the unpaired ``sqrt(SE_A^2 + SE_B^2)``. Rollouts are taken as paired when they have
the same seed, the same number of patients and the same draw labels; otherwise the comparison
falls back to the unpaired SE and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsim.policies.result import RolloutResult
from medsim.policies.risk import intervals
from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.quantiles import t_ppf


@dataclass(frozen=True)
class PairedComparison:
    """Difference ``A - B`` in joint violation probability (bridge) and in efficacy metrics.

    Attributes
    ----------
    policy_a, policy_b : str
    paired : bool
        Whether common random numbers could be used.
    risk_difference : Estimate
        ``P_A - P_B`` with the SE used (paired if ``paired``).
    se_paired, se_unpaired : float
        Both standard errors (``se_paired`` nan when unpaired).
    efficacy_difference : dict str -> Estimate
        ``A - B`` for each efficacy metric both rollouts report.
    """

    policy_a: str
    policy_b: str
    paired: bool
    risk_difference: Estimate
    se_paired: float
    se_unpaired: float
    efficacy_difference: dict[str, Estimate]


def is_paired(a: RolloutResult, b: RolloutResult) -> bool:
    """Same seed, same patients, same draw labels: the rollouts used common random numbers."""
    return (
        a.seed == b.seed
        and a.n_patients == b.n_patients
        and np.array_equal(np.asarray(a.draw), np.asarray(b.draw))
        and np.array_equal(np.asarray(a.subject), np.asarray(b.subject))
    )


def _difference(
    xa: np.ndarray,
    xb: np.ndarray,
    cla: np.ndarray,
    clb: np.ndarray,
    paired: bool,
    *,
    level: float,
    seed: int | None,
    probability: bool = True,
) -> tuple[Estimate, float, float]:
    sa = intervals.standard_errors(xa, cla)
    sb = intervals.standard_errors(xb, clb)
    se_unpaired = float(np.hypot(sa.honest, sb.honest))
    diff = float(sa.mean - sb.mean)
    if paired:
        sd = intervals.standard_errors(xa - xb, cla)
        se, df, se_paired, method = float(sd.honest), sd.df, float(sd.honest), "paired clt-cluster"
    else:
        se, df, se_paired, method = se_unpaired, min(sa.df, sb.df), np.nan, "unpaired clt"
    half = float(t_ppf(0.5 + level / 2.0, df)) * se
    if not (half > 0 and np.isfinite(half)):
        why = (
            "one patient: no spread to estimate a standard error from"
            if sa.n < 2
            else "the difference is the same for every patient: no spread to estimate a standard error from"
        )
        return Estimate.without_interval(diff, sa.n, method, why, seed, level, se), se_paired, se_unpaired
    # a difference of two probabilities lies in [-1, 1]; other quantities (efficacy metrics in
    # mg/dL or hours) are not clipped
    low, high = (max(diff - half, -1.0), min(diff + half, 1.0)) if probability else (diff - half, diff + half)
    est = Estimate(diff, low, high, sa.n, method, seed, level, se)
    return est, se_paired, se_unpaired


def compare(
    a: RolloutResult,
    b: RolloutResult,
    pa: np.ndarray,
    pb: np.ndarray,
    *,
    level: float,
) -> PairedComparison:
    """Compare rollouts ``a`` and ``b`` given their per-patient joint risks ``pa``, ``pb`` (N,)."""
    paired = is_paired(a, b)
    cla, clb = np.asarray(a.draw, int), np.asarray(b.draw, int)
    kw = {"level": level, "seed": a.seed}
    risk, se_p, se_u = _difference(np.asarray(pa, float), np.asarray(pb, float), cla, clb, paired, **kw)
    eff = {}
    for name in sorted(set(a.efficacy) & set(b.efficacy)):
        ea = np.asarray(a.efficacy[name], float)
        eb = np.asarray(b.efficacy[name], float)
        eff[name] = _difference(ea, eb, cla, clb, paired, probability=False, **kw)[0]
    return PairedComparison(a.policy, b.policy, paired, risk, se_p, se_u, eff)
