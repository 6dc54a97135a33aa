"""Every number in a risk report is true: unknown support reads as unknown, an interval that
cannot be estimated says so, a share's interval stays in [0, 1], a report folder is one unit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from risk_fixtures import bm_rollout
from typer.testing import CliRunner

import medsim.cli.risk_cmds  # noqa: F401  (registers `risk` on the app)
from medsim.cli import app
from medsim.policies.report import render_html, render_markdown, write_report
from medsim.policies.report.text import pct_ci, time_ci
from medsim.policies.risk import RiskReport, risk_report
from medsim.policies.risk.compare import compare
from medsim.policies.risk.epistemic import epistemic_split
from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.first_violation import first_violation
from medsim.policies.risk.intervals import mean, quantile
from medsim.policies.spec import parse_inline_spec

SPEC = parse_inline_spec("x<=1,x>=-1.5;horizon=1h;epsilon=0.05;delta=0.05")


def _estimates(obj, path="report"):
    """Every Estimate in a report's JSON tree, with where it sits."""
    if isinstance(obj, dict):
        if {"value", "lower", "upper", "method"} <= set(obj):
            yield path, Estimate.from_dict(obj)
            return
        for k, v in obj.items():
            yield from _estimates(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _estimates(v, f"{path}[{i}]")


# ------------------------------------------------------------------ support: unknown is not 0 %


def test_unchecked_support_reads_not_checked_with_the_reason_never_0_percent():
    # `medsim risk POSTERIOR` reported "Support: 0% of simulated time outside the fitted cohort's
    # support" for a posterior without cohort ranges: the rollout had filled the fraction with 0.
    r = bm_rollout(n=40, n_intervals=2, substeps=4, sigma=0.3, bounds=SPEC.bounds, seed=1)
    assert r.out_of_support is None
    why = "post.nc records no cohort support (written by an earlier medsim); refit to check it"
    rep = risk_report([r], SPEC, provenance={"support_unknown": why})
    support = rep.policies[0].support
    assert not support.checked and not support.flagged and support.reason == why
    data = json.loads(rep.to_json())["policies"][0]["support"]
    assert data["share_of_time"] is None and data["patients_affected"] is None and data["reason"] == why
    md, page = render_markdown(rep, {}), render_html(rep, {})
    assert f"Support: not checked: {why}." in md
    assert "Support: not checked: post.nc records no cohort support" in page
    assert "outside the fitted cohort's support" not in md + page
    assert RiskReport.from_json(rep.to_json()).to_json() == rep.to_json()


def test_checked_support_still_reports_its_share():
    oos = np.zeros((40, 2))
    oos[:10, 1] = 1.0  # a quarter of the patients spend half their time outside
    r = bm_rollout(n=40, n_intervals=2, substeps=4, sigma=0.3, bounds=SPEC.bounds, seed=1, out_of_support=oos)
    support = risk_report([r], SPEC).policies[0].support
    assert support.checked and support.share_of_time.value == pytest.approx(0.125) and support.flagged


def test_risk_from_priors_says_why_support_is_not_checked(tmp_path):
    out = tmp_path / "report"
    spec = "conc<=40;horizon=12h;rare=off"
    args = ["risk", "--prior", "pk_iv_1cmt", "--policy", "fixed:dose=20,every=12", "--spec", spec]
    args += ["--n", "8", "--prior-draws", "4", "--dt", "0.1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    support = json.loads((out / "report.json").read_text())["policies"][0]["support"]
    assert support["share_of_time"] is None and "priors" in support["reason"]
    assert "Support: not checked: patients are drawn from the model's priors" in (out / "report.md").read_text()


# ------------------------------------------------------------------ intervals that cannot be estimated


def test_kaplan_meier_quantile_without_variance_has_no_interval():
    # "24.1 h [24.1, 24.1]" (se NaN): every patient violated at the same grid time.
    fv = first_violation("any", np.full(6, 24.1), np.full(6, 48.0), level=0.95, seed=0)
    q50 = fv.km_quantiles["q50"]
    assert q50.value == pytest.approx(24.1) and not q50.has_interval
    assert np.isnan(q50.lower) and np.isnan(q50.upper) and "Greenwood variance undefined" in q50.no_interval
    text = time_ci(q50, "h")
    assert text.startswith("24.1 h (interval not estimable: Greenwood") and "[" not in text


def test_kaplan_meier_quantile_with_defined_variance_keeps_its_interval():
    rng = np.random.default_rng(3)
    t = rng.uniform(0, 10, 200)
    fv = first_violation("any", t, np.full(200, 20.0), level=0.95, seed=0)
    q25 = fv.km_quantiles["q25"]  # the curve reaches 0.25 long before every patient at risk violates
    assert q25.has_interval and q25.lower < q25.value < q25.upper  # the band had collapsed onto the estimate
    few = first_violation("any", np.r_[1.0, 2.0, np.full(8, np.inf)], np.full(10, 10.0), level=0.95, seed=0)
    assert few.km_quantiles["q50"].value == np.inf and few.km_quantiles["q50"].has_interval
    assert few.km_quantiles["q05"].has_interval and few.km_quantiles["q05"].lower == 1.0
    none = first_violation("any", np.full(10, np.inf), np.full(10, 10.0), level=0.95, seed=0)
    assert all("needs events" in e.no_interval for e in none.km_quantiles.values())


def test_per_draw_quantiles_of_two_patients_per_draw_have_no_interval():
    # "median 50% [50%, 50%]" with 2 patients per draw: each per-draw risk is the mean of a 0 and a 1.
    p = np.tile([1.0, 0.0], 50)
    draw = np.repeat(np.arange(50), 2)
    split = epistemic_split(p, draw, epsilon=0.05, level=0.95, seed=0)
    q50 = split.quantiles["q50"]
    assert q50.value == 0.5 and not q50.has_interval and "Monte Carlo noise" in q50.no_interval
    assert pct_ci(q50).startswith("50% (interval not estimable:")


def test_per_draw_quantiles_keep_their_interval_when_draws_differ():
    rng = np.random.default_rng(0)
    risk = rng.beta(2, 20, 40)  # clearly different draws, 50 patients each
    draw = np.repeat(np.arange(40), 50)
    p = (rng.uniform(size=draw.size) < risk[draw]).astype(float)
    q50 = epistemic_split(p, draw, epsilon=0.05, level=0.95, seed=0).quantiles["q50"]
    assert q50.has_interval and q50.lower < q50.upper


def test_means_without_spread_and_quantiles_from_too_few_values_say_so():
    one = mean(np.array([3.0]), None, level=0.95, seed=0)
    same = mean(np.zeros(50), np.repeat(np.arange(10), 5), level=0.95, seed=0, nonnegative=True)
    assert not one.has_interval and "one patient" in one.no_interval
    assert not same.has_interval and "all 50 values equal 0" in same.no_interval
    two = quantile(np.array([1.0, 2.0]), 0.5, level=0.95, seed=0)  # was [-inf, inf]
    assert not two.has_interval and "too few" in two.no_interval
    # a share of zero events keeps its honest one-sided interval (the zero-event bound)
    share = mean(np.zeros(50), None, level=0.95, seed=0, unit_interval=True)
    assert share.has_interval and share.lower == 0.0 and share.upper > 0.0


def test_identical_policies_have_no_interval_for_their_difference():
    r = bm_rollout(n=60, n_intervals=2, substeps=4, sigma=0.3, bounds=SPEC.bounds, seed=1)
    p = np.asarray(r.draw, float) % 2 * 0.1
    c = compare(r, r, p, p, level=0.95)
    assert c.risk_difference.value == 0.0 and not c.risk_difference.has_interval


def test_estimate_without_interval_round_trips_and_formats():
    e = Estimate.without_interval(0.5, 2, "order-statistic", "too few", seed=1)
    assert Estimate.from_dict(json.loads(json.dumps(e.to_dict()))).to_dict() == e.to_dict()
    assert e.format(100, unit="%") == "50% (interval not estimable: too few)"
    old = {"value": 0.5, "lower": 0.4, "upper": 0.6, "n": 10, "method": "clt"}  # reports written before
    assert Estimate.from_dict(old).has_interval


# ------------------------------------------------------------------ shares stay in [0, 1]


def test_fractions_never_get_a_negative_lower_bound():
    # time below range: almost every patient 0, a few 1 %: the CLT interval reached below 0.
    rng = np.random.default_rng(1)
    below = np.where(rng.uniform(size=200) < 0.03, 0.01, 0.0)
    efficacy = {"time_below_range": below, "time_in_range": 1.0 - below, "total_dose_cmt1": below * 10}
    r = bm_rollout(n=200, n_intervals=2, substeps=4, sigma=0.3, bounds=SPEC.bounds, seed=1, efficacy=efficacy)
    p = risk_report([r], SPEC).policies[0]
    tbr = p.efficacy["time_below_range"]
    assert 0.0 <= tbr.lower <= tbr.value <= tbr.upper <= 1.0
    assert p.efficacy["total_dose_cmt1"].lower >= 0.0


def _degenerate_report(tmp_seed: int = 0) -> RiskReport:
    """Few patients, two per draw, most never near a bound: where fake intervals used to appear."""
    draw = np.repeat(np.arange(4), 2)
    r = bm_rollout(n=8, n_intervals=2, substeps=4, sigma=0.05, bounds=SPEC.bounds, seed=tmp_seed, draw=draw)
    return risk_report([r, bm_rollout(n=8, n_intervals=2, substeps=4, x0=0.98, sigma=0.05, bounds=SPEC.bounds,
                                      seed=tmp_seed, draw=draw, policy="near")], SPEC)  # fmt: skip


def test_no_report_estimate_has_a_fake_interval_and_shares_stay_in_0_1():
    for seed in range(3):
        rep = _degenerate_report(seed)
        for where, e in _estimates(json.loads(rep.to_json())):
            if not e.has_interval:
                assert e.no_interval and np.isnan(e.lower) and np.isnan(e.upper), where
                continue
            assert e.lower <= e.value <= e.upper or np.isnan(e.value), where
            if e.lower == e.upper and np.isfinite(e.lower):
                # only quantiles of variables with atoms may tie: a movement of exactly 0, or a first
                # violation on the sub-step grid shared by several patients (its variance defined)
                assert e.method.startswith(("order-statistic", "kaplan-meier")), where
            shares = (".bridge", ".seen", ".grid", ".between", ".detected", "curve", "support", "fraction", "share")
            if any(s in where for s in shares) and "risk_difference" not in where:
                assert 0.0 <= e.lower and e.upper <= 1.0, where
        md = render_markdown(rep, {})
        assert "interval not estimable" in md


# ------------------------------------------------------------------ the report folder is one unit


def test_rerun_with_fewer_policies_leaves_no_figure_of_the_old_run(tmp_path):
    # A 1-policy rerun into a 2-policy report folder kept the old fan_1.png.
    draw = np.repeat(np.arange(20), 5)
    kw = dict(n=100, n_intervals=2, substeps=4, sigma=0.3, bounds=SPEC.bounds, draw=draw, seed=1, n_paths=5)
    a, b = bm_rollout(policy="a", **kw), bm_rollout(policy="b", x0=0.3, **kw)
    out = tmp_path / "report"
    write_report(risk_report([a, b], SPEC), out, results=[a, b])
    assert (out / "figures" / "fan_1.png").exists()
    (out / "posterior.nc").write_bytes(b"fit")  # what `medsim demo` keeps beside its report
    files = write_report(risk_report([a], SPEC), out, results=[a])
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(p.name for p in files.figures)
    assert not (out / "figures" / "fan_1.png").exists()
    assert (out / "posterior.nc").read_bytes() == b"fit"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary left beside it
    assert "fan_1" not in (out / "report.md").read_text()


def test_failed_render_keeps_the_old_report_whole(tmp_path, monkeypatch):
    r = bm_rollout(n=40, n_intervals=2, substeps=4, sigma=0.3, bounds=SPEC.bounds, seed=1, policy="a")
    out = tmp_path / "report"
    write_report(risk_report([r], SPEC), out, results=[r])
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("renderer failed after the figures were written")

    monkeypatch.setattr("medsim.policies.report.write.render_html", broken)
    r2 = bm_rollout(n=40, n_intervals=2, substeps=4, sigma=0.3, bounds=SPEC.bounds, seed=2, policy="b")
    with pytest.raises(RuntimeError, match="renderer failed"):
        write_report(risk_report([r2], SPEC), out, results=[r2])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
