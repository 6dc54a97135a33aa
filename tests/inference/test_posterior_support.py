"""The posterior records the fitted cohort's support, so `medsim risk` can check it (and says
"not checked" for a posterior written before the record existed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from inference_synthetic import oral_cohort
from typer.testing import CliRunner

import medsim.cli.risk_cmds  # noqa: F401  (registers `risk` on the app)
import medsim.models as registry
from medsim.cli import app
from medsim.inference import Posterior, fit
from medsim.inference.cohort_support import SUPPORT_ATTR, cohort_support, support_ranges
from medsim.inference.posterior import PosteriorFormatError

MODEL = registry.get("pk_oral_1cmt")


def test_cohort_support_records_the_observed_ranges():
    cohort = oral_cohort(3)
    padded = cohort.padded()
    rec = cohort_support(cohort, MODEL)
    assert rec["observables"]["conc"] == [padded.obs_value.min(), padded.obs_value.max()]
    assert rec["bolus"] == {"1": [320.0, 320.0]} and rec["rate"] == {}
    assert rec["covariates"]["WT"] == [padded.covariates["WT"].min(), padded.covariates["WT"].max()]
    assert rec["time_span"] == [0.0, float(padded.obs_time.max())] and rec["time_unit"] == "h"
    assert support_ranges(json.loads(json.dumps(rec))) == {
        "conc": (padded.obs_value.min(), padded.obs_value.max()),
        "bolus_cmt1": (320.0, 320.0),
    }


def test_infusion_support_starts_at_zero():
    cohort = oral_cohort(2)
    p = cohort.padded()
    infused = type(p)(**{**p.__dict__, "dose_rate": np.full(p.dose_rate.shape, 40.0)})
    rec = cohort_support(infused, MODEL)
    assert rec["rate"] == {"1": [0.0, 40.0]} and rec["bolus"] == {}


@pytest.mark.slow
def test_risk_checks_support_of_a_new_posterior_and_says_not_checked_for_an_old_one(tmp_path):
    # The reported failure: "Support: 0% of simulated time outside the fitted cohort's support"
    # for a posterior that carried no cohort ranges.
    post = fit(oral_cohort(3), MODEL, method="svi", svi_steps=50, draws=10, seed=0)
    new = post.save(tmp_path / "new.nc")
    assert Posterior.load(new).support() == support_ranges(cohort_support(oral_cohort(3), MODEL))
    post.idata.posterior.attrs.pop(SUPPORT_ATTR)
    old = Posterior(post.idata, MODEL).save(tmp_path / "old.nc")
    assert Posterior.load(old).support() is None
    out = tmp_path / "report"
    args = ["risk", str(old), "--policy", "fixed:dose=320,every=12", "--spec", "conc<=20;horizon=12h;rare=off"]
    result = CliRunner().invoke(app, [*args, "--n", "4", "--dt", "0.1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    unknown = json.loads((out / "report.json").read_text())["policies"][0]["support"]
    md = (out / "report.md").read_text()
    assert unknown["share_of_time"] is None and "old.nc records no cohort support" in unknown["reason"]
    assert "Support: not checked:" in md and "0% of simulated time" not in md


def test_a_malformed_support_record_is_a_format_error(tmp_path):
    fake = type("Fake", (), {"attrs": property(lambda self: {SUPPORT_ATTR: "not json"})})()
    with pytest.raises(PosteriorFormatError, match="cohort_support"):
        Posterior.support_record(fake)
