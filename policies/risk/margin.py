"""The tightening margin a constraint checked only at interaction times would need.

Safe RL with limited interactions keeps the continuous trajectory safe by checking a *tightened*
constraint at each interaction: ``x(t_k) <= b - margin`` instead of ``x(t_k) <= b``, with the
margin a high-probability bound on how far the state moves before the next interaction
(Lipschitz constant x interval length in the interaction-limited safe continuous-time RL
setting). Here the margin is measured from the simulated paths.

For every interaction interval (all patients pooled) the excursion beyond the starting value is

    upper bound:  obs_max - true_start        lower bound:  true_start - obs_min

(noise-free observable at the interaction vs the extreme over the interval's sub-step grid,
observable's unit). Its (1 - delta) quantile is the margin that keeps a single interval inside
with probability 1 - delta; the reported upper end is a distribution-free one-sided (1 - delta)
confidence bound from order statistics (binomial ranks). The order-statistic bound treats
intervals as independent; intervals of one patient are correlated, so the bound is read as
approximate when patients contribute many intervals each.

For comparison, a Lipschitz rule ``margin = L * dt`` with ``L`` the (1 - delta) quantile of
the excursion rate (excursion / interval length), evaluated at the median interval length. The
rule fits drift-dominated motion; diffusive motion moves like sqrt(dt), so a linear rule
over-shoots long intervals once it covers short ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsim.policies.result import RolloutResult
from medsim.policies.risk import intervals
from medsim.policies.risk.estimate import Estimate
from medsim.policies.spec import SafetySpec


@dataclass(frozen=True)
class TighteningMargin:
    """Margin for one bound, in the observable's unit.

    Attributes
    ----------
    bound : str
    quantile : float
        ``1 - delta``.
    margin : Estimate
        Empirical (1 - delta) quantile of the per-interval excursion; ``upper`` is the one-sided
        (1 - delta) order-statistic confidence bound (n = intervals).
    lipschitz_margin : Estimate
        ``L * median interval length`` (L's order-statistic interval carried over).
    lipschitz_rate : Estimate
        ``L`` in observable unit per time unit.
    median_interval : float
        Median interaction interval length (model time unit).
    """

    bound: str
    quantile: float
    margin: Estimate
    lipschitz_margin: Estimate
    lipschitz_rate: Estimate
    median_interval: float


def tightening_margins(result: RolloutResult, spec: SafetySpec, *, seed: int | None) -> tuple[TighteningMargin, ...]:
    """Per-bound tightening margins of ``result`` at the spec's ``1 - delta`` quantile."""
    mask = np.asarray(result.mask, bool)
    dt = (np.asarray(result.t_end, float) - np.asarray(result.t_start, float))[mask]
    q = 1.0 - spec.delta
    level = 1.0 - 2.0 * spec.delta  # two-sided at 1 - 2 delta = one-sided (1 - delta) at each end
    med = float(np.median(dt)) if dt.size else np.nan
    out = []
    for b in spec.bounds:
        start = np.asarray(result.true_start[b.observable], float)[mask]
        if b.side == "upper":
            move = np.asarray(result.obs_max[b.observable], float)[mask] - start
        else:
            move = start - np.asarray(result.obs_min[b.observable], float)[mask]
        ok = np.isfinite(move) & (dt > 0)
        move, length = np.maximum(move[ok], 0.0), dt[ok]
        margin = intervals.quantile(move, q, level=level, seed=seed, method="order-statistic one-sided")
        rate = intervals.quantile(move / length, q, level=level, seed=seed, method="order-statistic one-sided")
        lip = Estimate(
            rate.value * med,
            rate.lower * med,
            rate.upper * med,
            rate.n,
            "lipschitz rule",
            seed,
            level,
            no_interval=rate.no_interval,
        )
        out.append(TighteningMargin(b.name, q, margin, lip, rate, med))
    return tuple(out)
