"""The glucose section of a risk report in words: the consensus table and its notes.

Shares of time in percent, glucose in mg/dL, each metric beside its consensus target and the
share of virtual patients that meet it (Battelino et al. 2019, *Diabetes Care* 42:1593).
"""

from __future__ import annotations

from medsim.policies.report.numbers import num_ci, pct, pct_ci
from medsim.policies.report.text import policy_labels, with_unit
from medsim.policies.risk.glucose import ConsensusMetric, MetricDefinition
from medsim.policies.risk.report import RiskReport


def has_glucose(report: RiskReport) -> bool:
    return any(p.glucose is not None for p in report.policies)


def target_text(d: MetricDefinition) -> str:
    """``"> 70%"``; ``"none"`` for metrics without a consensus target."""
    if d.target is None:
        return "none"
    op, x = d.target
    value = pct(x) if d.kind == "share" else f"{x:g} {d.unit}".rstrip()
    return f"{op.replace('<=', '≤').replace('>=', '≥')} {value}"


def metric_cell(m: ConsensusMetric) -> str:
    """Mean over patients with its interval, and the share of patients meeting the target."""
    d = m.definition
    if d.kind == "share":
        value = pct_ci(m.mean)
    elif d.unit == "%":  # GMI: a percent (of HbA1c), not a fraction
        value = m.mean.format(unit="%")
    else:
        value = num_ci(m.mean, d.unit)
    if m.meets_target is None:
        return value
    return f"{value}; target met by {pct_ci(m.meets_target)} of patients"


def consensus_rows(report: RiskReport) -> tuple[list[str], list[list[str]]]:
    """One row per consensus metric, one column per policy (policies without traces read n/a)."""
    labels = policy_labels(report)
    entries = [p for p in report.policies if p.glucose is not None]
    header = ["metric", "consensus target", *[labels[p.policy] for p in entries]]
    rows = []
    for i, m in enumerate(entries[0].glucose.metrics if entries else ()):
        d = m.definition
        unit = "" if d.name == "gmi" else d.unit
        rows.append([with_unit(d.label, unit), target_text(d), *[metric_cell(p.glucose.metrics[i]) for p in entries]])
    return header, rows


def consensus_note(report: RiskReport) -> str:
    g = next(p.glucose for p in report.policies if p.glucose is not None)
    c = f"{100 * (1 - report.spec.delta):g}%"
    return (
        "International consensus metrics (Battelino et al. 2019, Diabetes Care 42:1593; targets for most adults "
        f"with type 1 or type 2 diabetes). Each patient's metrics come from {g.source}, one reading every "
        f"{g.reading_interval_min:g} min ({g.n_readings} readings); the table gives their mean over "
        f"{g.n_patients} virtual patients with a two-sided {c} interval over patients and posterior draws "
        "(cluster-robust), and the share of patients whose own value meets the target. GMI (%) = 3.31 + "
        "0.02392 x mean glucose (mg/dL); CV = SD / mean of each patient's readings; LBGI and HBGI are "
        "Kovatchev's low and high blood glucose indices (no consensus target)."
    )


def agp_note(report: RiskReport) -> str:
    a = next(p.agp for p in report.policies if p.agp is not None)
    c = f"{100 * a.level:g}%"
    return (
        "Ambulatory glucose profile: percentiles 5, 25, 50, 75 and 95 of every virtual patient's glucose by time "
        f"of day (15-minute bins); the shaded band around the median is its two-sided {c} interval from "
        "resampling posterior draws (the epistemic spread of the median). The bar shows the mean time in each "
        "consensus range (below 54, 54-69, 70-180, 181-250 and above 250 mg/dL)."
    )
