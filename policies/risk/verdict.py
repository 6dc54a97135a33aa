"""The chance-constraint verdict: is P(violation) <= epsilon, with confidence 1 - delta?

The verdict is read off one-sided (1 - delta) confidence bounds on the joint, bridge-corrected
violation probability (:mod:`medsim.policies.risk.events`; cluster-robust SE, zero-event floor):

* PASS      when the upper bound <= epsilon;
* FAIL      when the lower bound > epsilon;
* UNDECIDED otherwise, with the number of additional patients that would make the interval
  narrow enough at the current estimate: the standard error shrinks like 1/sqrt(n) at the
  current patients-per-draw layout, so ``n_needed = n (z SE / |p - epsilon|)^2``; when the
  estimate is below epsilon, also enough effective patients for the zero-event floor
  ``1 - delta^(1/n_eff)`` to fall below epsilon. It is a planning figure, not a guarantee.

A verdict is only as honest as the model behind it: :func:`gated` applies the model's
calibration gate (:class:`medsim.models.gate.CalibrationGate`). A model that failed it gets no
PASS — the verdict becomes UNDECIDED and its statement leads with MISCALIBRATED and the gate's
figures — unless the gate was overridden (``--force``), which the statement then says; a model
whose calibration was never checked keeps its verdict with that said in the statement.

The fixed-sample verdict is valid for the sample size chosen in advance. Looking at results and
adding patients until the verdict comes out PASS would inflate the error; for that use the
sequential test (:mod:`medsim.policies.risk.sequential`), whose error holds at every look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medsim.models.gate import CalibrationGate
from medsim.policies.risk import intervals
from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.quantiles import norm_ppf


@dataclass(frozen=True)
class Verdict:
    """Chance-constraint verdict for one policy.

    Attributes
    ----------
    decision : str
        ``"PASS"``, ``"FAIL"`` or ``"UNDECIDED"``.
    epsilon, delta : float
    estimate : Estimate
        Joint bridge estimate whose ``lower``/``upper`` are the one-sided (1 - delta) bounds
        (a two-sided interval at level 1 - 2 delta).
    additional_patients : int or None
        For UNDECIDED: estimated extra patients needed to decide (None if the estimate sits
        exactly at epsilon, where no finite number suffices).
    statement : str
        The verdict in words.
    """

    decision: str
    epsilon: float
    delta: float
    estimate: Estimate
    additional_patients: int | None
    statement: str


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def verdict(p: np.ndarray, draw: np.ndarray | None, *, epsilon: float, delta: float, seed: int | None) -> Verdict:
    """Chance-constraint verdict from per-patient violation probabilities.

    Parameters
    ----------
    p : (N,) float in [0, 1]
        Joint bridge violation probability per patient.
    draw : (N,) int or None
        Posterior-draw index (clusters).
    epsilon, delta : float
        Chance level and one minus the confidence.
    seed : int or None
        The rollout seed (recorded in the estimate).
    """
    level = 1.0 - 2.0 * delta
    se, lo, hi = intervals.mean_bounds(np.asarray(p, float), draw, level=level, unit_interval=True)
    method = "clt-cluster one-sided" if 2 <= se.n_clusters < se.n else "clt one-sided"
    est = Estimate(float(se.mean), float(lo), float(hi), se.n, method, seed, 1.0 - delta, float(se.honest))
    conf = _pct(1.0 - delta)
    extra: int | None = None
    if est.upper <= epsilon:
        decision = "PASS"
        statement = f"PASS: P(violation) <= {_pct(epsilon)} with {conf} confidence (upper bound {_pct(est.upper)})"
    elif est.lower > epsilon:
        decision = "FAIL"
        statement = (
            f"FAIL: P(violation) > {_pct(epsilon)} with {conf} confidence (lower bound {_pct(est.lower)}); "
            f"the chance constraint is violated"
        )
    else:
        decision = "UNDECIDED"
        extra = additional_patients(est, se.design_effect, epsilon=epsilon, delta=delta)
        more = "no finite number of patients decides it" if extra is None else f"about {extra:,} more patients needed"
        statement = (
            f"UNDECIDED: P(violation) = {_pct(est.value)} [{_pct(est.lower)}, {_pct(est.upper)}]; cannot tell "
            f"whether it is <= {_pct(epsilon)} with {conf} confidence ({more})"
        )
    return Verdict(decision, float(epsilon), float(delta), est, extra, statement)


def additional_patients(est: Estimate, design_effect: float, *, epsilon: float, delta: float) -> int | None:
    """Extra patients for the one-sided (1 - delta) bound to clear epsilon at the current estimate."""
    gap = abs(est.value - epsilon)
    if gap == 0.0 or not math.isfinite(est.se):
        return None
    z = norm_ppf(1.0 - delta)
    needed = est.n * (z * est.se / gap) ** 2
    if est.value < epsilon:
        needed = max(needed, float(design_effect) * math.log(delta) / math.log1p(-epsilon))
    return max(1, math.ceil(needed - est.n))


def gated(v: Verdict, gate: CalibrationGate | None, *, forced: bool = False) -> Verdict:
    """``v`` under the model's calibration gate (see the module docstring).

    Parameters
    ----------
    v : Verdict
    gate : CalibrationGate or None
        None: the caller said nothing about calibration (the verdict is returned unchanged).
    forced : bool
        The gate was overridden by the user (``--force``).
    """
    from dataclasses import replace

    if gate is None or gate.passed:
        return v
    if gate.status == "not_checked":
        return replace(v, statement=f"{v.statement} (model calibration not checked on held-out data)")
    if forced:
        return replace(v, statement=f"{v.statement} (MISCALIBRATED model: calibration gate overridden with --force)")
    if v.decision != "PASS":
        return replace(v, statement=f"MISCALIBRATED model: {v.statement}")
    statement = (
        f"MISCALIBRATED model, no PASS: the chance constraint reads P(violation) <= {_pct(v.epsilon)} (upper bound "
        f"{_pct(v.estimate.upper)}), but the model failed its held-out calibration gate, so that bound cannot be "
        "trusted (see the calibration warning; --force overrides, recorded)"
    )
    return replace(v, decision="UNDECIDED", additional_patients=None, statement=statement)
