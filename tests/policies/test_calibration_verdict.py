"""No PASS from a model that failed its calibration gate; forced and unchecked models are said so."""

from __future__ import annotations

import numpy as np
import pytest
from risk_fixtures import bm_rollout

from medsim.models.gate import CalibrationGate, Criterion
from medsim.policies.report import render_html, render_markdown
from medsim.policies.risk import RiskReport, risk_report
from medsim.policies.spec import parse_inline_spec

# Brownian paths from 0 with sigma 0.1 over 1 h against x <= 1 (10 SD): practically never violated, so
# the verdict is PASS from a trusted model (zero-event bound 1 - 0.05^(1/n_eff) < 50 %).
SPEC = parse_inline_spec("x<=1;horizon=1h;epsilon=0.5")
FAILED = CalibrationGate(
    status="failed",
    criteria=(
        Criterion("coverage_0.9", 0.98, 0.85, 0.95, "passed", "90% intervals covered 0.980 (accepted 0.85-0.95)"),
        Criterion(
            "relative_width_0.9", 1.05, None, 0.8, "failed", "mean 90% width 240 mg/dL = 1.05 x the held-out range"
        ),
    ),
    n_points=120,
    n_subjects=12,
)


@pytest.fixture(scope="module")
def rollout():
    return bm_rollout(n=200, n_intervals=4, substeps=4, sigma=0.1, seed=3, draw=np.repeat(np.arange(40), 5))


def test_a_trusted_model_passes(rollout):
    passed = CalibrationGate(status="passed", criteria=(), n_points=120, n_subjects=12)
    rep = risk_report([rollout], SPEC, provenance={"calibration": passed})
    assert rep.policies[0].verdict.decision == "PASS" and rep.warnings == ()


def test_a_miscalibrated_model_gets_no_pass_and_the_report_leads_with_it(rollout):
    trusted = risk_report([rollout], SPEC)
    assert trusted.policies[0].verdict.decision == "PASS"  # the same rollout, no gate stated
    rep = risk_report([rollout], SPEC, provenance={"calibration": FAILED})
    p = rep.policies[0]
    assert p.verdict.decision == "UNDECIDED" and p.sequential.decision != "PASS"
    assert p.verdict.statement.startswith("MISCALIBRATED model, no PASS")
    assert rep.warnings[0].startswith("MISCALIBRATED on 120 held-out measurements of 12 subjects: mean 90% width 240")
    for text in (render_markdown(rep), render_html(rep)):
        head = text[: text.index("Safe set")]
        assert "MISCALIBRATED model, no PASS" in head and "240 mg/dL" in head and "PASS: P(violation)" not in head
    back = RiskReport.from_json(rep.to_json())  # the typed record survives the report file
    assert back.provenance.calibration == FAILED and back.provenance.calibration_forced is False


def test_forcing_keeps_the_verdict_and_records_it(rollout):
    rep = risk_report([rollout], SPEC, provenance={"calibration": FAILED, "calibration_forced": True})
    p = rep.policies[0]
    assert p.verdict.decision == "PASS" and "calibration gate overridden with --force" in p.verdict.statement
    assert rep.provenance.calibration_forced is True and "overridden with --force" in rep.warnings[0]
    assert RiskReport.from_json(rep.to_json()).provenance.calibration_forced is True


def test_an_unchecked_model_says_so_first(rollout):
    rep = risk_report([rollout], SPEC, provenance={"calibration": CalibrationGate.unchecked("no check stored")})
    p = rep.policies[0]
    assert p.verdict.decision == "PASS"
    assert p.verdict.statement.endswith("(model calibration not checked on held-out data)")
    assert rep.warnings[0].startswith("CALIBRATION NOT CHECKED")


def test_every_report_states_the_gate_beside_the_safe_set(rollout):
    """A passed gate is shown with its figures, a missing record reads "not checked", never nothing."""
    passed = CalibrationGate(
        status="passed",
        criteria=(Criterion("coverage_0.9", 0.9, 0.85, 1.0, "passed", "90% intervals covered 0.900"),),
        n_points=120,
        n_subjects=12,
    )
    for prov, expected in (({"calibration": passed}, "90% intervals covered 0.900"), ({}, "not checked")):
        rep = risk_report([rollout], SPEC, provenance=prov)
        for text in (render_markdown(rep), render_html(rep)):
            line = text[text.index("Model calibration:") :].split("\n")[0]
            assert expected in line
