"""Tidy T1D tables (simglucose's shape, pump exports) -> cohorts for the glucose models."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsim.data import CohortFormatError
from medsim.data.t1d import T1DTableWarning, check_t1d_table, read_t1d_table

BASAL_U_PER_MIN = 0.0136  # simglucose adult: u2ss * BW / 6000
MEAL_ROWS = (100, 250)


def tidy(n_rows: int = 481, patients=("adult#001", "child#001")) -> pd.DataFrame:
    """simglucose's result shape: 3-minute rows, rates over the row, the last row's rates empty."""
    frames = []
    for k, name in enumerate(patients):
        t = np.arange(n_rows) * 3.0
        insulin = np.full(n_rows, BASAL_U_PER_MIN * (1 + 0.2 * k))
        cho = np.zeros(n_rows)
        for j, row in enumerate(r for r in MEAL_ROWS if r < n_rows - 1):
            insulin[row] += 2.0 + j  # a 6 U (then 9 U) bolus delivered over the 3-minute row
            cho[row] = 15.0  # 45 g over 3 minutes
        frame = pd.DataFrame(
            {
                "patient": name,
                "time_min": t,
                "bg_true": 120.0,
                "cgm": 110.0 + 20 * np.sin(t / 200.0),
                "cho_g_per_min": cho,
                "insulin_U_per_min": insulin,
            }
        )
        frame.loc[n_rows - 1, ["cho_g_per_min", "insulin_U_per_min"]] = np.nan
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def read_quietly(table, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", T1DTableWarning)
        return read_t1d_table(table, **kwargs)


def test_simglucose_shape_keeps_every_unit_of_insulin_and_gram_of_carbohydrate():
    table = tidy()
    cohort = read_quietly(table, cgm_every=15)
    assert cohort.ids == ("adult#001", "child#001")
    assert cohort.units["TIME"] == "min" and cohort.units["BASAL"] == "U/h"
    for k, s in enumerate(cohort.subjects):
        rows = table[table["patient"] == cohort.ids[k]]
        # CGM every 15 min of 0..1440 -> 97 readings, at multiples of 15
        assert s.n_obs == 97 and np.all(s.obs_time % 15 == 0) and np.all(s.obs_cmt == 3)
        insulin = s.dose_cmt == 1
        # rates act over their row's 3 minutes; the last row's rate is empty, so nothing is delivered after it
        expected_insulin = np.nansum(rows["insulin_U_per_min"]) * 3.0
        assert s.dose_amount[insulin].sum() == pytest.approx(expected_insulin, rel=1e-9)
        boluses = insulin & (s.dose_rate == 0)
        np.testing.assert_allclose(s.dose_amount[boluses], [6.0, 9.0])
        np.testing.assert_allclose(s.dose_time[boluses], [300.0, 750.0])
        np.testing.assert_allclose(s.dose_amount[s.dose_cmt == 2], [45.0, 45.0])
        assert s.covariates["BASAL"] == pytest.approx(BASAL_U_PER_MIN * (1 + 0.2 * k) * 60)


def test_every_reading_without_cgm_every():
    cohort = read_quietly(tidy(n_rows=21, patients=("a",)))
    assert cohort.subjects[0].n_obs == 21


@pytest.mark.parametrize(
    ("rename", "scale", "units"),
    [
        ({"insulin_U_per_min": "insulin_U_per_h"}, {"insulin_U_per_h": 60.0}, None),
        ({"insulin_U_per_min": "insulin"}, {}, {"insulin": "U/min"}),
        ({"insulin_U_per_min": "insulin_U"}, {"insulin_U": 3.0}, None),
        ({"cho_g_per_min": "cho_g"}, {"cho_g": 3.0}, None),
        ({"cho_g_per_min": "carbs"}, {"carbs": 3.0}, {"carbs": "g"}),
        ({"time_min": "time_h"}, {"time_h": 1 / 60.0}, None),
    ],
)
def test_the_same_data_in_other_units_gives_the_same_cohort(rename, scale, units):
    reference = read_quietly(tidy())
    table = tidy().rename(columns=rename)
    for column, factor in scale.items():
        table[column] = table[column] * factor
    other = read_quietly(table, units=units)
    for a, b in zip(reference.subjects, other.subjects, strict=True):
        np.testing.assert_allclose(a.obs_time, b.obs_time, rtol=1e-12)
        np.testing.assert_allclose(a.dose_amount, b.dose_amount, rtol=1e-9)
        np.testing.assert_allclose(a.dose_rate, b.dose_rate, rtol=1e-9)
        assert a.covariates["BASAL"] == pytest.approx(b.covariates["BASAL"], rel=1e-6)


def test_a_column_without_a_unit_is_an_error_naming_it():
    with pytest.raises(CohortFormatError) as err:
        read_quietly(tidy().rename(columns={"insulin_U_per_min": "insulin"}))
    (problem,) = err.value.problems
    assert problem.row == 1 and problem.column == "insulin"
    assert "U/min" in problem.message and "--unit insulin=" in problem.message


def test_a_unit_that_does_not_fit_the_quantity_is_an_error():
    with pytest.raises(CohortFormatError) as err:
        read_quietly(tidy().rename(columns={"cho_g_per_min": "cho_U_per_h"}))
    assert err.value.problems[0].column == "cho_U_per_h"


def test_u_per_h_values_in_a_u_per_min_column_are_an_implausible_basal_rate():
    """simglucose users' most frequent mistake: a rate in U/h labelled U/min (a basal of ~49 U/h)."""
    table = tidy()
    table["insulin_U_per_min"] *= 60.0
    with pytest.raises(CohortFormatError) as err:
        read_quietly(table)
    basal = [p for p in err.value.problems if "basal rate above" in p.message]
    assert [p.row for p in basal] == [2, 483]  # the first row of each subject (header = row 1)
    assert all(p.column == "insulin_U_per_min" and "U/h rather than U/min" in p.message for p in basal)


def test_u_per_min_values_in_a_u_per_h_column_are_too_small_a_basal_rate():
    with pytest.raises(CohortFormatError) as err:
        read_quietly(tidy().rename(columns={"insulin_U_per_min": "insulin_U_per_h"}))
    assert {p.row for p in err.value.problems} == {2, 483}
    assert all("below 0.02 U/h" in p.message for p in err.value.problems)


def test_grams_labelled_as_grams_per_minute_exceed_a_days_carbohydrate():
    table = tidy(n_rows=481)
    table["cho_g_per_min"] *= 40.0  # 1800 g per meal row would be read
    with pytest.raises(CohortFormatError) as err:
        read_quietly(table)
    assert any(p.column == "cho_g_per_min" and p.row == 102 for p in err.value.problems)


def test_mmol_per_litre_readings_get_a_hint():
    table = tidy()
    table["cgm"] = table["cgm"] / 18.0
    with pytest.raises(CohortFormatError) as err:
        read_quietly(table)
    assert "mmol/L" in err.value.problems[0].message
    converted = read_quietly(table.rename(columns={"cgm": "cgm_mmol_L"}))
    assert converted.subjects[0].obs_value[0] == pytest.approx(110.0 / 18.0 * 18.016)


def test_basal_covariate_without_a_basal_infusion_is_flagged():
    table = tidy(patients=("a",)).drop(columns=["insulin_U_per_min"])
    table["bolus_U"] = np.where(table["cho_g_per_min"] > 0, 5.0, 0.0)
    table["BASAL"] = 0.8
    with pytest.raises(CohortFormatError) as err:
        read_quietly(table)
    assert "BASAL covariate without a basal infusion" in err.value.problems[0].message
    assert err.value.problems[0].column == "BASAL"


def test_no_basal_insulin_at_all_is_an_error_naming_the_subject():
    table = tidy(patients=("a",)).drop(columns=["insulin_U_per_min"])
    with pytest.raises(CohortFormatError, match="subject a: no basal insulin recorded"):
        read_quietly(table)


def test_separate_basal_and_bolus_columns_and_a_checked_basal_covariate():
    table = tidy(patients=("a",)).drop(columns=["insulin_U_per_min"])
    table["basal_U_per_h"] = np.where(table.index % 100 == 0, 0.9, np.nan)  # a pump log: rate at changes only
    table["bolus_U"] = np.where(table["cho_g_per_min"] > 0, 4.0, np.nan)
    table["BASAL"] = 2.0
    report, cohort = check_t1d_table(table)
    assert cohort is not None
    s = cohort.subjects[0]
    assert s.covariates["BASAL"] == 2.0  # kept as given ...
    assert any("differs from the recorded median basal rate 0.9" in n.message for n in report.notices)  # ... flagged
    infusion = s.dose_rate > 0
    assert s.dose_amount[infusion].sum() == pytest.approx(0.9 / 60 * 481 * 3.0)
    np.testing.assert_allclose(s.dose_amount[(s.dose_cmt == 1) & ~infusion], [4.0, 4.0])


def test_time_going_backwards_names_the_rows():
    table = tidy(n_rows=20, patients=("a",))
    table.loc[5, "time_min"] = 3.0
    with pytest.raises(CohortFormatError) as err:
        read_quietly(table)
    problem = err.value.problems[0]
    assert (problem.row, problem.column) == (7, "time_min") and "row 6" in problem.message


def test_body_weight_is_checked_and_noted_when_the_model_has_no_weight_covariate():
    table = tidy(patients=("a",))
    table["weight_kg"] = 70.0
    report, cohort = check_t1d_table(table)
    assert cohort is not None and "WT" not in cohort.covariate_names
    assert any("body weight not used" in n.message for n in report.notices)
    table["weight_kg"] = 700.0
    with pytest.raises(CohortFormatError, match="body weight outside"):
        read_quietly(table)


def test_an_optional_weight_covariate_is_read_when_given_and_noted_when_not():
    """t1d_ou scales by body weight when the table has it; without the column every subject is at
    the reference weight and the reader says so; a column with a gap for one subject is refused."""
    table = tidy(patients=("a", "b"))
    report, cohort = check_t1d_table(table, model="t1d_ou")
    assert cohort is not None and "WT" not in cohort.covariate_names
    assert any("no body weight column" in n.message and "70 kg" in n.message for n in report.notices)
    assert not any(n.message.startswith("no WT column") for n in report.notices)  # said once, in T1D terms
    table["weight_kg"] = np.where(table["patient"] == "a", 35.0, 80.0)
    report, cohort = check_t1d_table(table, model="t1d_ou")
    assert cohort is not None and not any("body weight" in n.message for n in report.notices)
    weights = dict(zip(cohort.ids, (s.covariates["WT"] for s in cohort.subjects), strict=True))
    assert weights == {"a": 35.0, "b": 80.0}
    table.loc[table["patient"] == "b", "weight_kg"] = np.nan
    with pytest.raises(CohortFormatError, match="subject b: body weight"):
        read_quietly(table, model="t1d_ou")


def test_the_cohort_fits_the_glucose_model(tmp_path):
    from medsim.data import read_event_table, validate_event_table, write_event_table

    cohort = read_quietly(tidy(), cgm_every=15)
    path = write_event_table(cohort, tmp_path / "t1d.csv")
    assert validate_event_table(path, model="glucose_insulin").ok
    assert read_event_table(path) == cohort


# --------------------------------------------------------------------------- property-based
_cell = st.one_of(
    st.floats(min_value=-5, max_value=500),
    st.just(float("nan")),
    st.sampled_from(["", ".", "x", "1e400", "-0"]),
)
_headers = st.lists(
    st.sampled_from(
        [
            "cgm",
            "cho_g_per_min",
            "cho_g",
            "carbs",
            "insulin_U_per_min",
            "insulin_U_per_h",
            "insulin",
            "basal_U_per_h",
            "bolus_U",
            "BASAL",
            "weight_kg",
            "bg_true",
        ]
    ),
    min_size=1,
    max_size=5,
    unique=True,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=_headers,
    n=st.integers(min_value=1, max_value=12),
    data=st.data(),
    two_patients=st.booleans(),
    model=st.sampled_from(["glucose_insulin", "t1d_ou"]),
)
def test_random_tidy_tables_give_a_cohort_or_a_typed_error_naming_row_or_column(headers, n, data, two_patients, model):
    times = data.draw(st.lists(st.sampled_from([0.0, 3.0, 6.0, 9.0, 15.0, -3.0]), min_size=n, max_size=n))
    frame = pd.DataFrame(
        {
            "patient": ["p1"] * n if not two_patients else ["p1", "p2"] * (n // 2) + ["p1"] * (n % 2),
            "time_min": times,
        }
    )
    for h in headers:
        frame[h] = data.draw(st.lists(_cell, min_size=n, max_size=n))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cohort = read_t1d_table(
                frame.astype(object), cgm_every=data.draw(st.sampled_from([None, 3.0, 15.0])), model=model
            )
    except CohortFormatError as err:
        assert err.problems
        for problem in err.problems:
            assert problem.row is not None or problem.column is not None or "subject" in problem.message
            assert problem.message
    else:
        assert cohort.n_subjects >= 1
        assert all(s.covariates["BASAL"] > 0 for s in cohort.subjects)
        # t1d_ou's optional body weight: every subject has one when the column is there, none otherwise
        weighted = model == "t1d_ou" and "weight_kg" in headers
        assert all(("WT" in s.covariates) == weighted for s in cohort.subjects)
        assert all(2.0 <= s.covariates["WT"] <= 250.0 for s in cohort.subjects if weighted)


def test_cgm_goes_to_the_sensor_observable_of_a_model_that_has_one():
    """t1d_ou reads CGM on its interstitial sensor (cgm_mg_dL), not on the fingerstick (glucose_mg_dL)."""
    import medsim.models

    model = medsim.models.get("t1d_ou")
    sensor = next(c for c, name in model.obs_targets.items() if name == "cgm_mg_dL")
    plasma = next(c for c, name in model.obs_targets.items() if name == "glucose_mg_dL")
    assert sensor != plasma
    cohort = read_quietly(tidy(), cgm_every=15, model="t1d_ou")
    for s in cohort.subjects:
        assert s.n_obs == 97 and np.all(s.obs_cmt == sensor)


def test_readings_at_the_sensor_floor_and_ceiling_are_censored():
    table = tidy(n_rows=21, patients=("a",))
    table.loc[[2, 5], "cgm"] = [39.0, 38.5]  # at and below a 39 mg/dL floor
    table.loc[9, "cgm"] = 401.0  # above a 400 mg/dL ceiling
    cohort = read_quietly(table, cgm_limits=(39.0, 400.0))
    s = cohort.subjects[0]
    assert s.obs_cens.tolist() == [1 if k in (2, 5) else (-1 if k == 9 else 0) for k in range(21)]
    # a censored reading holds its limit (M3), not what the sensor printed
    np.testing.assert_allclose(s.obs_value[[2, 5, 9]], [39.0, 39.0, 400.0])
    # without limits every reading is a measurement, as before
    assert not read_quietly(table).subjects[0].obs_cens.any()
    report, _ = check_t1d_table(table, cgm_limits=(400.0, 39.0))
    assert [p.message for p in report.problems] == [
        "cgm_limits must be (floor, ceiling) in mg/dL with 0 <= floor < ceiling (inf: no ceiling)"
    ]
