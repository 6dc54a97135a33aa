"""The glucose section and the units of a risk report, and every report kind in a browser.

Rollouts are Brownian toy rollouts (``risk_fixtures``) carrying a synthetic CGM-grid glucose
trace, so the rendering is tested without simulating a glucose model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from risk_fixtures import bm_rollout

import medsim.models as registry
from medsim.policies.report import render_html, render_markdown, write_report
from medsim.policies.report.text import policy_labels
from medsim.policies.risk import RiskReport, risk_report
from medsim.policies.risk.glucose import per_patient
from medsim.policies.spec import parse_inline_spec

SPEC = parse_inline_spec("x<=1,x>=-1.5;horizon=1h;epsilon=0.05;delta=0.05")
LONG = "safe_timing:eps=0.05,base=tdm,base.target=7,base.every=12,base.dose=320"
GLUCOSE = registry.get("glucose_insulin")
ROOT = Path(__file__).resolve().parents[2]
#: The workspace's screenshot tool (``../shared/tools/screenshot-html`` beside the checkout, or beside
#: the folder of worktrees); MEDSIM_SCREENSHOT_HTML names another.
SCREENSHOTS = [Path(p) for p in os.environ.get("MEDSIM_SCREENSHOT_HTML", "").split(os.pathsep) if p] + [
    ROOT.parent / "shared/tools/screenshot-html",
    ROOT.parent.parent / "shared/tools/screenshot-html",
]


def _with_trace(result, level: float, seed: int):
    """A 1 h rollout with glucose every 5 min around ``level`` mg/dL (12 readings per patient)."""
    rng = np.random.default_rng(seed)
    n = result.n_patients
    trace = level + 25.0 * rng.standard_normal((n, 12)) + 10.0 * rng.standard_normal((n, 1))
    return replace(result, trace={"glucose_mg_dL": np.clip(trace, 30.0, None)}, trace_step=5.0 / 60.0)


@pytest.fixture(scope="module")
def rollouts():
    draw = np.repeat(np.arange(40), 5)
    kw = dict(n=200, n_intervals=4, substeps=8, sigma=0.35, bounds=SPEC.bounds, draw=draw, n_paths=20)
    dose = {"total_dose_cmt1": np.full(200, 12.5), "total_dose_cmt2": np.full(200, 150.0)}
    low = bm_rollout(x0=-0.2, policy="basal_bolus", efficacy=dose, seed=1, **kw)
    high = bm_rollout(x0=0.3, policy=LONG, efficacy=dose, seed=2, **kw)
    return [_with_trace(low, 85.0, 3), _with_trace(high, 190.0, 4)]


@pytest.fixture(scope="module")
def report(rollouts):
    return risk_report(rollouts, SPEC, model=GLUCOSE)


@pytest.fixture(scope="module")
def twin_report(rollouts):
    twins = [replace(r, subject=np.full(r.n_patients, "adult#003")) for r in rollouts]
    return risk_report(twins, SPEC, model=GLUCOSE)


def test_consensus_metrics_are_the_mean_of_each_patients_metrics(report, rollouts):
    for p, r in zip(report.policies, rollouts, strict=True):
        values = per_patient(r.trace["glucose_mg_dL"])
        for name in ("time_in_range", "time_below_54", "mean_glucose", "cv", "lbgi"):
            assert p.glucose.metric(name).mean.value == pytest.approx(values[name].mean(), rel=1e-12)
        assert p.agp is not None and len(p.agp.clock_h) == 96
    hypo = report.policies[0].glucose.metric("time_below_70").mean
    assert hypo.value > 0.1 and hypo.has_interval  # the low trace has hypoglycaemia


def test_glucose_report_opens_with_the_consensus_table_and_agp(report, rollouts, tmp_path):
    files = write_report(report, tmp_path / "r", results=rollouts)
    md = files.markdown.read_text()
    consensus = md.index("## Glucose: international consensus metrics")
    assert consensus < md.index("## Ambulatory glucose profile") < md.index("## Policies")
    assert "| time below 54 mg/dL (%) | < 1% |" in md and "| coefficient of variation (CV) (%) | ≤ 36% |" in md
    assert {"agp.png", "time_in_ranges.png"} <= {p.name for p in files.figures}
    assert "figures/agp.png" in md
    back = RiskReport.from_json(files.json.read_text())
    assert back.to_json() == report.to_json()
    assert back.policies[1].glucose.metric("time_above_250").definition.target == ("<", 0.05)


def test_every_number_is_named_and_has_its_unit(report):
    md = render_markdown(report)
    html = render_html(report)
    for text in (md, html):
        assert "total_dose_cmt" not in text
        assert "total insulin (U)" in text and "total carbohydrate (g)" in text
        assert not re.search(r"\d\.\d+e[+-]\d", text)  # no 1.25e+03-style numbers
        assert "one-sided 95%" in text and "two-sided 95%" in text
        assert "alarm, false only" in text
    # the efficacy doses carry their unit; shares are percent
    row = next(line for line in md.splitlines() if line.startswith("| basal_bolus | 12.5 U"))
    assert "150 g" in row


def test_long_policy_names_get_short_labels_and_a_spec_table(report):
    labels = policy_labels(report)
    assert labels == {"basal_bolus": "basal_bolus", LONG: "safe_timing"}
    md = render_markdown(report)
    assert f"| safe_timing | {LONG} |" in md
    assert "## safe_timing" in md and f"## {LONG}" not in md


def test_personalized_report_says_whose_twin_it_is(twin_report, report):
    assert twin_report.twin_of == "adult#003" and report.twin_of == ""
    assert "# medsim risk report: brownian_drift, digital twins of subject adult#003" in render_markdown(twin_report)
    assert "digital twins of subject adult#003</h1>" in render_html(twin_report)
    assert json.loads(twin_report.to_json())["twin_of"] == "adult#003"


def _nonblank_png(path: Path) -> bool:
    from PIL import Image

    image = np.asarray(Image.open(path).convert("L"), float)
    return image.shape[0] > 500 and float(image.std()) > 5.0


@pytest.mark.slow
def test_every_report_kind_renders_in_chromium(tmp_path, rollouts, report, twin_report):
    """Population (Brownian, no glucose), glucose and personalized reports in headless Chromium:
    each gives a page image with content (not a blank or error page)."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (headless rendering check)")
    tool = next((p for p in SCREENSHOTS if p.is_file()), None)
    if tool is None:
        pytest.skip(f"no screenshot tool at {[str(p) for p in SCREENSHOTS]} (set MEDSIM_SCREENSHOT_HTML)")
    plain = risk_report([replace(r, trace={}, trace_step=float("nan")) for r in rollouts], SPEC)
    for name, rep in (("population", plain), ("glucose", report), ("personalized", twin_report)):
        files = write_report(rep, tmp_path / name, results=rollouts)
        shot = tmp_path / f"{name}.png"
        subprocess.run([str(tool), str(files.html), str(shot), "1200x2400"], check=True, timeout=120)
        assert shot.exists() and _nonblank_png(shot), name
