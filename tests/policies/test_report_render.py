"""Rendering a risk report: files written atomically, self-contained escaped HTML, figures."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from risk_fixtures import bm_rollout

from medsim.policies.report import render_html, render_markdown, write_bytes_atomic, write_report
from medsim.policies.report.figures import fan_chart, report_figures, risk_curve_figure
from medsim.policies.risk import RiskReport, risk_report
from medsim.policies.spec import parse_inline_spec

NASTY = "<script>alert('x')</script> & | *dose*"
SPEC = parse_inline_spec("x<=1,x>=-1.5;horizon=1h;epsilon=0.05;delta=0.05")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rollouts():
    rng = np.random.default_rng(0)
    draw = np.repeat(np.arange(60), 10)
    kw = dict(n=600, n_intervals=4, substeps=8, sigma=0.35, bounds=SPEC.bounds, draw=draw, seed=1, n_paths=30)
    safe = bm_rollout(x0=-0.2, policy=NASTY, efficacy={"time_in_range": rng.uniform(0.6, 0.8, 600)}, **kw)
    unsafe = bm_rollout(
        x0=0.4, policy="unsafe", efficacy={"time_in_range": rng.uniform(0.7, 0.9, 600)}, noise_sd=0.05, **kw
    )
    return [safe, unsafe]


@pytest.fixture(scope="module")
def report(rollouts):
    fit = {"ok": False, "problems": ["R-hat 1.07 > 1.01 for <CL>"]}
    return risk_report(rollouts, SPEC, provenance={"fit_diagnostics": fit, "posterior_file": "post<1>.nc"})


def test_write_report_creates_the_three_files(tmp_path, report, rollouts):
    files = write_report(report, tmp_path / "out", results=rollouts)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["figures", "report.html", "report.json", "report.md"]  # no temporary files left
    back = RiskReport.from_json(files.json.read_text())
    assert back.to_json() == report.to_json()
    data = json.loads(files.json.read_text())
    assert data["provenance"]["fit"]["ok"] is False and "numpy" in data["provenance"]["versions"]
    assert {p.name for p in files.figures} == {"fan_0.png", "fan_1.png", "risk_curve.png", "epistemic.png",
                                               "efficacy_risk.png"}  # fmt: skip
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in files.figures)
    assert files.html.stat().st_size < 1_500_000


def test_html_is_self_contained_and_escaped(report, rollouts):
    page = render_html(report, report_figures(report, rollouts))
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "post&lt;1&gt;.nc" in page and "&lt;CL&gt;" in page
    # nothing is loaded from elsewhere: every src is an embedded PNG, no URLs at all
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert "Content-Security-Policy" in page


def test_verdict_and_warnings_come_first(report):
    page = render_html(report)
    first_table = page.index("<table")
    verdicts = [page.index(f"{p.verdict.decision}: P(violation)") for p in report.policies]
    assert all(v < first_table for v in verdicts)
    assert page.index("FIT DIAGNOSTICS FAILED") < first_table
    assert report.policy("unsafe").verdict.decision == "FAIL"
    assert "FAIL: P(violation) &gt; 5% with 95% confidence" in page
    md = render_markdown(report)
    head = md.split("## Policies")[0]
    assert "FAIL: P(violation) > 5% with 95% confidence" in head and "FIT DIAGNOSTICS FAILED" in head
    # table cells cannot be broken and no raw tag survives
    assert "&lt;script>" in md and "\\| \\*dose\\*" in md and "<script" not in md


def test_figures_are_reproducible_and_work_without_saved_paths(report, rollouts):
    assert risk_curve_figure(report) == risk_curve_figure(report)  # no timestamps: same bytes
    bare = rollouts[1].__class__(**{**rollouts[1].__dict__, "path_time": None, "path": {}})
    assert fan_chart(bare, SPEC).startswith(PNG_MAGIC)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "report.json"
    write_bytes_atomic(target, b"old")
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")  # fails mid-write
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert target.stat().st_mode & 0o777 == 0o644
