"""The risk report: every estimate for every policy, their comparison, and provenance.

:func:`risk_report` turns rollouts (one per policy, ideally on common random numbers) and a
safety spec into a :class:`RiskReport`, a frozen dataclass tree that serialises to JSON and
back without loss. Rendering (Markdown, HTML, figures) lives in :mod:`medsim.policies.report`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medsim.policies.result import RolloutResult
from medsim.policies.risk import intervals
from medsim.policies.risk.agp import AmbulatoryProfile, ambulatory_profile
from medsim.policies.risk.codec import from_jsonable, to_jsonable
from medsim.policies.risk.compare import PairedComparison, compare
from medsim.policies.risk.curve import RiskCurve, censoring_time, first_grid_time, risk_curves
from medsim.policies.risk.epistemic import EpistemicSplit, epistemic_split
from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.events import SpecMismatchError, patient_events
from medsim.policies.risk.failed import FailedPatients, failed_patients
from medsim.policies.risk.first_violation import FirstViolation, first_violation
from medsim.policies.risk.glucose import GLUCOSE, GlucoseMetrics, glucose_metrics
from medsim.policies.risk.labels import quantity_names, twin_subject
from medsim.policies.risk.margin import TighteningMargin, tightening_margins
from medsim.policies.risk.probability import ViolationProbability, violation_probabilities
from medsim.policies.risk.provenance import Provenance, make_provenance
from medsim.policies.risk.rare.result import RareRisk
from medsim.policies.risk.sequential import SequentialResult, sequential_test
from medsim.policies.risk.severity import JointCost, Severity, severities
from medsim.policies.risk.support import DEFAULT_THRESHOLD, SupportFlag, support_flag
from medsim.policies.risk.verdict import Verdict, gated, verdict
from medsim.policies.spec import SafetySpec, convert_time
from medsim.policies.streamed import StreamedRollout, first_grid_time_of_sums, per_patient_severity

SCHEMA_VERSION = 1
# Fewer posterior draws than this make the cluster-robust SE itself noisy (it has draws - 1
# degrees of freedom); the t reference absorbs part of it, the warning says the rest.
_FEW_DRAWS = 20


@dataclass(frozen=True)
class PolicyRisk:
    """Everything estimated for one policy.

    Attributes
    ----------
    policy : str
    n_patients, n_draws : int
        Virtual patients and distinct posterior draws among them.
    seed : int
    verdict : Verdict
    sequential : SequentialResult
    joint : ViolationProbability
        Any bound violated (seen / grid / bridge, between-measurement split).
    per_bound : tuple of ViolationProbability
    curve : RiskCurve
        P(first violation <= t), any bound.
    curves_per_bound : tuple of RiskCurve
    epistemic : EpistemicSplit or None
    first_violation : tuple of FirstViolation
        Any bound first, then per bound.
    severity : tuple of Severity
    cost : JointCost
    margins : tuple of TighteningMargin
    support : SupportFlag or None
        None only in reports written before unchecked support was recorded as such.
    efficacy : dict str -> Estimate
        Mean of each per-patient efficacy metric of the rollout.
    warnings : tuple of str
    glucose : GlucoseMetrics or None
        Consensus glucose metrics (models with a glucose trace; None otherwise).
    agp : AmbulatoryProfile or None
        Glucose percentiles by time of day (with ``glucose``).
    rare : tuple of RareRisk
        Closed-loop splitting estimate per bound, when the plain estimate saw too few violations
        (or the spec forced it; :mod:`medsim.policies.risk.rare.followup`); empty otherwise.
    failed : FailedPatients or None
        Patients that could not be simulated (``on_failure="count"``), counted as violating every
        bound from their failure on (:mod:`medsim.policies.risk.failed`); None when none failed.
    recorded_patients : int or None
        None: every estimate uses all ``n_patients``. Otherwise the evaluation was streamed
        (:mod:`medsim.policies.streamed`): the risk curves, tightening margins, support flag,
        glucose metrics, AGP and fan charts come from the first ``recorded_patients`` patients,
        whose every interaction was recorded; everything else from all ``n_patients``.
    """

    policy: str
    n_patients: int
    n_draws: int
    seed: int
    verdict: Verdict
    sequential: SequentialResult
    joint: ViolationProbability
    per_bound: tuple[ViolationProbability, ...]
    curve: RiskCurve
    curves_per_bound: tuple[RiskCurve, ...]
    epistemic: EpistemicSplit | None
    first_violation: tuple[FirstViolation, ...]
    severity: tuple[Severity, ...]
    cost: JointCost
    margins: tuple[TighteningMargin, ...]
    support: SupportFlag | None
    efficacy: dict[str, Estimate]
    warnings: tuple[str, ...]
    glucose: GlucoseMetrics | None = None
    agp: AmbulatoryProfile | None = None
    rare: tuple[RareRisk, ...] = ()
    failed: FailedPatients | None = None
    recorded_patients: int | None = None

    @property
    def recorded_note(self) -> str:
        """What a reader must know about the sections computed on recorded patients only ("" if none)."""
        if self.recorded_patients is None:
            return ""
        return (
            f"risk curves, tightening margins, the support flag, glucose metrics, AGP and fan charts come from the "
            f"first {self.recorded_patients} of {self.n_patients} patients (every interaction recorded); the other "
            "estimates from all patients (per-patient sums streamed from the compiled loop)"
        )


@dataclass(frozen=True)
class RiskReport:
    """Risk of one or more policies under one safety spec.

    Attributes
    ----------
    spec : SafetySpec
        The spec, horizon in ``time_unit``.
    time_unit : str
    policies : tuple of PolicyRisk
    comparisons : tuple of PairedComparison
        Every pair of policies (``A - B`` for A listed before B).
    provenance : Provenance
    warnings : tuple of str
        Report-level warnings (fit diagnostics first), loudest first.
    schema_version : int
    units : dict str -> str
        Unit of each observable and efficacy metric (``"%"``: a fraction shown in percent).
    labels : dict str -> str
        Reader name of each efficacy metric (e.g. ``total_dose_cmt1`` -> ``"total insulin"``).
    twin_of : str
        The fitted subject whose digital twins were simulated ("" for a population).
    """

    spec: SafetySpec
    time_unit: str
    policies: tuple[PolicyRisk, ...]
    comparisons: tuple[PairedComparison, ...]
    provenance: Provenance
    warnings: tuple[str, ...]
    schema_version: int = SCHEMA_VERSION
    units: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    twin_of: str = ""

    def policy(self, name: str) -> PolicyRisk:
        """The entry of policy ``name`` (KeyError listing the policies otherwise)."""
        for p in self.policies:
            if p.policy == name:
                return p
        raise KeyError(f"no policy {name!r} in this report; it has {[p.policy for p in self.policies]}")

    @property
    def all_warnings(self) -> tuple[str, ...]:
        """Report-level warnings followed by each policy's, prefixed with the policy name."""
        return self.warnings + tuple(f"{p.policy}: {w}" for p in self.policies for w in p.warnings)

    def to_dict(self) -> dict:
        return to_jsonable(self)

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text (non-finite numbers as the strings "inf", "-inf", "nan")."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RiskReport:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"risk report schema_version {version!r} is not the supported {SCHEMA_VERSION}")
        return from_jsonable(cls, data)

    @classmethod
    def from_json(cls, text: str) -> RiskReport:
        return cls.from_dict(json.loads(text))


def _check_rollout(result: RolloutResult, spec: SafetySpec) -> None:
    unit = result.time_unit
    spec_h = spec.horizon if spec.time_unit is None else convert_time(spec.horizon, spec.time_unit, unit)
    if not math.isclose(spec_h, float(result.horizon), rel_tol=1e-6):
        raise SpecMismatchError(
            f"spec {spec.source}: horizon {spec.horizon:g}{spec.time_unit or ''} = {spec_h:g} {unit}, but policy "
            f"{result.policy!r} was simulated over {result.horizon:g} {unit}"
        )


def policy_risk(
    result: RolloutResult | StreamedRollout,
    spec: SafetySpec,
    *,
    support_threshold: float = DEFAULT_THRESHOLD,
    n_curve: int = 49,
    support_unknown: str | None = None,
) -> tuple[PolicyRisk, np.ndarray]:
    """All estimates for one rollout; also returns the per-patient joint bridge risk (N,).

    Intervals are two-sided at level ``1 - delta`` unless an estimate says otherwise (the verdict
    and the margins use one-sided ``1 - delta`` bounds). ``support_unknown`` says why a rollout
    without support ranges was not checked against the cohort's support.

    A :class:`~medsim.policies.streamed.StreamedRollout` gives every estimate its per-patient sums
    can give for all its patients, and the rest from its recorded patients (``recorded_patients``).
    """
    streamed = isinstance(result, StreamedRollout)
    rows = result.rows if streamed else result
    _check_rollout(rows, spec)
    level = 1.0 - spec.delta
    seed = int(result.seed)
    ev = result.events(spec) if streamed else patient_events(result, spec)
    joint, per_bound = violation_probabilities(ev, level=level, seed=seed)
    curve, curves = risk_curves(rows, spec, n_points=n_curve, level=level, seed=seed)
    if streamed:
        first = first_grid_time_of_sums(result.sums, result.bounds, spec, result.policy)
        censor = np.asarray(result.sums.length, float)
        per_patient = per_patient_severity(result.sums, result.bounds, spec, result.policy)
    else:
        first, censor, per_patient = first_grid_time(result, spec), censoring_time(result), None
    fv = [first_violation("any", first.min(axis=1), censor, level=level, seed=seed)]
    fv += [first_violation(b.name, first[:, j], censor, level=level, seed=seed) for j, b in enumerate(spec.bounds)]
    sev, cost = severities(result, spec, ev, level=level, seed=seed, per_patient=per_patient)
    draws = ev.draw[ev.draw >= 0]
    n_draws = int(np.unique(draws).size)
    failed = failed_patients(result, result.time_unit)
    efficacy = {}
    for name, values in result.efficacy.items():
        v = np.asarray(values, float)
        ok = np.isfinite(v)
        if ok.any():
            # time shares (time in / below / above range) lie in [0, 1]; doses are non-negative
            share = name.startswith("time_") and bool(((v[ok] >= 0) & (v[ok] <= 1)).all())
            nonneg = name.startswith("total_dose") and bool((v[ok] >= 0).all())
            efficacy[name] = intervals.mean(
                v[ok], ev.draw[ok], level=level, seed=seed, unit_interval=share, nonnegative=nonneg
            )
    glucose, agp = None, None
    # the rollout records a CGM-like trace of the model's glucose observable only (policies/traces.py)
    trace = next(iter(rows.trace.values()), None) if len(rows.trace) == 1 else rows.trace.get(GLUCOSE)
    if trace is not None and trace.size and not rows.failed.all():
        keep = ~rows.failed  # no trace of a failed patient is known past its failure
        draw = np.asarray(rows.draw, int)[keep]
        glucose, agp = _glucose(rows, np.asarray(trace, np.float64)[keep], draw, spec, level, seed)
    support = support_flag(rows, threshold=support_threshold, level=level, seed=seed, unknown_reason=support_unknown)
    warnings = [] if failed is None else [failed.message]
    if support.flagged:
        warnings.append(support.message)
    if 2 <= n_draws < _FEW_DRAWS and n_draws < ev.n_patients:
        warnings.append(
            f"only {n_draws} posterior draws: the cluster-robust standard errors rest on {n_draws - 1} degrees of "
            "freedom; sample more draws for a firmer verdict"
        )
    if ev.undefined_bridge:
        warnings.append(
            f"{ev.undefined_bridge} interval-bound pairs had an undefined bridge crossing probability (NaN from the "
            "simulator); they were counted as crossings, so the continuous-time risk is over-stated"
        )
    if n_draws == 1 and ev.n_patients > 1:
        warnings.append("all patients share one posterior draw: the epistemic uncertainty is not represented")
    pr = PolicyRisk(
        policy=result.policy,
        n_patients=ev.n_patients,
        n_draws=n_draws,
        seed=seed,
        verdict=verdict(ev.joint_bridge, ev.draw, epsilon=spec.epsilon, delta=spec.delta, seed=seed),
        sequential=sequential_test(ev.joint_bridge, ev.draw, epsilon=spec.epsilon, delta=spec.delta),
        joint=joint,
        per_bound=per_bound,
        curve=curve,
        curves_per_bound=curves,
        epistemic=epistemic_split(ev.joint_bridge, ev.draw, epsilon=spec.epsilon, level=level, seed=seed),
        first_violation=tuple(fv),
        severity=sev,
        cost=cost,
        margins=tightening_margins(rows, spec, seed=seed),
        support=support,
        efficacy=efficacy,
        warnings=tuple(warnings),
        glucose=glucose,
        agp=agp,
        failed=failed,
        recorded_patients=rows.n_patients if streamed else None,
    )
    return pr, ev.joint_bridge


def _glucose(
    result: RolloutResult, trace: np.ndarray, draw: np.ndarray, spec: SafetySpec, level: float, seed: int
) -> tuple[GlucoseMetrics | None, AmbulatoryProfile | None]:
    """Consensus metrics and AGP from the rollout's CGM-grid trace, inside the monitoring window."""
    unit = result.time_unit
    step = float(result.trace_step)
    t = np.arange(trace.shape[1]) * step
    inside = np.where((t >= spec.monitor_from - 1e-9 * max(1.0, step))[None, :], trace, np.nan)
    metrics = glucose_metrics(inside, draw, step_min=convert_time(step, unit, "min"), level=level, seed=seed)
    agp = ambulatory_profile(
        trace,
        convert_time(step, unit, "h"),
        draw,
        clock_start_h=float(result.clock_start_h),
        start_h=convert_time(spec.monitor_from, unit, "h"),
        level=level,
        seed=seed,
    )
    return metrics, agp


def calibration_gated(risk: PolicyRisk, prov: Provenance) -> PolicyRisk:
    """``risk`` with its verdicts under the model's calibration gate (:func:`~medsim.policies.risk.verdict.gated`):
    a miscalibrated model's PASS, fixed-sample or sequential, becomes UNDECIDED unless forced."""
    gate, forced = prov.calibration, prov.calibration_forced
    sequential = risk.sequential
    if gate is not None and gate.failed and not forced and sequential.decision == "PASS":
        sequential = replace(sequential, decision="UNDECIDED")
    return replace(risk, verdict=gated(risk.verdict, gate, forced=forced), sequential=sequential)


def monitored(result: RolloutResult | StreamedRollout, start: float) -> RolloutResult | StreamedRollout:
    """``result`` restricted to the monitoring window: intervals that begin before ``start`` are
    masked out (see :attr:`medsim.policies.spec.SafetySpec.monitor_from`).

    Raises
    ------
    ValueError
        For a streamed rollout and ``start > 0``: its sums cover the whole horizon.
    """
    if start <= 0:
        return result
    if isinstance(result, StreamedRollout):
        raise ValueError(
            f"policy {result.policy!r}: streamed statistics cover the whole horizon, but the spec monitors from "
            f"{start:g} {result.time_unit} on; record every interaction (statistics='rows', medsim risk: "
            "--statistics rows) for a monitoring window"
        )
    tol = 1e-9 * max(1.0, abs(start))
    keep = np.asarray(result.mask, bool) & (np.asarray(result.t_start, float) >= start - tol)
    return replace(result, mask=keep)


def risk_report(
    results: Sequence[RolloutResult | StreamedRollout],
    spec: SafetySpec,
    *,
    provenance: Mapping[str, Any] | Provenance | None = None,
    support_threshold: float = DEFAULT_THRESHOLD,
    model: Any = None,
) -> RiskReport:
    """Build the :class:`RiskReport` of ``results`` (one rollout per policy) under ``spec``.

    Parameters
    ----------
    results : sequence of RolloutResult or StreamedRollout
        One per policy, all over the spec's bounds and horizon; on common random numbers for
        paired comparisons. A streamed rollout (:mod:`medsim.policies.streamed`) gives the
        estimates its per-patient sums allow for all its patients, the rest for its recorded ones.
    spec : SafetySpec
        Validated against the model (its horizon unit is converted to the rollouts' unit).
    provenance : mapping or Provenance, keyword-only
        Seed, model, data hash, posterior file, fit diagnostics; completed from the first
        rollout's own provenance and the installed package versions.
    support_threshold : float
        Share of simulated time outside the fitted support above which a policy is flagged.
        A provenance entry ``support_unknown`` says why rollouts without support ranges were not
        checked (e.g. the posterior file records no cohort support); it is kept in the settings.
    model : PhysiologyModel, optional
        The rollouts' model: units of observables and names and units of treatments in the report.

    Raises
    ------
    ValueError
        No results, rollouts in different time units, or duplicate policy names.
    SpecMismatchError
        A spec bound not monitored by a rollout, or a different horizon.
    """
    if not results:
        raise ValueError("risk_report needs at least one rollout")
    units = {r.time_unit for r in results}
    if len(units) != 1:
        raise ValueError(f"rollouts use different time units {sorted(units)}; evaluate one model at a time")
    names = [r.policy for r in results]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"policies {dup} appear more than once; give each rollout a distinct policy name")
    unit = units.pop()
    spec_h = spec.horizon if spec.time_unit is None else convert_time(spec.horizon, spec.time_unit, unit)
    start = spec.monitor_from if spec.time_unit is None else convert_time(spec.monitor_from, spec.time_unit, unit)
    spec = replace(spec, horizon=spec_h, monitor_from=start, time_unit=unit)
    results = [monitored(r, start) for r in results]
    unknown = provenance.get("support_unknown") if isinstance(provenance, Mapping) else None
    per_policy = [
        policy_risk(r, spec, support_threshold=support_threshold, support_unknown=unknown and str(unknown))
        for r in results
    ]
    level = 1.0 - spec.delta
    comparisons = tuple(
        compare(results[i], results[k], per_policy[i][1], per_policy[k][1], level=level)
        for i in range(len(results))
        for k in range(i + 1, len(results))
    )
    prov = make_provenance(provenance, results[0].provenance)
    if prov.seed is None:
        prov = replace(prov, seed=int(results[0].seed))
    keys = sorted({k for r in results for k in r.efficacy})
    units, labels = quantity_names(model, keys, results[0].provenance.get("target_range"))
    return RiskReport(
        units=units,
        labels=labels,
        twin_of=twin_subject(np.concatenate([np.asarray(r.subject).ravel() for r in results])),
        spec=spec,
        time_unit=unit,
        policies=tuple(calibration_gated(p, prov) for p, _ in per_policy),
        comparisons=comparisons,
        provenance=prov,
        warnings=prov.warnings(),
    )
