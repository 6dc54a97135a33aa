"""The words and tables of a risk report, shared by the Markdown and HTML renderings.

Everything here returns plain strings and rows of plain strings; the renderers escape them for
their format. Probabilities and fractions of time are shown in percent with their interval,
``value [lower, upper]``; every other number carries its unit (from the report's ``units``, which
come from the model's declarations), durations read in min below two hours and in h above, and
policies are named by short labels whose full specification the policy table gives.
"""

from __future__ import annotations

import math

from medsim.policies.report.numbers import duration, num, num_ci, pct, pct_ci, plain, pp, time_ci
from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.report import PolicyRisk, RiskReport

#: Policy names longer than this are shown by their kind (the part before ":") in tables and figures.
LABEL_WIDTH = 24


def policy_labels(report: RiskReport) -> dict[str, str]:
    """Short label of each policy: its name, or its kind when the name is long (numbered if shared)."""
    kinds = {p.policy: p.policy if len(p.policy) <= LABEL_WIDTH else p.policy.split(":")[0] for p in report.policies}
    out: dict[str, str] = {}
    for name, kind in kinds.items():
        same = [n for n, k in kinds.items() if k == kind]
        out[name] = kind if len(same) == 1 else f"{kind} ({same.index(name) + 1})"
    return out


def policy_rows(report: RiskReport) -> tuple[list[str], list[list[str]]]:
    """The policies compared: short label and full specification."""
    labels = policy_labels(report)
    return ["policy", "full specification"], [[labels[p.policy], p.policy] for p in report.policies]


def title(report: RiskReport) -> str:
    """The report's title; a personalized report says whose digital twin it is."""
    model = report.provenance.model
    head = f"medsim risk report: {model}" if model else "medsim risk report"
    if report.twin_of:
        return f"{head}, digital twins of subject {report.twin_of}"
    return head


def headline(report: RiskReport) -> list[tuple[str, str]]:
    """``(decision, sentence)`` per policy: the verdict in words."""
    labels = policy_labels(report)
    return [(p.verdict.decision, f"{labels[p.policy]}: {p.verdict.statement}") for p in report.policies]


def warnings(report: RiskReport) -> list[str]:
    """Patients that could not be simulated first (:mod:`medsim.policies.risk.failed`), then the
    report-level warnings, then each policy's other warnings, prefixed with the policy's short label."""
    labels = policy_labels(report)
    failed = {p.policy: p.failed.message for p in report.policies if getattr(p, "failed", None) is not None}
    first = [f"{labels[name]}: {message}" for name, message in failed.items()]
    rest = (f"{labels[p.policy]}: {w}" for p in report.policies for w in p.warnings if w != failed.get(p.policy))
    return [*first, *report.warnings, *rest]


def recorded_notes(report: RiskReport) -> list[str]:
    """Per streamed policy, which sections come from its recorded patients only
    (:attr:`~medsim.policies.risk.report.PolicyRisk.recorded_note`), with the policy's short label."""
    labels = policy_labels(report)
    return [f"{labels[p.policy]}: {p.recorded_note}" for p in report.policies if getattr(p, "recorded_note", "")]


def confidence_note(report: RiskReport) -> str:
    """What the verdict's bound and the tables' intervals are (one-sided vs two-sided)."""
    c = f"{100 * (1 - report.spec.delta):g}%"
    return (
        f"The verdicts use a one-sided {c} confidence bound on P(violation) (an upper bound for PASS, a lower "
        f"bound for FAIL); every interval in the tables is two-sided {c}, cluster-robust over posterior draws, "
        "so a verdict's bound can lie inside the interval shown next to it."
    )


def spec_line(report: RiskReport) -> str:
    s = report.spec
    bounds = ", ".join(f"{b.name} {report.units.get(b.observable, '')}".rstrip() for b in s.bounds)
    target = ""
    if s.target is not None:
        target = f"; efficacy target {s.target} {report.units.get(s.target.observable, '')}".rstrip()
    window = f" (monitored from {duration(s.monitor_from, report.time_unit)})" if s.monitor_from > 0 else ""
    return (
        f"Safe set: {bounds} over {duration(s.horizon, report.time_unit)}{window}; chance constraint P(violation) <= "
        f"{pct(s.epsilon)} with {pct(1 - s.delta)} confidence{target}."
    )


SUMMARY_HEADER = (
    "policy",
    "verdict",
    "P(violation), continuous time",
    "seen at measurements",
    "on the sub-step grid",
    "only between measurements",
    "share missed by checks",
    "expected time outside",
    "sequential test",
    "patients / draws",
)


def summary_rows(report: RiskReport) -> list[list[str]]:
    """One row per policy for the comparison table (columns of :data:`SUMMARY_HEADER`)."""
    rows = []
    labels = policy_labels(report)
    for p in report.policies:
        seq = p.sequential
        seq_txt = (
            f"{seq.decision} after {seq.stopped_at} {seq.unit}s"
            if seq.decision != "UNDECIDED"
            else f"undecided after {seq.n_units} {seq.unit}s"
        )
        rows.append(
            [
                labels[p.policy],
                p.verdict.decision,
                pct_ci(p.joint.bridge),
                pct_ci(p.joint.seen),
                pct_ci(p.joint.grid),
                pct_ci(p.joint.between_bridge),
                pct_ci(p.joint.share_between),
                time_ci(p.cost.expected_time_outside, report.time_unit, inf="∞"),
                seq_txt,
                f"{p.n_patients} / {p.n_draws}",
            ]
        )
    return rows


EFFICACY_PREFERENCE = ("time_in_range",)


def efficacy_metric(report: RiskReport) -> str | None:
    """The efficacy metric to plot against risk: time in range if present, else the first common one."""
    common = set.intersection(*(set(p.efficacy) for p in report.policies)) if report.policies else set()
    for name in EFFICACY_PREFERENCE:
        if name in common:
            return name
    return sorted(common)[0] if common else None


def with_unit(name: str, unit: str) -> str:
    """``"total insulin (U)"``; a name without a unit stays bare."""
    return f"{name} ({unit})" if unit else name


def quantity(report: RiskReport, key: str, e: Estimate | None) -> str:
    """An estimate of quantity ``key`` in its unit: shares in percent, others with their unit."""
    unit = report.units.get(key, "")
    return pct_ci(e) if unit == "%" else num_ci(e, unit)


def efficacy_rows(report: RiskReport) -> tuple[list[str], list[list[str]]]:
    names = sorted(set().union(*(p.efficacy for p in report.policies)))
    labels = policy_labels(report)
    header = [with_unit(report.labels.get(n, n.replace("_", " ")), report.units.get(n, "")) for n in names]
    rows = [[labels[p.policy]] + [quantity(report, n, p.efficacy.get(n)) for n in names] for p in report.policies]
    return ["policy", *header], rows


def comparison_rows(report: RiskReport) -> tuple[list[str], list[list[str]]]:
    header = ["A", "B", "P_A - P_B", "SE paired", "SE unpaired", "common random numbers"]
    labels = policy_labels(report)
    rows = []
    for c in report.comparisons:
        d = c.risk_difference
        diff = (
            f"{pp(d.value, signed=True)} pp (interval not estimable: {d.no_interval})"
            if d.no_interval
            else f"{pp(d.value, signed=True)} pp [{pp(d.lower, signed=True)}, {pp(d.upper, signed=True)}]"
        )
        rows.append(
            [
                labels.get(c.policy_a, c.policy_a),
                labels.get(c.policy_b, c.policy_b),
                diff,
                f"{pp(c.se_paired)} pp" if math.isfinite(c.se_paired) else "n/a",
                f"{pp(c.se_unpaired)} pp",
                "yes" if c.paired else "no",
            ]
        )
    return header, rows


DETECTION_NOTE = (
    "Alarm, true: some noisy measurement the policy saw was outside the bound while the noise-free value was "
    "outside too. Alarm, false only: measurements were outside but the noise-free value never was at those times "
    "(measurement noise); the two add up to the share of patients with any alarm, which can exceed the "
    "probability seen at measurements because of the false alarms."
)


def bound_rows(p: PolicyRisk) -> tuple[list[str], list[list[str]]]:
    header = [
        "bound",
        "continuous (bridge)",
        "seen at measurements",
        "sub-step grid",
        "only between measurements",
        "alarm, true",
        "alarm, false only",
    ]
    rows = [
        [
            v.bound,
            pct_ci(v.bridge),
            pct_ci(v.seen),
            pct_ci(v.grid),
            pct_ci(v.between_bridge),
            pct_ci(v.detected_true if v.detected_true is not None else v.detected),
            pct_ci(v.false_alarm),
        ]
        for v in (p.joint, *p.per_bound)
    ]
    return header, rows


def _bound_unit(report: RiskReport, bound: str) -> str:
    for b in report.spec.bounds:
        if b.name == bound:
            return report.units.get(b.observable, "")
    return ""


def severity_rows(report: RiskReport, p: PolicyRisk) -> tuple[list[str], list[list[str]]]:
    unit = report.time_unit
    header = [
        "bound",
        "expected time outside",
        "time outside | violated",
        "depth beyond the bound | violated",
        "95th percentile depth | violated",
        "first violation, median | violated",
    ]
    first = {f.bound: f for f in p.first_violation}
    rows = []
    for s in p.severity:
        f = first.get(s.bound)
        depth_unit = _bound_unit(report, s.bound)
        rows.append(
            [
                s.bound,
                time_ci(s.expected_time_outside, unit, inf="∞"),
                time_ci(s.time_outside_if_violated, unit, inf="∞"),
                num_ci(s.depth_if_violated, depth_unit),
                num_ci(s.depth_q95_if_violated, depth_unit),
                "n/a" if f is None else time_ci(f.conditional_quantiles.get("q50"), unit),
            ]
        )
    return header, rows


def margin_rows(report: RiskReport, p: PolicyRisk) -> tuple[list[str], list[list[str]]]:
    """The tightening margin: how far inside the bound a check at interaction times must stay."""
    header = ["bound", "share of intervals covered", "margin needed", "one-sided upper confidence bound"]
    rows = []
    for m in p.margins:
        unit = _bound_unit(report, m.bound)
        upper = num(m.margin.upper, unit) if m.margin.has_interval else f"not estimable: {m.margin.no_interval}"
        rows.append([m.bound, pct(m.quantile), num(m.margin.value, unit), upper])
    return header, rows


def epistemic_lines(p: PolicyRisk, epsilon: float) -> list[str]:
    e = p.epistemic
    if e is None:
        return ["Epistemic split not available (fewer than two posterior draws)."]
    q = e.quantiles
    removed = "Monte Carlo noise removed" if e.noise_corrected else "noise not removable: one patient per draw"
    lines = [
        f"Risk across {e.n_draws} posterior draws ({e.patients_per_draw:.3g} patients each): median "
        f"{pct_ci(q['q50'])}, 5-95% range {pct(q['q05'].value)} to {pct(q['q95'].value)}.",
        f"Share of draws whose risk exceeds epsilon = {pct(epsilon)}: {pct_ci(e.p_exceeds_epsilon)} "
        f"(each per-draw risk carries Monte Carlo noise of about {pct(e.within_draw_se)}).",
        f"Variance of the violation indicator: epistemic share {pct_ci(e.epistemic_share)} "
        f"(between draws, {removed}); "
        f"the rest is aleatoric (path and measurement noise).",
    ]
    return lines


def first_violation_line(p: PolicyRisk, time_unit: str) -> str:
    f = p.first_violation[0]
    km = f.km_quantiles
    reasons = {v.no_interval for v in km.values()}
    head = f"Time to first violation (any bound, Kaplan-Meier, {f.n_events} events): "
    if len(reasons) == 1 and "" not in reasons:  # one reason for all: say it once
        parts = [f"{int(k[1:])}%: {duration(v.value, time_unit, inf='> horizon')}" for k, v in km.items()]
        return head + "; ".join(parts) + f" (intervals not estimable: {reasons.pop()})."
    parts = [f"{int(k[1:])}%: {time_ci(v, time_unit)}" for k, v in km.items()]
    return head + "; ".join(parts) + "."


def provenance_rows(report: RiskReport) -> list[list[str]]:
    pv = report.provenance
    fit = pv.fit
    learned = "model_kind" in pv.settings  # a neural checkpoint: no MCMC diagnostics, a training record
    unknown = "not applicable (trained model; see the calibration rows)" if learned else "not applicable / unknown"
    fit_txt = {True: "passed", False: "FAILED", None: unknown}[fit.ok]
    if fit.problems:
        fit_txt += ": " + "; ".join(fit.problems)
    rows = [
        ["seed", str(pv.seed)],
        ["model", f"{pv.model} v{pv.model_version}" if pv.model_version else pv.model],
        ["data hash", pv.data_hash or "n/a"],
        ["checkpoint" if learned else "posterior file", pv.posterior_file or "n/a"],
        ["fit diagnostics", fit_txt],
        ["calibration gate", calibration_text(pv)],
        *[[f"fit: {k}", str(v)] for k, v in fit.summary.items()],
        ["created (UTC)", pv.created],
        ["versions", ", ".join(f"{k} {v}" for k, v in pv.versions.items())],
        *[[k, v] for k, v in pv.settings.items()],
        ["spec source", report.spec.source],
    ]
    return rows


def calibration_text(pv) -> str:
    """The model's held-out calibration gate in one line; a missing record reads "not checked"."""
    gate = pv.calibration
    if gate is None:
        return "not checked (no held-out calibration record with this model)"
    forced = " (overridden with --force)" if pv.calibration_forced and gate.failed else ""
    return gate.summary() + forced


def support_line(p: PolicyRisk) -> str:
    """The out-of-support sentence; an unchecked support reads "not checked" with the reason, never 0 %."""
    s = p.support
    if s is None:
        return "Support: not checked (this report records no support check)."
    if not s.checked:
        return f"Support: not checked: {s.reason}."
    return f"Support: {s.message}."


# ---------------------------------------------------------------------------------------- rare events
RARE_HEADER = [
    "bound",
    "estimate",
    "interval",
    "relative error",
    "path-equivalents",
    "level sequence",
    "extinct replicas",
]


def rare_pct(x: float) -> str:
    """A small probability in percent, positional and unrounded to zero (``0.000312%``)."""
    return "n/a" if not math.isfinite(x) else f"{plain(100 * x)}%"


def rare_rows(p: PolicyRisk) -> tuple[list[str], list[list[str]]]:
    """The closed-loop splitting estimate per bound (``could not be estimated`` when it failed)."""
    rows = []
    for r in p.rare:
        spent = num(r.path_equivalents)
        extinct = str(r.extinct)
        levels = ", ".join(f"{v:.3g}" for v in r.estimate.levels) if r.estimate is not None else "n/a"
        if not r.estimated:
            rows.append([r.bound, "could not be estimated", r.failure, "n/a", spent, levels, extinct])
            continue
        e = r.probability
        interval = (
            f"not estimable: {e.no_interval}"
            if e.no_interval
            else f"[{rare_pct(e.lower)}, {rare_pct(e.upper)}] ({pct(e.level)})"
        )
        rows.append([r.bound, rare_pct(e.value), interval, num(r.relative_error), spent, levels, extinct])
    return RARE_HEADER, rows


def rare_lines(p: PolicyRisk) -> list[str]:
    """Why splitting was used and what the verdict rests on."""
    if not p.rare:
        return []
    first = p.rare[0]
    lines = [
        f"{first.reason[0].upper()}{first.reason[1:]}: too few violations for the plain estimate, so the violation "
        f"probability was estimated by adaptive multilevel splitting on the closed loop (budget "
        f"{num(sum(r.budget for r in p.rare))} path-equivalents)."
    ]
    if all(r.estimated for r in p.rare):
        union = " summed over bounds" if len(p.rare) > 1 else ""
        lines.append(f"The verdict uses the splitting estimate's upper bound{union}, not the plain estimate.")
    else:
        failed = ", ".join(r.bound for r in p.rare if not r.estimated)
        lines.append(f"{failed}: could not be estimated by splitting; the verdict rests on the plain estimate.")
    for r in p.rare:
        if r.n_draws > 1 and r.estimated:
            lines.append(
                f"{r.bound}: one splitting run per posterior draw ({r.n_draws} draws); the interval is over "
                f"draws; epistemic share {pct(r.epistemic_share)}."
            )
        if r.extinct:
            lines.append(
                f"{r.bound}: {r.extinct} replicas went extinct (all paths tied below the bound): the score is "
                "coarse (few interactions); the estimate stays unbiased but noisier."
            )
    return lines
