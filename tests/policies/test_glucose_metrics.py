"""Glucose consensus metrics and the AGP, cross-checked against iglu-python.

The shared traces are the CGM records of the bundled ``t1d_sim`` cohort (simglucose's
UVA/Padova patients, CGM every 15 min for 3 days, ``medsim/data/bundled/SOURCES.md``): an
independent simulator's glucose, with hypoglycaemia below 54 mg/dL (subjects 0 and 4), a trace
that stays in 70-180 mg/dL (subject 2) and one above 250 mg/dL (subject 3).

Tolerance: both implementations evaluate the same closed-form formulas in float64 on the same
readings, so they agree to rounding (relative 1e-9; shares are exact ratios of counts). The one
exception is where LBGI and HBGI split the readings: iglu at 112.5 mg/dL, medsim at the root of
Kovatchev's risk function (112.517 mg/dL). A reading in between adds at most
10 f(112.5)^2 = 8.3e-7 per reading to medsim's LBGI only, so those two get an absolute tolerance of
1e-6.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import medsim.data
from medsim.policies.risk.agp import ambulatory_profile
from medsim.policies.risk.glucose import DEFINITIONS, glucose_metrics, per_patient

iglu = pytest.importorskip("iglu_python", reason="iglu-python (test extra) is not installed")

SUBJECTS = (0, 2, 3, 4)
RTOL = 1e-9


@pytest.fixture(scope="module")
def traces() -> tuple[np.ndarray, pd.DataFrame]:
    padded = medsim.data.load("t1d_sim").padded()
    rows, frames = [], []
    for i in SUBJECTS:
        ok = padded.obs_mask[i] & (padded.obs_cmt[i] == 3)
        g = np.asarray(padded.obs_value[i][ok], np.float64)
        t = np.asarray(padded.obs_time[i][ok], np.float64)
        rows.append(g)
        time = pd.Timestamp("2020-01-01") + pd.to_timedelta(t, unit="min")
        frames.append(pd.DataFrame({"id": f"s{i}", "time": time, "gl": g}))
    width = max(r.size for r in rows)
    trace = np.full((len(rows), width), np.nan)
    for k, r in enumerate(rows):
        trace[k, : r.size] = r
    return trace, pd.concat(frames, ignore_index=True)


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    return df.sort_values("id")[name].to_numpy(np.float64)


def test_traces_cover_hypo_and_hyperglycaemia(traces):
    trace, _ = traces
    assert (np.nanmin(trace, axis=1) < 54).sum() >= 2 and (np.nanmax(trace, axis=1) > 250).any()
    assert ((trace >= 70) & (trace <= 180) | np.isnan(trace)).all(axis=1).any()


def test_every_metric_matches_iglu(traces):
    trace, df = traces
    ours = per_patient(trace)
    inr = iglu.in_range_percent(df, target_ranges=[[70, 180]])
    below = iglu.below_percent(df, targets_below=[54, 70])
    above = iglu.above_percent(df, targets_above=[180, 250])
    reference = {
        "time_in_range": _col(inr, "in_range_70_180") / 100,
        "time_below_70": _col(below, "below_70") / 100,
        "time_below_54": _col(below, "below_54") / 100,
        "time_above_180": _col(above, "above_180") / 100,
        "time_above_250": _col(above, "above_250") / 100,
        "mean_glucose": _col(iglu.mean_glu(df), "mean"),
        "gmi": _col(iglu.gmi(df), "GMI"),
        "cv": _col(iglu.cv_glu(df), "CV") / 100,
        "lbgi": _col(iglu.lbgi(df), "LBGI"),
        "hbgi": _col(iglu.hbgi(df), "HBGI"),
    }
    assert set(reference) == {d.name for d in DEFINITIONS}
    for name, ref in reference.items():
        atol = 1e-6 if name in ("lbgi", "hbgi") else 1e-12
        np.testing.assert_allclose(ours[name], ref, rtol=RTOL, atol=atol, err_msg=name)
    assert ours["time_below_54"][0] > 0  # the hypoglycaemic trace is among them


def test_population_summary_marks_targets(traces):
    trace, _ = traces
    gm = glucose_metrics(trace, np.arange(trace.shape[0]), step_min=15.0, level=0.95, seed=0)
    values = per_patient(trace)
    tir = gm.metric("time_in_range")
    assert tir.mean.value == pytest.approx(values["time_in_range"].mean(), rel=1e-12)
    assert tir.definition.target == (">", 0.70)
    assert tir.meets_target.value == pytest.approx(np.mean(values["time_in_range"] > 0.70), rel=1e-12)
    assert gm.metric("mean_glucose").meets_target is None  # no consensus target
    assert gm.n_patients == trace.shape[0] and gm.reading_interval_min == 15.0


def test_agp_percentiles_by_clock_time():
    """Each bin pools the readings at its clock time over every day and patient; a clock offset
    shifts the profile, and the median's bootstrap interval contains the median."""
    rng = np.random.default_rng(3)
    step_h = 0.25
    t = np.arange(int(48 / step_h)) * step_h  # two days every 15 min
    base = 120 + 40 * np.sin(2 * np.pi * t / 24)
    trace = base[None, :] + rng.normal(0, 10, (40, t.size))
    draw = np.repeat(np.arange(20), 2)
    agp = ambulatory_profile(trace, step_h, draw, seed=1)
    k = 9  # the bin 02:15-02:30
    pooled = trace[:, (np.floor(t % 24 * 4) == k)].ravel()
    assert agp.percentiles["p50"][k] == pytest.approx(np.percentile(pooled, 50), rel=1e-12)
    assert agp.percentiles["p05"][k] == pytest.approx(np.percentile(pooled, 5), rel=1e-12)
    lo, hi = np.array(agp.median_lower), np.array(agp.median_upper)
    assert np.all(lo <= np.array(agp.percentiles["p50"]) + 1e-9) and np.all(np.array(agp.percentiles["p50"]) <= hi)
    shifted = ambulatory_profile(trace, step_h, draw, clock_start_h=6.0, seed=1)
    assert shifted.percentiles["p50"][(k + 24) % 96] == pytest.approx(agp.percentiles["p50"][k], rel=1e-12)
