"""The frozen result every rare-event estimator returns, and the interval over independent replicas."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medsim.policies.risk.estimate import Estimate, encode_float
from medsim.policies.risk.quantiles import t_ppf


@dataclass(frozen=True)
class RareEstimate:
    """A rare-event probability with its interval and what it cost.

    Attributes
    ----------
    probability : Estimate
        ``p = E[crossing]`` with its interval. ``n`` is the number of independent replicas
        (splitting, subset simulation) or of weighted paths (importance sampling).
    relative_error : float
        Estimated standard error over the value (nan at a zero estimate).
    path_equivalents : float
        Full-length paths simulated, all replicas and stages together (a resampled path counts
        as one whole path).
    estimator : str
        ``"ams"``, ``"subset"`` or ``"is"``.
    problem : str
        The path problem's name.
    replicas : tuple of float
        Each independent replica's estimate (splitting, subset simulation).
    levels : tuple of float
        The level (score) sequence of the first replica (splitting, subset simulation).
    iterations : float
        Mean number of iterations (splitting) or levels (subset simulation) per replica.
    ess : float
        Effective sample size of the importance weights, ``(sum w q)^2 / sum (w q)^2`` (nan for
        the other estimators).
    control : tuple of float
        Importance sampling: the fitted control's coefficients per channel (intercept, slope).
    extinct : int
        Splitting: replicas whose paths all tied at a level below the event (killed together,
        estimate 0). Still unbiased, but a sign that the score is too coarse (e.g. a score that
        only changes at a few interactions).
    """

    probability: Estimate
    relative_error: float
    path_equivalents: float
    estimator: str
    problem: str
    replicas: tuple[float, ...] = ()
    levels: tuple[float, ...] = ()
    iterations: float = math.nan
    ess: float = math.nan
    control: tuple[float, ...] = ()
    extinct: int = 0

    @property
    def value(self) -> float:
        return self.probability.value

    def to_dict(self) -> dict:
        return {
            "probability": self.probability.to_dict(),
            "relative_error": encode_float(self.relative_error),
            "path_equivalents": float(self.path_equivalents),
            "estimator": self.estimator,
            "problem": self.problem,
            "replicas": [encode_float(x) for x in self.replicas],
            "levels": [encode_float(x) for x in self.levels],
            "iterations": encode_float(self.iterations),
            "ess": encode_float(self.ess),
            "control": [encode_float(x) for x in self.control],
            "extinct": self.extinct,
        }


@dataclass(frozen=True)
class RareRisk:
    """The rare-event estimate of one bound's violation probability for one policy.

    Attributes
    ----------
    bound : str
        The bound's name.
    reason : str
        Why splitting was used (the plain count below the threshold, or ``rare=ams``).
    plain_violations : int
        Patients with a crossing in the plain run.
    budget : float
        Path-equivalents allowed for this bound.
    estimate : RareEstimate or None
        The splitting estimate (the first draw's, with several draws); ``None`` when it could
        not be estimated.
    probability : Estimate or None
        The violation probability with its interval (two-sided at ``1 - 2 delta``, so its upper
        end is the one-sided ``1 - delta`` bound the verdict uses); over posterior draws when
        ``n_draws >= 2``.
    relative_error : float
    path_equivalents : float
        Spent, all replicas and draws together.
    n_draws : int
        Posterior draws with their own splitting run (1: the population's patients pooled).
    epistemic_share : float
        Share of the violation variance due to the posterior (nan with one draw).
    extinct : int
        Extinct replicas, all draws together.
    failure : str
        Why it could not be estimated ("" when it was).
    """

    bound: str
    reason: str
    plain_violations: int
    budget: float
    estimate: RareEstimate | None
    probability: Estimate | None
    relative_error: float
    path_equivalents: float
    n_draws: int = 1
    epistemic_share: float = math.nan
    extinct: int = 0
    failure: str = ""

    @property
    def estimated(self) -> bool:
        return self.probability is not None and not self.failure


def replica_interval(values: np.ndarray, *, level: float, seed: int, method: str) -> tuple[Estimate, float]:
    """Mean of independent unbiased replica estimates with a log-scale t interval.

    The replicas are i.i.d. and unbiased, so their mean ``m`` is asymptotically normal (each
    splitting replica also satisfies a CLT in its number of paths: Bréhier, Lelièvre & Rousset
    2015, ESAIM:PS 19:361); the variance is estimated from the replicas, which needs no model of
    the algorithm. A replica's estimate is right-skewed (a product of per-level survival shares),
    so the interval is the delta-method one for ``log p``: ``m exp(+-t se / m)``, which covers
    closer to its nominal level than the symmetric one with few replicas (docs/rare_events.md).
    With fewer than two replicas, or all equal, the estimate says that it has no interval.
    """
    values = np.asarray(values, dtype=float)
    r = values.size
    m = float(values.mean())
    if r < 2 or not np.ptp(values) > 0:
        why = "one replica" if r < 2 else f"all {r} replicas equal {m:g}"
        reason = f"{why}: no spread to estimate a standard error from"
        return Estimate.without_interval(m, r, method, reason, seed, level), math.nan
    se = float(values.std(ddof=1) / math.sqrt(r))
    if not m > 0:
        return Estimate.without_interval(m, r, method, "mean of the replicas is 0", seed, level, se), math.nan
    factor = math.exp(float(t_ppf(0.5 + level / 2.0, r - 1)) * se / m)
    return Estimate(m, m / factor, m * factor, r, method, seed, level, se), se / m
