"""The scores of benchmarks/external_t1d.py on inputs small enough to compute by hand."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.external_t1d import as_reported, score, summary_lines, truncate
from benchmarks.t1d_metrics import (
    auc,
    brier,
    brier_constant,
    count_check,
    coverage_by_range,
    event_probability,
    interval_scores,
    rmse,
)


def test_interval_scores_by_hand():
    # 5 draws 0..4 of two quantities; central 50 %: numpy's linear quantiles 1 and 3 (width 2).
    draws = np.array([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0], [4.0, 14.0]])
    out = interval_scores(draws, np.array([2.5, 14.5]), 0.5)
    assert out == {"coverage": 0.5, "width": 2.0, "n": 2}  # 2.5 in [1, 3]; 14.5 not in [11, 13]
    out90 = interval_scores(draws, np.array([0.1, 14.5]), 0.9)  # [0.2, 3.8] and [10.2, 13.8]
    assert out90["coverage"] == 0.0 and out90["width"] == pytest.approx(3.6)


def test_coverage_by_range_by_hand():
    # draws 0..100 (101 values) for each of 5 truths: the 90 % interval is [5, 95] for every one
    draws = np.repeat(np.arange(101.0)[:, None], 5, axis=1)
    truth = np.array([2.0, 40.0, 60.0, 96.0, 75.0])
    out = {r["range"]: r for r in coverage_by_range(draws, truth, 0.9)}
    assert out["<54"] == {"range": "<54", "n": 2, "coverage": 0.5, "below": 0.5, "above": 0.0}
    assert out["54-69"] == {"range": "54-69", "n": 1, "coverage": 1.0, "below": 0.0, "above": 0.0}
    assert out["70-180"] == {"range": "70-180", "n": 2, "coverage": 0.5, "below": 0.0, "above": 0.5}
    # a range without a true value is unknown, never 0 % or 100 %
    assert out[">250"] == {"range": ">250", "n": 0, "coverage": None, "below": None, "above": None}
    # the edges follow the consensus: 54 is level 1, 70 and 180 in range, anything above 180 high,
    # 250 level 1, above it level 2
    values = np.array([53.9, 54.0, 70.0, 180.0, 180.01, 250.0, 250.01])
    edges = {r["range"]: r["n"] for r in coverage_by_range(np.zeros((3, values.size)), values, 0.9)}
    assert edges == {"<54": 1, "54-69": 1, "70-180": 2, "181-250": 2, ">250": 1}


def test_rmse_brier_and_the_constant_forecast_by_hand():
    assert rmse(np.array([1.0, 2.0]), np.array([4.0, 6.0])) == pytest.approx(np.sqrt((9 + 16) / 2))
    p, y = np.array([0.9, 0.2, 0.6, 0.0]), np.array([1, 0, 0, 0])
    assert brier(p, y) == pytest.approx((0.01 + 0.04 + 0.36 + 0.0) / 4)
    assert brier_constant(y) == pytest.approx(0.25 * 0.75)  # the observed rate, 1 in 4
    assert brier(np.full(4, 0.25), y) == pytest.approx(brier_constant(y))


def test_auc_by_hand_with_ties():
    # events 0.8, 0.4; non-events 0.4, 0.1: pairs (0.8>0.4) (0.8>0.1) (0.4=0.4 -> 1/2) (0.4>0.1) = 3.5 of 4
    assert auc(np.array([0.8, 0.4, 0.4, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(3.5 / 4)
    assert auc(np.array([0.1, 0.9]), np.array([1, 0])) == 0.0
    assert auc(np.array([0.3, 0.5]), np.array([0, 0])) is None


def test_count_check_uses_the_binomial_range_of_the_observed_count():
    # 5 of 12 observed: Binomial(12, 5/12) central 95 % range is 2..8 (scipy.stats.binom.ppf).
    y = np.array([1] * 5 + [0] * 7)
    inside = count_check(np.full(12, 0.5), y)  # expected count 6
    assert (inside["low"], inside["high"], inside["observed"], inside["inside"]) == (2.0, 8.0, 5, True)
    assert inside["sum_p"] == pytest.approx(6.0)
    assert count_check(np.full(12, 0.8), y)["inside"] is False  # 9.6, as in the collapsed fits


def test_event_probability_is_the_share_of_paths_whose_minimum_crosses():
    paths = np.array([[[80.0, 69.0], [100.0, 90.0]], [[75.0, 72.0], [60.0, 90.0]]])  # (R=2, S=2, T=2)
    np.testing.assert_allclose(event_probability(paths, 70.0), [0.5, 0.5])


def test_score_puts_the_pieces_together():
    # one subject, two CGM times, three grid points; every draw equals the truth -> full coverage, width 0
    truth = {
        "bg_cgm": np.array([[100.0, 65.0]]),
        "cgm": np.array([[102.0, 66.0]]),
        "bg_grid": np.array([[100.0, 80.0, 65.0]]),
        "naive": np.array([110.0]),
    }
    latent = np.repeat(truth["bg_cgm"][None], 4, axis=0)
    out = score(latent, latent + 2.0 * np.array([[[1.0, 0.5]]]), np.repeat(truth["bg_grid"][None], 4, axis=0), truth)
    assert out["coverage90_bg"] == 1.0 and out["width90_bg"] == 0.0
    assert out["coverage90_cgm"] == 1.0
    assert out["rmse_median_bg"] == 0.0 and out["rmse_naive_bg"] == pytest.approx(np.sqrt((100 + 45**2) / 2))
    assert out["p_hypo"] == [1.0] and out["n_hypo_observed"] == 1 and out["brier_hypo"] == 0.0
    assert out["brier_constant"] == 0.0 and out["auc_hypo"] is None and out["n_patients"] == 1
    # the true minimum 65 is below 70 but not below 54: no level-2 event, and every path agrees
    assert out["p_hypo54"] == [0.0] and out["n_hypo54_observed"] == 0 and out["brier_hypo54"] == 0.0
    assert out["sum_p_hypo54"] == 0.0 and out["auc_hypo54"] is None
    by_range = {r["range"]: r["n"] for r in out["coverage90_bg_by_range"]}
    assert by_range == {"<54": 0, "54-69": 1, "70-180": 1, "181-250": 0, ">250": 0}
    # the printed summary names every range, an empty one as "none" (not as 0 % covered)
    result = {**out, "model": "m", "method": "svi", "gate": {"status": "passed"}, "total_seconds": 1.0}
    head, level2, ranges = summary_lines("c", result)
    assert level2 == "  P(< 54 mg/dL): Brier 0.000 (const 0.000), AUC None, sum p 0.0 vs 0"
    assert head.startswith("c m svi: 90% cover bg 1.00 (width 0)")
    assert ranges.endswith(
        "<54 none, 54-69 1.00 of 1 (0.00 below, 0.00 above), "
        "70-180 1.00 of 1 (0.00 below, 0.00 above), 181-250 none, >250 none"
    )


def test_truncate_cuts_a_running_infusion_at_the_end_of_training():
    from medsim.data import Cohort

    cohort = Cohort.from_arrays(
        ["a"],
        obs_time=[np.array([0.0, 100.0, 200.0])],
        obs_value=[np.array([1.0, 2.0, 3.0])],
        dose_time=[np.array([0.0, 50.0, 150.0])],
        dose_amount=[np.array([3.0, 5.0, 7.0])],
        dose_rate=[np.array([0.01, 0.0, 0.0])],
        obs_cens=[np.array([0, 1, 0])],
    )
    s = truncate(cohort, 120.0).subjects[0]
    np.testing.assert_allclose(s.obs_time, [0.0, 100.0])
    assert s.obs_cens.tolist() == [0, 1]  # a reading at the CGM floor stays censored (--cgm-limits)
    np.testing.assert_allclose(s.dose_time, [0.0, 50.0])
    np.testing.assert_allclose(s.dose_amount, [1.2, 5.0])  # 0.01 U/min for 120 min; the bolus at 150 dropped


def test_cgm_readings_are_predicted_on_the_models_sensor_observable():
    # t1d_ou's CGM readings are interstitial glucose plus sensor error (cgm_mg_dL); scoring them
    # against plasma glucose (glucose_mg_dL) was the benchmark's earlier defect.
    import medsim.models
    from benchmarks.external_t1d import cgm_observable

    assert cgm_observable(medsim.models.get("t1d_ou")) == "cgm_mg_dL"
    assert cgm_observable(medsim.models.get("glucose_insulin")) == "glucose_mg_dL"


def test_screen_cohort_leaves_out_a_collapsed_patient_and_names_missing_columns():
    import pandas as pd

    from benchmarks.external_t1d import screen_cohort

    rows = []
    for patient, bg in (
        ("adult#001", [120.0, 110.0, 95.0]),
        ("child#008", [60.0, 0.0, -0.4]),
        ("child#009", [80, None, 70]),
    ):
        for i, g in enumerate(bg):
            rows.append(
                {
                    "patient": patient,
                    "time_min": 3.0 * i,
                    "bg_true": g,
                    "cgm": 100.0,
                    "cho_g_per_min": 0.0,
                    "insulin_U_per_min": 0.01,
                }
            )
    tidy = pd.DataFrame(rows)
    kept, excluded = screen_cohort(tidy, "c")
    assert kept["patient"].unique().tolist() == ["adult#001"]
    assert set(excluded) == {"child#008", "child#009"}
    assert "2 of 3 rows, first at t = 3 min" in excluded["child#008"]
    assert "1 of 3 rows, first at t = 3 min" in excluded["child#009"]
    with pytest.raises(ValueError, match=r"cohort 'c': missing columns \['bg_true'\]"):
        screen_cohort(tidy.drop(columns=["bg_true"]), "c")
    with pytest.raises(ValueError, match="no patient left"):
        screen_cohort(tidy[tidy["patient"] == "child#008"], "c")


def test_a_reading_at_the_cgm_floor_is_covered_when_the_sensor_would_report_it():
    # predicted glucose 20-60 mg/dL: 10 % of the draws below 39, so the sensor reports 39 for them
    draws = np.linspace(20.0, 60.0, 201)[:, None]
    floor_reading = np.array([39.0])
    raw = interval_scores(draws, floor_reading, 0.9)
    reported = interval_scores(as_reported(draws, (39.0, 400.0)), floor_reading, 0.9)
    assert raw["coverage"] == 1.0 and reported["coverage"] == 1.0  # 39 inside [22, 58] either way
    # truth at the floor, forecast well above it: a miss however it is read
    high = np.linspace(60.0, 100.0, 201)[:, None]
    assert interval_scores(as_reported(high, (39.0, 400.0)), floor_reading, 0.9)["coverage"] == 0.0
    # forecast mostly below the floor: as raw draws the interval [2, 38] misses 39, as readings it is [39, 39]
    low = np.linspace(0.0, 40.0, 201)[:, None]
    assert interval_scores(low, floor_reading, 0.9)["coverage"] == 0.0
    assert interval_scores(as_reported(low, (39.0, 400.0)), floor_reading, 0.9)["coverage"] == 1.0
    assert as_reported(low, None) is not None and np.array_equal(as_reported(low, None), low)


def test_fix_is_checked_against_every_model_before_any_work(capsys):
    from benchmarks.external_t1d import main

    for bad in (["--fix", "nope"], ["--fix", "Vg=0"], ["--fix", "Vg,Vg"]):
        with pytest.raises(SystemExit) as stop:
            main(["--models", "uva_padova", *bad])  # no cohort given: any work would start simglucose
        assert stop.value.code == 2
    assert "cannot fix 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # held in uva_padova, but t1d_ou has no such parameter
        main(["--models", "uva_padova,t1d_ou", "--fix", "Vg"])
    assert "cannot fix 'Vg'" in capsys.readouterr().err


def test_coarse_svi_steps_are_checked_before_any_work(capsys):
    from benchmarks.external_t1d import main

    for bad, message in (
        (["--svi-coarse-steps", "5500"], "[1, 5400] for svi_steps 6000"),
        (["--quick", "--svi-coarse-steps", "290"], "[1, 270]"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(bad)  # no cohort given: any work would start simglucose
        assert stop.value.code == 2
        assert message in capsys.readouterr().err


def test_output_folders_are_checked_before_any_work(tmp_path, capsys):
    from benchmarks.external_t1d import main

    taken = tmp_path / "a_file"
    taken.write_text("keep me")
    for option in ("--save-posteriors", "--write-cohorts"):
        with pytest.raises(SystemExit) as stop:
            main([option, str(taken)])  # no cohort given: any work would start simglucose
        assert stop.value.code == 2
        assert f"{taken} exists and is not a folder" in capsys.readouterr().err
    assert taken.read_text() == "keep me"


def test_generation_workers_are_checked_before_any_work(capsys):
    from benchmarks.external_t1d import main

    with pytest.raises(SystemExit) as stop:
        main(["--workers", "0"])  # no cohort given: any work would start simglucose
    assert stop.value.code == 2 and "--workers must be >= 1; got 0" in capsys.readouterr().err


def test_each_t1d_model_has_an_interstitial_observable_the_script_scores():
    import medsim.models
    from benchmarks.external_t1d import INTERSTITIAL

    for name in ("t1d_ou", "uva_padova"):
        assert any(o in medsim.models.get(name).observable_names for o in INTERSTITIAL)


def test_a_fit_shows_its_progress_at_most_once_a_minute_and_at_its_end(capsys, monkeypatch):
    import benchmarks.external_t1d as script

    clock = iter([30.0, 61.0, 62.0, 62.4])
    monkeypatch.setattr(script.time, "perf_counter", lambda: next(clock))
    progress = script.progress_printer("t1d_ou svi fit", start=0.0)
    for done in (250, 500, 750, 1000):  # at 30 s (quiet), 61 s, 62 s (quiet), the end
        progress(done, 1000)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["t1d_ou svi fit: 500 of 1000 (61 s)", "t1d_ou svi fit: 1000 of 1000 (62 s)"]
