"""Epistemic outer loop: posterior draws outside, a rare-event estimator inside.

For each posterior draw ``d`` the rare-event estimator gives ``p_d``, the violation probability
if the world were that draw, with its Monte Carlo standard error ``se_d``. Across draws:

* the overall probability ``p = mean_d p_d`` (the posterior predictive probability of a
  violation), with a t interval from the spread of the ``p_d`` over draws (the draws are the
  independent units; their spread includes each ``p_d``'s own noise);
* the split of the violation indicator's variance ``p (1 - p)`` into an epistemic part
  ``Var_d(p_d) - mean_d(se_d^2)`` (the estimators' noise removed, clipped at 0: the one-way
  random-effects estimator of :mod:`medsim.policies.risk.epistemic`) and the aleatoric remainder;
* the share of draws whose risk exceeds ``epsilon``, counted on the per-draw upper bounds too
  (a draw "certified below epsilon" when its interval lies below it).

The problems of all draws share one path function and differ in ``params``, so the estimator
compiles once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsim.policies.risk import intervals
from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.quantiles import t_ppf
from medsim.policies.risk.rare.problem import PathProblem
from medsim.policies.risk.rare.result import RareEstimate


@dataclass(frozen=True)
class RareEpistemic:
    """A rare violation probability over posterior draws.

    Attributes
    ----------
    probability : Estimate
        ``mean_d p_d`` with its t interval over draws (``n`` = draws).
    per_draw : tuple of RareEstimate
    epistemic_variance, aleatoric_variance : float
        The split of ``p (1 - p)`` (module docstring).
    epistemic_share : float
        ``epistemic_variance / (p (1 - p))``.
    p_exceeds_epsilon : Estimate
        Share of draws with ``p_d > epsilon`` (Clopper–Pearson over draws).
    certified_below_epsilon : float
        Share of draws whose interval's upper end is below ``epsilon``.
    path_equivalents : float
        All draws together.
    """

    probability: Estimate
    per_draw: tuple[RareEstimate, ...]
    epistemic_variance: float
    aleatoric_variance: float
    epistemic_share: float
    p_exceeds_epsilon: Estimate
    certified_below_epsilon: float
    path_equivalents: float

    def to_dict(self) -> dict:
        return {
            "probability": self.probability.to_dict(),
            "per_draw": [r.to_dict() for r in self.per_draw],
            "epistemic_variance": self.epistemic_variance,
            "aleatoric_variance": self.aleatoric_variance,
            "epistemic_share": self.epistemic_share,
            "p_exceeds_epsilon": self.p_exceeds_epsilon.to_dict(),
            "certified_below_epsilon": self.certified_below_epsilon,
            "path_equivalents": self.path_equivalents,
        }


def rare_epistemic(
    problem: PathProblem,
    draws: Sequence[Any],
    estimator: Callable[..., RareEstimate],
    *,
    epsilon: float,
    seed: int,
    level: float = 0.95,
    **options: Any,
) -> RareEpistemic:
    """Run ``estimator`` on ``problem`` once per posterior draw and combine (module docstring).

    Parameters
    ----------
    problem : PathProblem
        The path function; its ``params`` are replaced by each draw's.
    draws : sequence of pytrees
        ``params`` of each posterior draw (``D >= 2`` of them).
    estimator : callable
        :func:`~medsim.policies.risk.rare.ams.ams`, :func:`~medsim.policies.risk.rare.subset.subset_simulation`
        or :func:`~medsim.policies.risk.rare.importance.importance_sampling`.
    epsilon : float
        Chance level of the constraint.
    seed : int
        Draw ``d`` runs with seed ``seed + d`` (independent streams).
    options
        Passed to ``estimator``.

    Raises
    ------
    ValueError
        With fewer than two draws.
    """
    if len(draws) < 2:
        raise ValueError(f"draws: the epistemic split needs at least 2 posterior draws, got {len(draws)}")
    per = tuple(
        estimator(problem.with_params(params), seed=seed + d, level=level, **options) for d, params in enumerate(draws)
    )
    p = np.array([r.value for r in per])
    se = np.array([r.probability.se for r in per])
    n = p.size
    mean = float(p.mean())
    spread = float(p.std(ddof=1))
    method = f"mean over {n} posterior draws of {per[0].estimator} (t interval over draws)"
    if spread > 0:
        half = float(t_ppf(0.5 + level / 2.0, n - 1)) * spread / math.sqrt(n)
        overall = Estimate(mean, max(mean - half, 0.0), mean + half, n, method, seed, level, spread / math.sqrt(n))
    else:
        overall = Estimate.without_interval(mean, n, method, f"all {n} draws gave {mean:g}", seed, level)
    within = float(np.nanmean(se**2)) if np.isfinite(se).any() else 0.0
    epistemic = max(spread**2 - within, 0.0)
    total = mean * (1.0 - mean)
    k = int(np.sum(p > epsilon))
    lo, hi = intervals.clopper_pearson(k, n, level)
    exceeds = Estimate(k / n, float(lo), float(hi), n, "clopper-pearson over draws", seed, level)
    upper = np.array([r.probability.upper for r in per])
    return RareEpistemic(
        probability=overall,
        per_draw=per,
        epistemic_variance=epistemic,
        aleatoric_variance=max(total - epistemic, 0.0),
        epistemic_share=epistemic / total if total > 0 else math.nan,
        p_exceeds_epsilon=exceeds,
        certified_below_epsilon=float(np.mean(upper < epsilon)),
        path_equivalents=float(sum(r.path_equivalents for r in per)),
    )
