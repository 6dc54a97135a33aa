"""Self-contained HTML rendering of a risk report.

One file, no external resources: inline CSS, figures embedded as base64 PNG data URIs, and a
Content-Security-Policy that forbids the page from loading anything else. Every string that
comes from users or data (policy names, bounds, file names, warnings) passes through
:func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence

from medsim.policies.report import glucose_text, text
from medsim.policies.risk.report import RiskReport

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:1.5em auto;
padding:0 1em;color:#1b1b1b;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.3em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.verdict{font-size:1.15em;font-weight:600;padding:.6em .9em;border-radius:6px;margin:.4em 0;border:2px solid}
.PASS{background:#e7f6ea;border-color:#2e7d32;color:#1b5e20}.FAIL{background:#fdecea;border-color:#c62828;
color:#8e0000}.UNDECIDED{background:#fff8e1;border-color:#f9a825;color:#6d4c00}
.warning{background:#c62828;color:#fff;font-weight:600;padding:.6em .9em;border-radius:6px;margin:.4em 0}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}th,td{border:1px solid #d0d0d0;padding:.3em .5em;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.PASS,td.FAIL,td.UNDECIDED{font-weight:700}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.85em;
color:#555}.note{font-size:.88em;color:#444}section.policy{margin-top:2em}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], decision_col: int | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cls = f' class="{_e(c)}"' if i == decision_col and c in ("PASS", "FAIL", "UNDECIDED") else ""
            cells.append(f"<td{cls}>{_e(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(png: bytes | None, caption: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def render_html(report: RiskReport, figures: Mapping[str, bytes] | None = None) -> str:
    """HTML text of ``report``; ``figures`` maps figure stem -> PNG bytes (see :mod:`.figures`)."""
    figures = figures or {}
    labels = text.policy_labels(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(text.title(report))}: {_e(', '.join(labels.values()))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(text.title(report))}</h1>",
    ]
    for decision, sentence in text.headline(report):
        parts.append(f'<div class="verdict {_e(decision)}">{_e(sentence)}</div>')
    for w in text.warnings(report):
        parts.append(f'<div class="warning">WARNING: {_e(w)}</div>')
    parts.append(f"<p>{_e(text.spec_line(report))}</p>")
    parts += [f'<p class="note">Note: {_e(note)}</p>' for note in text.recorded_notes(report)]
    parts.append(f"<p>Model calibration: {_e(text.calibration_text(report.provenance))}</p>")
    if glucose_text.has_glucose(report):
        parts += [
            "<h2>Glucose: international consensus metrics</h2>",
            _table(*glucose_text.consensus_rows(report)),
            f'<p class="note">{_e(glucose_text.consensus_note(report))}</p>',
            "<h2>Ambulatory glucose profile</h2>",
            _figure(figures.get("agp"), "Ambulatory glucose profile per policy (percentiles by time of day)"),
            _figure(figures.get("time_in_ranges"), "Time in ranges (mean share of readings per policy)"),
            f'<p class="note">{_e(glucose_text.agp_note(report))}</p>',
        ]
    parts += ["<h2>Policies</h2>", _table(*text.policy_rows(report))]
    parts += [_table(text.SUMMARY_HEADER, text.summary_rows(report), decision_col=1)]
    parts.append(
        '<p class="note">Continuous time: Brownian-bridge corrected probability of leaving the safe set at any '
        "time. Seen at measurements: what a check at the measurement times sees. Only between measurements: the "
        f"difference. {_e(text.confidence_note(report))}</p>"
    )
    if report.comparisons:
        h, rows = text.comparison_rows(report)
        parts += ["<h2>Paired comparison</h2>", _table(h, rows)]
    h, rows = text.efficacy_rows(report)
    if len(h) > 1:
        parts += ["<h2>Efficacy</h2>", _table(h, rows)]
    parts.append(
        _figure(figures.get("efficacy_risk"), "Efficacy against violation probability (error bars: intervals)")
    )
    parts.append(
        _figure(figures.get("risk_curve"), "P(first violation <= t): continuous time (solid) and grid (dashed)")
    )
    parts.append(
        _figure(figures.get("epistemic"), "Violation probability given each posterior draw (epistemic spread)")
    )
    for i, p in enumerate(report.policies):
        seq = p.sequential
        parts += [
            '<section class="policy">',
            f"<h2>{_e(labels[p.policy])}</h2>",
            f'<p class="note">{_e(p.policy)}</p>',
            f'<div class="verdict {_e(p.verdict.decision)}">{_e(p.verdict.statement)}</div>',
            *[f'<div class="warning">WARNING: {_e(w)}</div>' for w in p.warnings],
            f"<p>Sequential test ({_e(seq.method)}): <b>{_e(seq.decision)}</b> after {seq.stopped_at} of "
            f"{seq.n_units} {_e(seq.unit)}s ({seq.patients_used} patients).</p>",
            _figure(
                figures.get(f"fan_{i}"), f"{labels[p.policy]}: 5-25-50-75-95% bands, individual paths, measurements"
            ),
            "<h3>Violation probability by bound</h3>",
            _table(*text.bound_rows(p)),
            f'<p class="note">{_e(text.DETECTION_NOTE)}</p>',
            *(
                [
                    "<h3>Rare-event estimate (closed-loop splitting)</h3>",
                    _table(*text.rare_rows(p)),
                    "<ul>",
                    *[f"<li>{_e(s)}</li>" for s in text.rare_lines(p)],
                    "</ul>",
                ]
                if p.rare
                else []
            ),
            "<h3>Epistemic vs aleatoric</h3><ul>",
            *[f"<li>{_e(s)}</li>" for s in text.epistemic_lines(p, report.spec.epsilon)],
            "</ul><h3>Severity and timing</h3>",
            f"<p>{_e(text.first_violation_line(p, report.time_unit))}</p>",
            _table(*text.severity_rows(report, p)),
            f"<p>Expected time outside the safe set: "
            f"{_e(text.time_ci(p.cost.expected_time_outside, report.time_unit, inf='∞'))}"
            f" ({_e(text.pct_ci(p.cost.expected_fraction_outside))} of the horizon).</p>",
            "<h3>Tightening margin for checks at interaction times</h3>",
            _table(*text.margin_rows(report, p)),
        ]
        parts.append(f"<p>{_e(text.support_line(p))}</p>")
        parts.append("</section>")
    parts += ["<h2>Provenance</h2>", _table(["item", "value"], text.provenance_rows(report)), "</body></html>"]
    return "\n".join(x for x in parts if x)
