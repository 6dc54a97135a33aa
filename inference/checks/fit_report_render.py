"""Markdown and self-contained HTML of a :class:`~medsim.inference.checks.fit_report.FitReport`.

Both are rendered from one list of sections (headings, paragraphs, tables, figures), so they say
the same thing. Every number is printed with its unit; a value that could not be estimated is
printed as "not estimable" (or "not applicable" with the reason), never as a number. The HTML
loads nothing (figures are base64 PNG data URIs; a Content-Security-Policy forbids the rest) and
every string from data or users passes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from medsim.inference.checks.fit_report import TRACE_DRAWS
from medsim.inference.diagnostics import EBFMI_MIN, ESS_PER_CHAIN_MIN, RHAT_MAX

NOT_ESTIMABLE = "not estimable"

Block = tuple  # ("p", text) | ("list", items) | ("table", header, rows) | ("figure", stem, caption)


def number(value: Any, unit: str = "", digits: int = 3) -> str:
    """``value`` to ``digits`` significant figures with its unit; "not estimable" for None or NaN."""
    if value is None or not math.isfinite(float(value)):
        return NOT_ESTIMABLE
    text = f"{float(value):.{digits}g}"
    return f"{text} {unit}".rstrip() if unit not in ("", "1") else text


def fixed(value: Any, decimals: int = 3) -> str:
    """``value`` with ``decimals`` decimals (an R-hat: 1.004, not 1); "not estimable" for None or NaN."""
    if value is None or not math.isfinite(float(value)):
        return NOT_ESTIMABLE
    return f"{float(value):.{decimals}f}"


def whole(value: Any, unit: str = "") -> str:
    """``value`` rounded to an integer (an effective sample size) with its unit; "not estimable" for None or NaN."""
    if value is None or not math.isfinite(float(value)):
        return NOT_ESTIMABLE
    return f"{float(value):.0f} {unit}".rstrip()


def percent(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage ("12.5 %"); "not estimable" for None or NaN."""
    if value is None or not math.isfinite(float(value)):
        return NOT_ESTIMABLE
    return f"{100 * float(value):.{digits}f} %"


def _unit(unit: str) -> str:
    return "dimensionless" if unit in ("", "1") else unit


def _parameters(report: Any) -> list[Block]:
    header = [
        "parameter",
        "meaning",
        "unit",
        "median",
        "94 % HDI",
        "R-hat",
        "bulk ESS (draws)",
        "tail ESS (draws)",
        "eta-shrinkage",
    ]
    rows = []
    nuts = report.diagnostics.applicable
    for name, r in report.parameters.items():
        unit = r["unit"]
        if isinstance(r["median"], list):  # a vector site: summarised elsewhere
            continue
        shrink = "-"
        if r["kind"] == "omega":
            shrink = percent(report.eta_shrinkage.get(name.removeprefix("omega_")))
        na = "not applicable (SVI)"
        if r["kind"] == "fixed":
            rows.append([name, r["description"], _unit(unit), number(r["median"]), "held fixed (--fix)", *["-"] * 4])
            continue
        rows.append(
            [
                name,
                r["description"],
                "SD of log (dimensionless)" if r["kind"] == "omega" else _unit(unit),
                number(r["median"]),
                f"{number(r['hdi_low'])} to {number(r['hdi_high'])}",
                fixed(r["r_hat"]) if nuts else na,
                whole(r["ess_bulk"]) if nuts else na,
                whole(r["ess_tail"]) if nuts else na,
                shrink,
            ]
        )
    eps = percent(report.epsilon_shrinkage)
    return [
        ("table", header, rows),
        (
            "p",
            "Median and 94 % highest-density interval of the posterior draws. eta-shrinkage "
            "(Savic & Karlsson 2009): 1 - SD of the subjects' posterior-mean random effects / omega; above "
            f"about 30 % individual estimates say little beyond the typical value. epsilon-shrinkage "
            f"(1 - SD of IWRES): {eps}.",
        ),
    ]


def _diagnostics(report: Any) -> list[Block]:
    d = report.diagnostics
    if not d.applicable:
        lines = [("p", "R-hat, ESS, divergences and E-BFMI are not applicable: the fit is variational (SVI).")]
        lines += [("p", f"Checked: {c}") for c in d.checks]
        lines += [("list", [f"PROBLEM: {p}" for p in d.problems])] if d.problems else [("p", "All SVI checks passed.")]
        return lines
    ess_min = ESS_PER_CHAIN_MIN * d.chains
    rows = [
        ["largest R-hat", fixed(d.rhat_max), f"<= {RHAT_MAX}"],
        ["smallest bulk ESS", whole(d.ess_bulk_min, "draws"), f">= {ess_min} draws ({ESS_PER_CHAIN_MIN} per chain)"],
        ["smallest tail ESS", whole(d.ess_tail_min, "draws"), f">= {ess_min} draws ({ESS_PER_CHAIN_MIN} per chain)"],
        ["divergent transitions", f"{d.divergences} of {d.chains * d.draws} draws", "0"],
        ["smallest E-BFMI (over chains)", number(d.ebfmi_min), f">= {EBFMI_MIN}"],
    ]
    verdict = (
        [("list", [f"PROBLEM: {p}" for p in d.problems])] if d.problems else [("p", "All sampler diagnostics passed.")]
    )
    head = f"{d.chains} chains x {d.draws} kept draws (Vehtari et al. 2021; Betancourt 2016, 2017)."
    return [("p", head), ("table", ["diagnostic", "value", "required"], rows), *verdict]


def _vpc(report: Any) -> list[Block]:
    v = report.vpc
    checked = int(np.isfinite(v.observed).sum())
    kind = (
        "Prediction-corrected visual predictive check (pcVPC)" if v.prediction_corrected else "Visual predictive check"
    )
    why = (
        " The subjects' doses differ, so every value is scaled by the median population prediction of its time "
        "bin over its own population prediction (Bergstrand et al. 2011)."
        if v.prediction_corrected
        else ""
    )
    excluded = f" {v.n_excluded} measurements with a population prediction of 0 are left out." if v.n_excluded else ""
    expected = 1 - v.level
    text = (
        f"{kind}: the study re-simulated {v.n_replicates} times on new subjects with the fitted subjects' doses, "
        f"covariates and sampling times; observed {', '.join(f'P{p:g}' for p in v.percentiles)} per time bin "
        f"against the {100 * v.level:.0f} % band of the simulated ones.{why}{excluded} "
        f"{int(v.outside.sum())} of {checked} observed percentiles fall outside their band "
        f"(expected about {100 * expected:.0f} % of them, {expected * checked:.1f}, for a model that fits)."
    )
    return [("p", text), ("figure", "vpc", kind)]


def _gof(report: Any) -> list[Block]:
    c = report.cwres_summary()
    g = report.gof
    rows = [
        ["mean", number(c["mean"]), "0"],
        ["SD", number(c["sd"]), "1"],
        ["share with |CWRES| > 1.96", percent(c["outside_1.96"]), "5 %"],
    ]
    text = (
        f"Observed against the population (PRED: typical subject, random effects 0, no process noise) and individual "
        f"(IPRED: posterior median of {g.n_draws} draws) predictions; conditional weighted residuals (CWRES, "
        f"Hooker et al. 2007, linearised at each subject's posterior-mean random effects) against time and PRED, "
        f"over {c['n']} measurements of {g.observable} [{g.unit}]."
    )
    return [
        ("p", text),
        ("figure", "goodness_of_fit", "Goodness of fit"),
        ("table", ["CWRES (dimensionless)", "value", "expected for a model that fits"], rows),
    ]


def _criterion_value(name: str, value: Any) -> str:
    return percent(value) if name.startswith("coverage") else number(value)


def _heldout(report: Any) -> list[Block]:
    gate = report.gate
    if gate is None:
        return [
            (
                "p",
                "Not checked: this posterior carries no held-out calibration record. Run `medsim check POSTERIOR "
                "--cohort COHORT --heldout-fraction 0.25` (docs/calibration.md) and write the report again.",
            )
        ]
    rows = []
    for c in gate.criteria:
        accepted = " and ".join(
            x
            for x in (
                "" if c.lower is None else f">= {_criterion_value(c.name, c.lower)}",
                "" if c.upper is None else f"<= {_criterion_value(c.name, c.upper)}",
            )
            if x
        )
        rows.append([c.name, _criterion_value(c.name, c.value), accepted or "-", c.status.replace("_", " ")])
    unit = gate.unit or "observable unit"
    figures = [
        ["mean width of the 90 % intervals", number(gate.figure("width_0.9"), unit)],
        ["5-95 % range of the held-out measurements", number(gate.figure("spread_5_95"), unit)],
        ["CRPS", number(gate.figure("crps"), unit)],
        ["log score", number(gate.figure("log_score"), "nats per measurement")],
    ]
    return [
        ("p", gate.summary()),
        ("p", f"Held out: {gate.heldout}."),
        ("table", ["criterion", "value", "accepted", "status"], rows),
        ("table", ["figure", "value"], figures),
    ]


def _loo(report: Any) -> list[Block]:
    loo = report.loo
    if loo is None:
        return [("p", f"Not computed: {report.loo_problem}")]
    rows = [
        ["ELPD (PSIS-LOO)", f"{number(loo.elpd, 'nats', 4)} (SE {number(loo.se, 'nats')})"],
        ["effective number of parameters p_loo", number(loo.p_loo)],
        [f"left-out {loo.unit}s", str(loo.n_points)],
        [f"{loo.unit}s with Pareto k > {loo.k_threshold:.2f} (unreliable terms)", str(loo.pareto_k_above)],
    ]
    return [
        (
            "p",
            "Pareto-smoothed importance-sampling leave-one-out of the stored pointwise log-likelihood "
            "(Vehtari, Gelman & Gabry 2017); compare fits of the same data with `medsim check A.nc B.nc --compare`.",
        ),
        ("table", ["quantity", "value"], rows),
    ]


def sections(report: Any) -> tuple[str, list[str], list[tuple[str, list[Block]]]]:
    """(title, provenance lines, [(heading, blocks)]) of the report."""
    p = report.provenance
    model = f"{p.get('model_name', '?')} v{p.get('model_version', '?')}"
    cohort = p.get("cohort_name") or "(unnamed cohort)"
    title = f"Fit report: {model} fitted to {cohort}"
    wall = p.get("wall_time_s")
    fit = f"{p.get('backend', '?')} {p.get('method', '?')}"
    if p.get("method") == "nuts":
        fit += f", {p.get('chains', '?')} chains x {p.get('draws', '?')} draws after {p.get('warmup', '?')} warmup"
    lines = [
        f"Posterior: {report.source or '(in memory)'}; fitted by {fit}, seed {p.get('seed', '?')}"
        + (f", {number(wall, 's')} sampling" if wall is not None else "")
        + (f", created {p['created']}" if p.get("created") else ""),
        f"Data hash {str(p.get('data_hash', ''))[:16]}; simulations below: {report.n_draws} posterior draws, "
        f"seed {report.seed}.",
    ]
    assumed = p.get("assumed_covariates") or {}
    if assumed:
        lines.append(
            "Covariates not in the cohort, every subject at the model's reference: "
            + ", ".join(f"{k} = {v:g}" for k, v in assumed.items())
            + "."
        )
    d = report.diagnostics
    gate = report.gate
    status = "not checked" if gate is None else gate.status.replace("_", " ")
    cwres = report.cwres_summary()
    summary = [
        ("p", f"Sampler diagnostics: {'passed' if d.ok else 'FAILED (' + str(len(d.problems)) + ' problems)'}."),
        ("p", f"Held-out calibration gate: {status}."),
        (
            "p",
            f"VPC: {int(report.vpc.outside.sum())} of {int(np.isfinite(report.vpc.observed).sum())} observed "
            f"percentiles outside their {100 * report.vpc.level:.0f} % band.",
        ),
        (
            "p",
            f"CWRES (dimensionless): mean {number(cwres['mean'])}, SD {number(cwres['sd'])} "
            "(0 and 1 for a model that fits).",
        ),
    ]
    parts = [
        ("Summary", summary),
        ("Parameters", _parameters(report)),
        ("Sampler diagnostics", _diagnostics(report)),
        ("Visual predictive check", _vpc(report)),
        (
            "Individual fits",
            [
                (
                    "p",
                    f"Each subject's measurements with the median and {100 * report.fits.level:.0f} % band of its "
                    f"individual predictions ({report.fits.n_draws} posterior draws; residual error not included).",
                ),
                ("figure", "individual_fits", "Individual fits"),
            ],
        ),
        ("Goodness of fit", _gof(report)),
        ("Held-out check", _heldout(report)),
        ("PSIS-LOO", _loo(report)),
        (
            "Sampler figures",
            [
                (
                    "figure",
                    "trace",
                    f"Trace plots of the population parameters (at most {TRACE_DRAWS} draws per chain)",
                ),
                (
                    "figure",
                    "rank",
                    "Rank plots of the population parameters (uniform when the chains mix; Vehtari et al. 2021)",
                ),
                ("figure", "energy", "Energy distributions (E-BFMI)"),
            ],
        ),
    ]
    return title, lines, parts


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Any, figure_paths: Mapping[str, str]) -> str:
    """The report as Markdown; figures linked by ``figure_paths`` (name -> relative path)."""
    title, lines, parts = sections(report)
    out = [f"# {title}", "", *(f"{line}  " for line in lines), ""]
    for heading, blocks in parts:
        body = []
        for block in blocks:
            if block[0] == "p":
                body += [block[1], ""]
            elif block[0] == "list":
                body += [*(f"* {item}" for item in block[1]), ""]
            elif block[0] == "table":
                body += ["| " + " | ".join(_md_cell(h) for h in block[1]) + " |"]
                body += ["|" + "---|" * len(block[1])]
                body += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block[2]] + [""]
            elif block[2] and block[1] in figure_paths:
                body += [f"![{block[2]}]({figure_paths[block[1]]})", ""]
        if body:
            out += [f"## {heading}", "", *body]
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:1.5em auto;
padding:0 1em;color:#1b1b1b;line-height:1.4}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}th,td{border:1px solid #d0d0d0;padding:.3em .5em;
text-align:left;vertical-align:top}th{background:#f3f3f3}figure{margin:1em 0}figure img{max-width:100%;height:auto;
border:1px solid #eee}figcaption{font-size:.85em;color:#555}.meta{font-size:.88em;color:#444}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_html(report: Any, figures: Mapping[str, bytes]) -> str:
    """The report as one self-contained HTML page (figures embedded)."""
    title, lines, parts = sections(report)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        *(f'<p class="meta">{_e(line)}</p>' for line in lines),
    ]
    for heading, blocks in parts:
        body = []
        for block in blocks:
            if block[0] == "p":
                body.append(f"<p>{_e(block[1])}</p>")
            elif block[0] == "list":
                body.append("<ul>" + "".join(f"<li>{_e(item)}</li>" for item in block[1]) + "</ul>")
            elif block[0] == "table":
                head = "".join(f"<th>{_e(h)}</th>" for h in block[1])
                rows = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in block[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif block[1] in figures:
                data = base64.b64encode(figures[block[1]]).decode("ascii")
                body.append(
                    f'<figure><img alt="{_e(block[2])}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_e(block[2])}</figcaption></figure>"
                )
        if body:
            out += [f"<h2>{_e(heading)}</h2>", *body]
    out.append("</body></html>")
    return "\n".join(out) + "\n"
