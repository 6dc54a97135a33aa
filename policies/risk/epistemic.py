"""Epistemic vs aleatoric: how much of the violation risk is what the data cannot pin down.

Patients are grouped by posterior draw ``d`` (same parameters' epistemic part). For each draw,
``p(theta_d)`` = mean of its patients' bridge violation probabilities estimates the risk *if the
world were that draw*. Across draws this gives the epistemic distribution of the risk: its
quantiles and the posterior probability that the risk exceeds epsilon.

Variance decomposition of the violation indicator Y (law of total variance)::

    Var(Y) = Var_d(E[Y | d]) + E_d[Var(Y | d)]        total = epistemic + aleatoric
    Var(Y) = mu (1 - mu)                              (Y is 0/1 with mean mu)

``E[Y | d]`` is only estimated, by ``p_d`` from ``m_d`` patients, so the sample variance of the
``p_d`` over-states the epistemic part by the within-draw Monte Carlo noise ``E_d[s_d^2 / m_d]``
(``s_d^2``: sample variance of the patients' probabilities within draw d). That noise is
subtracted (the one-way random-effects ANOVA estimator; Searle, Casella & McCulloch,
*Variance Components*, 1992, §3.5) and the result clipped at 0; the aleatoric part is the
remainder. Intervals come from a bootstrap over draws (the draws are the independent units).

The quantiles of ``p(theta)`` across draws are those of the estimates ``p_d``; they say something
about the epistemic spread only when that spread exceeds the Monte Carlo noise of each ``p_d``.
When it does not (few patients per draw, e.g. 2), or when the ``p_d`` tie so that the
order-statistic interval collapses to a point (a per-draw mean of 2 patients takes few
values), the quantiles carry no interval and say why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsim.policies.risk import intervals
from medsim.policies.risk.estimate import Estimate


@dataclass(frozen=True)
class EpistemicSplit:
    """Per-draw risk distribution and the variance decomposition.

    Attributes
    ----------
    n_draws : int
    patients_per_draw : float
        Mean number of patients per draw.
    per_draw : tuple of float
        ``p(theta_d)`` for each draw (sorted by draw index).
    quantiles : dict str -> Estimate
        ``"q05"``, ``"q25"``, ``"q50"``, ``"q75"``, ``"q95"`` of ``p(theta)`` across draws
        (order-statistic intervals over draws).
    p_exceeds_epsilon : Estimate
        Share of draws with ``p(theta_d) > epsilon`` (Clopper–Pearson over draws; each
        ``p(theta_d)`` carries Monte Carlo noise of about ``within_draw_se``).
    within_draw_se : float
        Typical Monte Carlo SE of one ``p(theta_d)`` (root mean of ``s_d^2 / m_d``).
    total_variance, epistemic_variance, aleatoric_variance, epistemic_share : Estimate
        The decomposition above (cluster bootstrap intervals).
    noise_corrected : bool
        False when no draw had two patients, so the noise could not be estimated or removed.
    """

    n_draws: int
    patients_per_draw: float
    per_draw: tuple[float, ...]
    quantiles: dict[str, Estimate]
    p_exceeds_epsilon: Estimate
    within_draw_se: float
    total_variance: Estimate
    epistemic_variance: Estimate
    aleatoric_variance: Estimate
    epistemic_share: Estimate
    noise_corrected: bool


def _per_draw(p: np.ndarray, draw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-draw count, mean and (ddof=1) variance of ``p``; variance nan where a draw has 1 patient."""
    labels, codes = np.unique(draw, return_inverse=True)
    m = np.bincount(codes, minlength=labels.size).astype(float)
    s1 = np.bincount(codes, weights=p, minlength=labels.size)
    mean = s1 / m
    ss = np.bincount(codes, weights=(p - mean[codes]) ** 2, minlength=labels.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(m > 1, ss / (m - 1), np.nan)
    return m, mean, var


def _decompose(m: np.ndarray, mean: np.ndarray, within: np.ndarray) -> tuple[np.ndarray, ...]:
    """Vectorised decomposition; leading axes are bootstrap replicates, last axis draws.

    ``within`` is each draw's within-draw variance of the patients' probabilities.
    """
    mu = (m * mean).sum(-1) / m.sum(-1)
    d = mean.shape[-1]
    between = ((mean - mu[..., None]) ** 2).sum(-1) / max(d - 1, 1)
    noise = (within / m).mean(-1)
    epistemic = np.maximum(between - noise, 0.0)
    total = mu * (1.0 - mu)
    aleatoric = np.maximum(total - epistemic, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, epistemic / total, 0.0)
    return total, epistemic, aleatoric, share, noise


def _draw_quantile(
    mean: np.ndarray, q: float, m: np.ndarray, noise: float, *, level: float, seed: int, corrected: bool
) -> Estimate:
    """Quantile of the per-draw risks, without an interval where it would measure noise (module doc)."""
    est = intervals.quantile(mean, q, level=level, seed=seed, method="order-statistic")
    if not est.has_interval:
        return est
    between = float(np.var(mean, ddof=1)) if mean.size > 1 else 0.0
    per = f"{float(m.mean()):.3g} patients per draw"
    if not corrected:
        why = "one patient per draw: each per-draw risk is one patient's, its spread is not only epistemic"
    elif noise >= between:
        se_pp = 100.0 * float(np.sqrt(noise))  # in percentage points, as reports show risks
        se_txt = f"{se_pp:.2g} percentage points" if se_pp >= 0.01 else "< 0.01 percentage points"
        why = (
            f"{per}: the Monte Carlo noise of each per-draw risk (SE about {se_txt}) is as large as the spread "
            "between draws"
        )
    elif not est.width > 0:
        ties = int(np.sum(mean == est.value))
        why = (
            f"{ties} of {mean.size} per-draw risks tie at {100 * est.value:.3g}% ({per}): the interval collapses "
            "to a point"
        )
    else:
        return est
    return Estimate.without_interval(est.value, est.n, est.method, why, seed, level)


def epistemic_split(
    p: np.ndarray,
    draw: np.ndarray,
    *,
    epsilon: float,
    level: float,
    seed: int,
    n_bootstrap: int = 400,
) -> EpistemicSplit | None:
    """Split the risk ``p`` (N,) of patients labelled by posterior ``draw`` (N,).

    Returns None when fewer than two posterior draws are represented (nothing to split).

    Parameters
    ----------
    p : (N,) float
        Per-patient violation probability (bridge estimator), in [0, 1].
    draw : (N,) int
        Posterior-draw index (negative = none).
    epsilon : float
        Chance level of the spec.
    level : float
        Confidence level of the intervals.
    seed : int
        Seed of the bootstrap over draws.
    """
    p = np.asarray(p, float)
    draw = np.asarray(draw, int)
    keep = draw >= 0
    if np.unique(draw[keep]).size < 2:
        return None
    m, mean, var = _per_draw(p[keep], draw[keep])
    d = mean.size
    # Draws with a single patient borrow the pooled within-draw variance of the others.
    corrected = bool(np.isfinite(var).any())
    within = np.where(np.isfinite(var), var, np.nanmean(var) if corrected else 0.0)
    total, epistemic, aleatoric, share, noise = _decompose(m, mean, within)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, d, size=(n_bootstrap, d))
    boot = _decompose(m[pick], mean[pick], within[pick])
    a = (1.0 - level) / 2.0

    def est(value: np.ndarray, reps: np.ndarray) -> Estimate:
        lo, hi = np.quantile(reps, [a, 1.0 - a])
        value = float(value)
        if not max(hi, value) > min(lo, value):
            why = f"every bootstrap replicate gives {value:.3g}: the bootstrap shows no uncertainty at this boundary"
            return Estimate.without_interval(value, d, "cluster-bootstrap", why, seed, level, float(reps.std()))
        return Estimate(value, min(lo, value), max(hi, value), d, "cluster-bootstrap", seed, level, float(reps.std()))

    quantiles = {
        f"q{round(q * 100):02d}": _draw_quantile(mean, q, m, noise, level=level, seed=seed, corrected=corrected)
        for q in (0.05, 0.25, 0.5, 0.75, 0.95)
    }
    exceed = intervals.proportion(mean > epsilon, None, level=level, seed=seed)
    return EpistemicSplit(
        n_draws=d,
        patients_per_draw=float(m.mean()),
        per_draw=tuple(float(x) for x in mean),
        quantiles=quantiles,
        p_exceeds_epsilon=exceed,
        within_draw_se=float(np.sqrt(noise)),
        total_variance=est(total, boot[0]),
        epistemic_variance=est(epistemic, boot[1]),
        aleatoric_variance=est(aleatoric, boot[2]),
        epistemic_share=est(share, boot[3]),
        noise_corrected=corrected,
    )
