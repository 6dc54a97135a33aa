"""``medsim risk`` switches to closed-loop splitting when the plain estimate saw too few violations.

A tiny intravenous PK case (one compartment, prior draws, a fixed 20 mg dose every 4 h over
12 h) with an upper bound on the concentration set so that only a few of 8 patients cross it:
fewer than :data:`~medsim.policies.risk.rare.followup.MIN_VIOLATIONS`, so ``rare=auto`` runs splitting
on the same patients' closed loop within a budget of 300 path-equivalents.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import medsim.models as registry
from medsim.policies.evaluate import default_scenario, evaluate_policies
from medsim.policies.loading import parse_policy
from medsim.policies.protocol import PolicyContext
from medsim.policies.report.html import render_html
from medsim.policies.report.markdown import render_markdown
from medsim.policies.risk import RiskReport
from medsim.policies.risk.rare.followup import MIN_VIOLATIONS, with_rare_followup
from medsim.policies.spec import SpecError, parse_inline_spec
from medsim.population import PosteriorDraws

MODEL = registry.get("pk_iv_1cmt")
POLICY = "fixed:dose=20,every=4"
SPEC = "conc<=35;horizon=12h;epsilon=0.1;rare_budget=300"
DT = 0.05
SEED = 2


@pytest.fixture(scope="module")
def plain():
    """The plain evaluation (rare=off): its report, rollouts, patients and policy objects."""
    draws = PosteriorDraws.from_prior(MODEL, 2, seed=SEED)
    spec = parse_inline_spec(SPEC + ";rare=off").validate(MODEL)
    report, results = evaluate_policies(draws, [POLICY], spec, n=8, seed=SEED, dt=DT)
    from medsim.population import sample_population

    population = sample_population(draws, 8, seed=SEED)
    context = PolicyContext(model=MODEL, bounds=spec.bounds, draws=draws, dt=DT, scheme="milstein")
    return report, results, population, [parse_policy(POLICY, context=context)]


def _followup(plain):
    report, results, population, policies = plain
    auto = replace(report, spec=replace(report.spec, rare="auto"))
    return with_rare_followup(
        auto, results, policies, population, dt=DT, seed=SEED, scenario=default_scenario(MODEL, "auto", SEED)
    )


@pytest.fixture(scope="module")
def rare_report(plain):
    return _followup(plain)


@pytest.mark.slow  # the module fixture: one plain run and splitting, ~15 s on 2 cores
def test_off_disables_and_auto_switches(plain, rare_report):
    off = plain[0].policies[0]
    assert off.rare == ()
    crossed = int(np.any(plain[1][0].grid_violation.reshape(8, -1), axis=1).sum())
    assert crossed < MIN_VIOLATIONS  # the case is set up so that the switch is due
    (r,) = rare_report.policies[0].rare
    assert r.bound == "conc<=35" and r.plain_violations == crossed
    assert r.path_equivalents <= r.budget  # the budget is a hard limit (max_iterations)
    # Seeded, so this case's outcome is fixed: splitting reaches the bound with an interval.
    assert r.estimated and r.probability.lower < r.probability.value < r.probability.upper
    assert r.probability.level == pytest.approx(1 - 2 * 0.05)  # two-sided 90 %: one-sided 95 % upper
    assert "closed-loop splitting" in rare_report.policies[0].verdict.statement
    assert rare_report.policies[0].verdict.estimate.upper == r.probability.upper


@pytest.mark.slow  # the module fixture: one plain run and splitting, ~15 s on 2 cores
def test_same_seed_same_numbers(plain, rare_report):
    again = _followup(plain)
    assert again.to_json() == rare_report.to_json()


@pytest.mark.slow  # the module fixture: one plain run and splitting, ~15 s on 2 cores
def test_report_shows_it_and_round_trips(rare_report):
    back = RiskReport.from_json(rare_report.to_json())
    # Compared through JSON: nan fields (an interval not estimable) are not == themselves.
    assert back.to_json() == rare_report.to_json()
    assert type(back.policies[0].rare[0]) is type(rare_report.policies[0].rare[0])
    assert json.loads(rare_report.to_json())["policies"][0]["rare"][0]["bound"] == "conc<=35"
    md, html = render_markdown(rare_report), render_html(rare_report)
    for page in (md, html):
        assert "Rare-event estimate (closed-loop splitting)" in page
        assert "too few violations for the plain estimate" in page
        assert "path-equivalents" in page and "extinct replicas" in page
    r = rare_report.policies[0].rare[0]
    assert "could not be estimated" not in md and r.estimated


@pytest.mark.slow  # the module fixture: one plain run and splitting, ~15 s on 2 cores
def test_failed_splitting_never_reads_zero(rare_report):
    from medsim.policies.report import text

    r = rare_report.policies[0].rare[0]
    failed = replace(r, probability=None, estimate=None, failure="budget exhausted: test")
    p = replace(rare_report.policies[0], rare=(failed,))
    _, rows = text.rare_rows(p)
    assert rows[0][1] == "could not be estimated" and "0%" not in " ".join(rows[0])


def test_spec_key_rare():
    assert parse_inline_spec("conc<=35;horizon=12h").rare == "auto"
    spec = parse_inline_spec("conc<=35;horizon=12h;rare=ams;rare_budget=500")
    assert (spec.rare, spec.rare_budget) == ("ams", 500.0)
    assert parse_inline_spec(str(spec)) == spec
    with pytest.raises(SpecError, match="key 'rare' must be one of"):
        parse_inline_spec("conc<=35;horizon=12h;rare=splitting")
    with pytest.raises(SpecError, match="key 'rare' value 'subset' cannot run"):
        parse_inline_spec("conc<=35;horizon=12h;rare=subset").validate(MODEL)
    with pytest.raises(SpecError, match="rare_budget"):
        parse_inline_spec("conc<=35;horizon=12h;rare_budget=5")


def test_spec_from_in_the_horizons_unit_round_trips_exactly():
    # Found by the property test of spec files: 'from' was converted d -> min -> d and came back
    # one ulp off (91.92629667098771 read back as 91.9262966709877).
    from medsim.policies.spec import spec_from_mapping

    spec = spec_from_mapping({"bounds": ["conc<=1"], "horizon": "92.0d", "from": "91.92629667098771d"})
    assert spec.monitor_from == 91.92629667098771
    assert spec_from_mapping(spec.to_dict()).monitor_from == spec.monitor_from


@pytest.mark.slow  # a second plain run and splitting through the command, ~10 s on 2 cores
def test_medsim_risk_switches_with_its_budget_option(tmp_path, rare_report):
    from typer.testing import CliRunner

    import medsim.cli.risk_cmds  # noqa: F401  (registers the command)
    from medsim.cli import app

    out = tmp_path / "report"
    args = ["risk", "--prior", "pk_iv_1cmt", "--prior-draws", "2", "--policy", POLICY, "--n", "8"]
    args += ["--spec", SPEC.replace(";rare_budget=300", ""), "--rare-budget", "300", "--dt", str(DT)]
    args += ["--seed", str(SEED), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    # The command's patients, seed and budget are the fixture's: the same numbers.
    assert data["policies"][0]["rare"] == json.loads(rare_report.to_json())["policies"][0]["rare"]
    assert "Rare-event estimate (closed-loop splitting)" in (out / "report.md").read_text()
