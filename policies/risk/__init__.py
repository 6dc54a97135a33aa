"""Chance-constraint risk estimation from closed-loop rollouts.

Owns the estimators that turn a :class:`medsim.policies.result.RolloutResult` and a
:class:`medsim.policies.spec.SafetySpec` into numbers with intervals: the probability of leaving the
safe set over the horizon (seen at measurements / on the sub-step grid / bridge-corrected in
continuous time), its split into at-measurement and between-measurement violations, its curve
over time, the epistemic/aleatoric split across posterior draws, the chance-constraint verdict
(fixed-sample and sequential), time to first violation, depth, duration and expected cost, the
tightening margin a check at interaction times would need, the out-of-support flag, paired
policy comparisons, and the :class:`RiskReport` that collects them.

Pure numpy/scipy with explicit patient axes. May import ``medsim`` (types only),
``medsim.policies.result`` and ``medsim.policies.spec``; never ``inference`` or rendering code.
Quantiles of the normal, t, beta and binomial distributions come from
:mod:`medsim.policies.risk.quantiles` (``scipy.special``): importing ``scipy.stats`` would add
~0.5 s to every ``medsim risk`` run (``tests/cli/test_risk_imports.py`` fails if it comes back).
"""

from medsim.policies.risk.compare import PairedComparison
from medsim.policies.risk.curve import RiskCurve
from medsim.policies.risk.epistemic import EpistemicSplit
from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.events import PatientEvents, SpecMismatchError, patient_events
from medsim.policies.risk.failed import FailedPatients
from medsim.policies.risk.first_violation import FirstViolation
from medsim.policies.risk.margin import TighteningMargin
from medsim.policies.risk.probability import ViolationProbability
from medsim.policies.risk.provenance import FitDiagnostics, Provenance, make_provenance
from medsim.policies.risk.report import PolicyRisk, RiskReport, policy_risk, risk_report
from medsim.policies.risk.sequential import SequentialResult, sequential_test
from medsim.policies.risk.severity import JointCost, Severity
from medsim.policies.risk.support import SupportFlag
from medsim.policies.risk.verdict import Verdict, verdict

__all__ = [
    "EpistemicSplit",
    "Estimate",
    "FailedPatients",
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
