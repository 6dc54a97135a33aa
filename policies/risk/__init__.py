"""Chance-constraint risk estimation from closed-loop rollouts.

Owns the estimators that turn a :class:`policies.result.RolloutResult` and a
:class:`policies.spec.SafetySpec` into numbers with intervals: the probability of leaving the
safe set over the horizon (seen at measurements / on the sub-step grid / bridge-corrected in
continuous time), its split into at-measurement and between-measurement violations, its curve
over time, the epistemic/aleatoric split across posterior draws, the chance-constraint verdict
(fixed-sample and sequential), time to first violation, depth, duration and expected cost, the
tightening margin a check at interaction times would need, the out-of-support flag, paired
policy comparisons, and the :class:`RiskReport` that collects them.

Pure numpy/scipy with explicit patient axes. May import ``medsim`` (types only),
``policies.result`` and ``policies.spec``; never ``inference`` or rendering code.
"""

from policies.risk.compare import PairedComparison
from policies.risk.curve import RiskCurve
from policies.risk.epistemic import EpistemicSplit
from policies.risk.estimate import Estimate
from policies.risk.events import PatientEvents, SpecMismatchError, patient_events
from policies.risk.first_violation import FirstViolation
from policies.risk.margin import TighteningMargin
from policies.risk.probability import ViolationProbability
from policies.risk.provenance import FitDiagnostics, Provenance, make_provenance
from policies.risk.report import PolicyRisk, RiskReport, policy_risk, risk_report
from policies.risk.sequential import SequentialResult, sequential_test
from policies.risk.severity import JointCost, Severity
from policies.risk.support import SupportFlag
from policies.risk.verdict import Verdict, verdict

__all__ = [
    "EpistemicSplit",
    "Estimate",
    "FirstViolation",
    "FitDiagnostics",
    "JointCost",
    "PairedComparison",
    "PatientEvents",
    "PolicyRisk",
    "Provenance",
    "RiskCurve",
    "RiskReport",
    "SequentialResult",
    "Severity",
    "SpecMismatchError",
    "SupportFlag",
    "TighteningMargin",
    "Verdict",
    "ViolationProbability",
    "make_provenance",
    "patient_events",
    "policy_risk",
    "risk_report",
    "sequential_test",
    "verdict",
]
