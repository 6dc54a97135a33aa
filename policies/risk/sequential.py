"""A sequential chance-constraint test that may stop early, with a time-uniform error guarantee.

Method: testing by betting (Waudby-Smith & Ramdas 2024, "Estimating means of bounded random
variables by betting", JRSSB 86:1, §3-4; Shafer 2021 for the betting view). Observations
``X_1, X_2, ...`` in [0, 1] arrive one by one (per-patient bridge violation probabilities, or
0/1 outcomes). Two wealth processes bet against the two one-sided nulls::

    PASS side, H0: mean >= eps:   K_t = prod_i (1 + lam_i (eps - X_i)),  0 <= lam_i <= c / (1 - eps)
    FAIL side, H0: mean <= eps:   L_t = prod_i (1 + nu_i (X_i - eps)),   0 <= nu_i <= c / eps

Under its null each process is a non-negative supermartingale with initial value 1, so by
Ville's inequality P(sup_t K_t >= 1/delta) <= delta: declaring PASS the first time
``K_t >= 1/delta`` (or FAIL when ``L_t >= 1/delta``) has type-I error at most delta *however
often one looks*, which is what lets the evaluation stop as soon as the evidence suffices.
The bets are predictable (they use only past observations): the aGRAPA plug-in
``lam = (eps - m) / (v + (eps - m)^2)`` clipped to the bounds above, with running mean ``m``
and variance ``v`` shrunk towards (1/2, 1/4) as in Waudby-Smith & Ramdas (2024, eq. 26);
``c = 1/2`` keeps a margin from ruin.

The observations must be independent with a common mean; patients sharing a posterior draw are
not, so :func:`sequential_test` is fed per-draw means when patients are clustered by draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_C = 0.5
_METHOD = "betting supermartingale (aGRAPA bets) + Ville's inequality"


@dataclass(frozen=True)
class SequentialResult:
    """Outcome of the sequential test on the observations in the order they arrived.

    Attributes
    ----------
    decision : str
        ``"PASS"``, ``"FAIL"`` or ``"UNDECIDED"`` (no boundary crossed: keep simulating).
    stopped_at : int
        Number of units used when the decision was reached (all units if undecided).
    n_units : int
        Units available.
    unit : str
        ``"patient"`` or ``"posterior draw"`` (per-draw means of its patients).
    patients_used : int
        Patients behind the ``stopped_at`` units.
    log_wealth_pass, log_wealth_fail : float
        Log wealth of the two bettors at the stop; a decision needs ``log(1/delta)``.
    epsilon, delta : float
    method : str
    """

    decision: str
    stopped_at: int
    n_units: int
    unit: str
    patients_used: int
    log_wealth_pass: float
    log_wealth_fail: float
    epsilon: float
    delta: float
    method: str = _METHOD


def _bets(x: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Predictable aGRAPA bets for the PASS and FAIL bettors; ``x`` (R, T), time on axis 1."""
    t = np.arange(x.shape[1], dtype=float)
    s1 = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x, axis=1)[:, :-1]], axis=1)
    s2 = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x**2, axis=1)[:, :-1]], axis=1)
    m = (0.5 + s1) / (t + 1.0)
    # Shrunk running variance: (1/4 + sum (x - m)^2) / (t + 1), expanded with the running sums.
    v = (0.25 + s2 - 2.0 * m * s1 + t * m**2) / (t + 1.0)
    v = np.maximum(v, 1e-12)
    gap = epsilon - m
    raw = gap / (v + gap**2)
    lam = np.clip(raw, 0.0, _C / (1.0 - epsilon))
    nu = np.clip(-raw, 0.0, _C / epsilon)
    return lam, nu


def log_wealth(x: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Log wealth paths ``(log K_t, log L_t)`` for observations ``x`` (T,) or (R, T) in [0, 1]."""
    x = np.atleast_2d(np.asarray(x, float))
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError("sequential test observations must lie in [0, 1]")
    lam, nu = _bets(x, epsilon)
    return np.cumsum(np.log1p(lam * (epsilon - x)), axis=1), np.cumsum(np.log1p(nu * (x - epsilon)), axis=1)


def first_crossing(x: np.ndarray, *, epsilon: float, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Decision (+1 PASS, -1 FAIL, 0 none) and stopping index (1-based; T if none) per row of ``x`` (R, T)."""
    x = np.atleast_2d(np.asarray(x, float))
    r, t = x.shape
    if t == 0:
        return np.zeros(r, int), np.zeros(r, int)
    lk, ll = log_wealth(x, epsilon)
    bar = np.log(1.0 / delta)
    hit_pass, hit_fail = lk >= bar, ll >= bar
    first_pass = np.where(hit_pass.any(axis=1), hit_pass.argmax(axis=1), t)
    first_fail = np.where(hit_fail.any(axis=1), hit_fail.argmax(axis=1), t)
    decision = np.where(first_pass < first_fail, 1, np.where(first_fail < first_pass, -1, 0))
    stop = np.minimum(first_pass, first_fail)
    return decision, np.where(decision == 0, t, stop + 1)


def sequential_test(p: np.ndarray, draw: np.ndarray | None, *, epsilon: float, delta: float) -> SequentialResult:
    """Run the sequential test over patients (or posterior draws) in their simulation order.

    Parameters
    ----------
    p : (N,) float in [0, 1]
        Per-patient violation probability (or 0/1 outcome), in the order patients were simulated.
    draw : (N,) int or None
        Posterior-draw index; when several patients share draws, units are per-draw means in
        order of first appearance (draws are the independent units).
    epsilon, delta : float
        Chance level and error level of each one-sided decision.
    """
    p = np.asarray(p, float)
    n = p.size
    unit = "patient"
    counts = np.ones(n, int)
    if draw is not None:
        draw = np.asarray(draw, int)
        clustered = draw >= 0
        labels, first, codes = np.unique(np.where(clustered, draw, -1 - np.arange(n)), True, True)
        if labels.size < n:
            order = np.argsort(first, kind="stable")
            counts = np.bincount(codes, minlength=labels.size)
            means = np.bincount(codes, weights=p, minlength=labels.size) / counts
            p, counts, unit = means[order], counts[order], "posterior draw"
    decision, stop = first_crossing(p[None, :], epsilon=epsilon, delta=delta)
    k = int(stop[0])
    lk, ll = log_wealth(p[:k], epsilon) if k else (np.zeros((1, 1)), np.zeros((1, 1)))
    return SequentialResult(
        decision={1: "PASS", -1: "FAIL", 0: "UNDECIDED"}[int(decision[0])],
        stopped_at=k,
        n_units=int(p.size),
        unit=unit,
        patients_used=int(counts[:k].sum()),
        log_wealth_pass=float(lk[0, -1]),
        log_wealth_fail=float(ll[0, -1]),
        epsilon=float(epsilon),
        delta=float(delta),
    )
