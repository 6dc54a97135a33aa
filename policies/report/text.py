"""The words and tables of a risk report, shared by the Markdown and HTML renderings.

Everything here returns plain strings and rows of plain strings; the renderers escape them for
their format. Probabilities are shown in percent with their interval, ``value [lower, upper]``.
"""

from __future__ import annotations

import math

from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.report import PolicyRisk, RiskReport


def pct(x: float) -> str:
    """``0.0412`` -> ``"4.12%"`` (3 significant digits; ``"n/a"`` for nan)."""
    if not math.isfinite(x):
        return "n/a"
    if 0.0 < x < 1e-4:
        return "<0.01%"
    return f"{100 * x:.3g}%"


def pct_ci(e: Estimate | None) -> str:
    if e is None:
        return "n/a"
    if e.no_interval:
        return f"{pct(e.value)} (interval not estimable: {e.no_interval})"
    return f"{pct(e.value)} [{pct(e.lower)}, {pct(e.upper)}]"


def num(x: float, unit: str = "", *, inf: str = "∞") -> str:
    """Number with 3 significant digits; ``inf`` is the text for +infinity (e.g. "> horizon")."""
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return inf if x > 0 else "-∞"
    return f"{x:.3g}{(' ' + unit) if unit else ''}"


def num_ci(e: Estimate | None, unit: str = "", *, inf: str = "∞") -> str:
    if e is None or math.isnan(e.value):
        return "n/a"
    if e.no_interval:
        return f"{num(e.value, unit, inf=inf)} (interval not estimable: {e.no_interval})"
    return f"{num(e.value, unit, inf=inf)} [{num(e.lower, inf=inf)}, {num(e.upper, inf=inf)}]"


def time_ci(e: Estimate | None, unit: str) -> str:
    """A time estimate; +infinity reads "> horizon" (no violation within the horizon)."""
    return num_ci(e, unit, inf="> horizon")


def headline(report: RiskReport) -> list[tuple[str, str]]:
    """``(decision, sentence)`` per policy: the verdict in words."""
    return [(p.verdict.decision, f"{p.policy}: {p.verdict.statement}") for p in report.policies]


def spec_line(report: RiskReport) -> str:
    s = report.spec
    bounds = ", ".join(b.name for b in s.bounds)
    target = f"; efficacy target {s.target}" if s.target is not None else ""
    return (
        f"Safe set: {bounds} over {s.horizon:g} {report.time_unit}; chance constraint P(violation) <= "
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
    for p in report.policies:
        seq = p.sequential
        seq_txt = (
            f"{seq.decision} after {seq.stopped_at} {seq.unit}s"
            if seq.decision != "UNDECIDED"
            else f"undecided after {seq.n_units} {seq.unit}s"
        )
        rows.append(
            [
                p.policy,
                p.verdict.decision,
                pct_ci(p.joint.bridge),
                pct_ci(p.joint.seen),
                pct_ci(p.joint.grid),
                pct_ci(p.joint.between_bridge),
                pct_ci(p.joint.share_between),
                num_ci(p.cost.expected_time_outside, report.time_unit),
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


def efficacy_rows(report: RiskReport) -> tuple[list[str], list[list[str]]]:
    names = sorted(set().union(*(p.efficacy for p in report.policies)))
    rows = [[p.policy] + [num_ci(p.efficacy.get(n)) for n in names] for p in report.policies]
    return ["policy", *names], rows


def comparison_rows(report: RiskReport) -> tuple[list[str], list[list[str]]]:
    header = ["A", "B", "P_A - P_B", "SE paired", "SE unpaired", "common random numbers"]
    rows = []
    for c in report.comparisons:
        d = c.risk_difference
        diff = (
            f"{100 * d.value:+.3g} pp (interval not estimable: {d.no_interval})"
            if d.no_interval
            else f"{100 * d.value:+.3g} pp [{100 * d.lower:+.3g}, {100 * d.upper:+.3g}]"
        )
        rows.append(
            [
                c.policy_a,
                c.policy_b,
                diff,
                "n/a" if math.isnan(c.se_paired) else f"{100 * c.se_paired:.3g} pp",
                f"{100 * c.se_unpaired:.3g} pp",
                "yes" if c.paired else "no",
            ]
        )
    return header, rows


def bound_rows(p: PolicyRisk) -> tuple[list[str], list[list[str]]]:
    header = ["bound", "continuous (bridge)", "seen", "grid", "only between", "detected by noisy measurement"]
    rows = [
        [v.bound, pct_ci(v.bridge), pct_ci(v.seen), pct_ci(v.grid), pct_ci(v.between_bridge), pct_ci(v.detected)]
        for v in (p.joint, *p.per_bound)
    ]
    return header, rows


def severity_rows(p: PolicyRisk, time_unit: str) -> tuple[list[str], list[list[str]]]:
    header = [
        "bound",
        "expected time outside",
        "time outside | violated",
        "depth | violated",
        "95th pct depth | violated",
        "first violation, median | violated",
    ]
    first = {f.bound: f for f in p.first_violation}
    rows = []
    for s in p.severity:
        f = first.get(s.bound)
        rows.append(
            [
                s.bound,
                num_ci(s.expected_time_outside, time_unit),
                num_ci(s.time_outside_if_violated, time_unit),
                num_ci(s.depth_if_violated),
                num_ci(s.depth_q95_if_violated),
                "n/a" if f is None else time_ci(f.conditional_quantiles.get("q50"), time_unit),
            ]
        )
    return header, rows


def margin_rows(p: PolicyRisk, time_unit: str) -> tuple[list[str], list[list[str]]]:
    header = ["bound", "quantile", "margin needed", "upper confidence bound", "Lipschitz rule (L x median dt)"]
    rows = [
        [
            m.bound,
            pct(m.quantile),
            num(m.margin.value),
            num(m.margin.upper) if m.margin.has_interval else f"not estimable: {m.margin.no_interval}",
            f"{num(m.lipschitz_margin.value)} (L = {num(m.lipschitz_rate.value)}/{time_unit}, "
            f"dt = {num(m.median_interval)} {time_unit})",
        ]
        for m in p.margins
    ]
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
        parts = [f"{k[1:]}%: {num(v.value, time_unit, inf='> horizon')}" for k, v in km.items()]
        return head + "; ".join(parts) + f" (intervals not estimable: {reasons.pop()})."
    parts = [f"{k[1:]}%: {time_ci(v, time_unit)}" for k, v in km.items()]
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
