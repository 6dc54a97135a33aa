"""Markdown rendering of a risk report (figures linked from the ``figures/`` folder next to it)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from medsim.policies.report import glucose_text, text
from medsim.policies.risk.report import RiskReport

_TAG = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY = re.compile(r"&(?=#?\w+;)")


def _cell(s: str) -> str:
    """Text from data, made inert: anything a Markdown renderer would pass through as an HTML tag
    or entity is escaped (``<=`` stays readable), and pipes and line breaks cannot break tables."""
    s = _ENTITY.sub("&amp;", str(s))
    s = _TAG.sub("&lt;", s)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("*", "\\*")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: RiskReport, figures: Mapping[str, str] | None = None) -> str:
    """Markdown text of ``report``; ``figures`` maps figure stem -> relative file path."""
    figures = figures or {}
    labels = text.policy_labels(report)
    out = [f"# {_cell(text.title(report))}", ""]
    for decision, sentence in text.headline(report):
        mark = {"PASS": "✅", "FAIL": "❌"}.get(decision, "⚠️")
        out.append(f"**{mark} {_cell(sentence)}**  ")
    out.append("")
    for w in text.warnings(report):
        out += [f"> **WARNING:** {_cell(w)}", ""]
    out += [_cell(text.spec_line(report)), ""]
    for note in text.recorded_notes(report):
        out += [f"> **Note:** {_cell(note)}", ""]
    out += [_cell("Model calibration: " + text.calibration_text(report.provenance)), ""]
    if glucose_text.has_glucose(report):
        out += ["## Glucose: international consensus metrics", "", _table(*glucose_text.consensus_rows(report)), ""]
        out += [_cell(glucose_text.consensus_note(report)), ""]
        out += ["## Ambulatory glucose profile", ""]
        for stem, caption in (("agp", "Ambulatory glucose profile"), ("time_in_ranges", "Time in ranges")):
            if stem in figures:
                out += [f"![{caption}]({figures[stem]})", ""]
        out += [_cell(glucose_text.agp_note(report)), ""]
    out += ["## Policies", "", _table(*text.policy_rows(report)), ""]
    out += [_table(text.SUMMARY_HEADER, text.summary_rows(report)), ""]
    out += [
        "*Continuous time* is the Brownian-bridge corrected probability of leaving the safe set at any time; "
        "*seen at measurements* is what a check at the measurement times sees; *only between measurements* "
        "is the difference. " + _cell(text.confidence_note(report)),
        "",
    ]
    if report.comparisons:
        h, rows = text.comparison_rows(report)
        out += ["## Paired comparison", "", _table(h, rows), ""]
    h, rows = text.efficacy_rows(report)
    if len(h) > 1:
        out += ["## Efficacy", "", _table(h, rows), ""]
    for stem, title in (
        ("risk_curve", "Violation probability over time"),
        ("efficacy_risk", "Efficacy against risk"),
        ("epistemic", "Risk across posterior draws"),
    ):
        if stem in figures:
            out += [f"![{title}]({figures[stem]})", ""]
    for i, p in enumerate(report.policies):
        out += [f"## {_cell(labels[p.policy])}", "", "Full specification: " + _cell(p.policy), ""]
        out += [f"**{_cell(p.verdict.statement)}**", ""]
        seq = p.sequential
        out += [
            _cell(
                f"Sequential test ({seq.method}): {seq.decision} after {seq.stopped_at} of {seq.n_units} "
                f"{seq.unit}s ({seq.patients_used} patients)."
            ),
            "",
        ]
        if f"fan_{i}" in figures:
            out += [f"![{_cell(labels[p.policy])} trajectories]({figures[f'fan_{i}']})", ""]
        h, rows = text.bound_rows(p)
        out += ["### Violation probability by bound", "", _table(h, rows), "", _cell(text.DETECTION_NOTE), ""]
        if p.rare:
            h, rows = text.rare_rows(p)
            out += ["### Rare-event estimate (closed-loop splitting)", "", _table(h, rows), ""]
            out += [*[f"- {_cell(s)}" for s in text.rare_lines(p)], ""]
        out += [
            "### Epistemic vs aleatoric",
            "",
            *[f"- {_cell(s)}" for s in text.epistemic_lines(p, report.spec.epsilon)],
            "",
        ]
        out += ["### Severity and timing", "", _cell(text.first_violation_line(p, report.time_unit)), ""]
        h, rows = text.severity_rows(report, p)
        out += [_table(h, rows), ""]
        cost = text.time_ci(p.cost.expected_time_outside, report.time_unit, inf="∞")
        frac = text.pct_ci(p.cost.expected_fraction_outside)
        out += [_cell(f"Expected time outside the safe set: {cost} ({frac} of the horizon)."), ""]
        h, rows = text.margin_rows(report, p)
        out += ["### Tightening margin for checks at interaction times", "", _table(h, rows), ""]
        out += [_cell(text.support_line(p)), ""]
    out += ["## Provenance", "", _table(["item", "value"], text.provenance_rows(report)), ""]
    return "\n".join(out)
