"""Treatment policies and their evaluation.

Owns the policy protocol (:mod:`medsim.policies.protocol`), the built-in policies
(:mod:`medsim.policies.builtin`), policy specs and user-policy loading (:mod:`medsim.policies.loading`),
disturbance scenarios (:mod:`medsim.policies.scenarios`), the closed-loop rollout
(:mod:`medsim.policies.rollout`) and its record (:mod:`medsim.policies.result`), safety specifications and the
chance-constraint risk estimators and reports, the reinforcement-learning environments
(:mod:`medsim.policies.env`) and trained agents as policies (:mod:`medsim.policies.learned`). May import
``medsim`` (and read posteriors);
nothing in ``medsim`` or ``inference`` imports it.

Report rendering (matplotlib, HTML) is imported on first use of ``write_report``, so evaluating
policies does not pay for it.
"""

from typing import Any

from medsim.policies.builtin import BUILTINS, PID, TDM, BasalBolus, FixedDose, Flip, SafeTiming
from medsim.policies.loading import FunctionPolicy, PolicySpecError, load_user_policy, parse_policy, policy_factory
from medsim.policies.protocol import MissingObservableError, Observation, Option, Policy, PolicyContext, PolicyError
from medsim.policies.result import RolloutResult
from medsim.policies.risk import Estimate, RiskReport, risk_report
from medsim.policies.rollout import rollout, rollout_many
from medsim.policies.scenarios import Meal, MealScenario, Scenario
from medsim.policies.spec import SafetySpec, SpecError, TargetRange
from medsim.policies.spec_file import parse_spec
from medsim.policies.targets import target_range

__all__ = [
    "BUILTINS",
    "PID",
    "TDM",
    "BasalBolus",
    "Estimate",
    "FixedDose",
    "Flip",
    "FunctionPolicy",
    "Meal",
    "MealScenario",
    "MissingObservableError",
    "Observation",
    "Option",
    "Policy",
    "PolicyContext",
    "PolicyError",
    "PolicySpecError",
    "RiskReport",
    "RolloutResult",
    "SafeTiming",
    "SafetySpec",
    "Scenario",
    "SpecError",
    "TargetRange",
    "load_user_policy",
    "parse_policy",
    "parse_spec",
    "policy_factory",
    "risk_report",
    "rollout",
    "rollout_many",
    "target_range",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name == "write_report":  # lazily: it imports matplotlib
        from medsim.policies.report import write_report

        return write_report
    raise AttributeError(f"module 'medsim.policies' has no attribute {name!r}")
