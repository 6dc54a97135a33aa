"""Bundled datasets: contents as documented in SOURCES.md, and the unit checks recorded there."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

from medsim.data import UnknownDatasetError, available, load, validate_event_table


@pytest.fixture(scope="module")
def theoph():
    return load("theoph")


@pytest.fixture(scope="module")
def pheno():
    return load("pheno")


def test_available_matches_what_load_returns():
    infos = {d.name: d for d in available()}
    assert set(infos) == {"theoph", "pheno", "t1d_sim"}
    for name, info in infos.items():
        cohort = load(name)
        assert (cohort.n_subjects, cohort.n_observations, cohort.n_doses) == (
            info.n_subjects,
            info.n_observations,
            info.n_doses,
        )
        assert cohort.covariate_names == info.covariates
        assert dict(cohort.units) == dict(info.units)
        assert cohort.source == f"medsim:{name}" and cohort.name == name
        assert info.licence and info.source and info.model
    with pytest.raises(
        UnknownDatasetError, match="no bundled dataset 'warfarin'; bundled datasets: theoph, pheno, t1d_sim"
    ):
        load("warfarin")


def test_bundled_tables_pass_validation_against_their_models():
    for info in available():
        with resources.as_file(resources.files("medsim.data") / "bundled" / info.filename) as path:
            report = validate_event_table(path, model=info.model, units=info.units)
        assert report.ok, report.format()
        assert report.notices == ()


def test_theoph_layout(theoph):
    assert theoph.ids == tuple(str(i) for i in range(1, 13))
    for s in theoph.subjects:
        assert s.n_obs == 11 and s.n_dose == 1
        assert set(s.obs_cmt) == {2} and list(s.dose_cmt) == [1] and s.dose_time[0] == 0.0
        assert s.obs_time[0] == 0.0  # the time-0 (pre-dose) sample is kept
    first = theoph.subject("1")
    assert first.covariates["WT"] == 79.6
    assert first.dose_amount[0] == 319.992  # 4.02 mg/kg x 79.6 kg (R datasets::Theoph, subject 1)
    assert first.obs_value[0] == 0.74


def test_theoph_dose_is_in_mg_noncompartmental_clearance():
    # CL/F = dose / AUC(0-inf): trapezoid AUC plus C_last / lambda_z from the last three samples.
    cohort = load("theoph")
    clearance = []
    for s in cohort.subjects:
        slope = np.polyfit(s.obs_time[-3:], np.log(s.obs_value[-3:]), 1)[0]
        auc = np.trapezoid(s.obs_value, s.obs_time) + s.obs_value[-1] / -slope
        clearance.append(s.dose_amount[0] / auc)
    clearance = np.array(clearance)
    # Reference: nlmixr2 FOCEi CL = 2.75 L/h for these data (Fidler et al. 2019). Tolerance:
    # 3 standard errors of the mean over the 12 subjects (between-subject SD / sqrt(12)); NCA and
    # the model-based estimate differ by far less than that. Doses in mg/kg would give ~0.04 L/h.
    se = clearance.std(ddof=1) / np.sqrt(clearance.size)
    assert abs(clearance.mean() - 2.75) < 3 * se


def test_pheno_layout(pheno):
    assert pheno.n_subjects == 59 and pheno.n_observations == 155 and pheno.n_doses == 589
    first = pheno.subject("1")
    assert dict(first.covariates) == {"WGT": 1.4, "APGR": 7.0}
    np.testing.assert_array_equal(first.dose_amount[:2], [25.0, 3.5])
    np.testing.assert_array_equal(first.obs_time, [2.0, 112.5])
    np.testing.assert_array_equal(first.obs_value, [17.3, 31.0])
    assert all(set(s.obs_cmt) == {1} and set(s.dose_cmt) == {1} for s in pheno.subjects)
    assert all((s.dose_rate == 0).all() for s in pheno.subjects)


def test_pheno_amounts_are_mg_not_mg_per_kg(pheno):
    # First level after a single dose vs AMT / V with V = 0.984 L/kg x WGT (x 1.159 if APGR < 5)
    # and elimination CL/V = 0.0047/0.984 per h (NONMEM FOCE-I estimates; see SOURCES.md).
    ratio, weight = [], []
    for s in pheno.subjects:
        before = s.dose_time <= s.obs_time[0]
        if before.sum() != 1:
            continue
        wgt, apgr = s.covariates["WGT"], s.covariates["APGR"]
        volume = 0.984 * wgt * (1.159 if apgr < 5 else 1.0)
        decay = np.exp(-0.0047 / 0.984 * (s.obs_time[0] - s.dose_time[0]))
        ratio.append(s.obs_value[0] / (s.dose_amount[0] / volume * decay))
        weight.append(wgt)
    log_ratio, log_weight = np.log(ratio), np.log(weight)
    assert len(ratio) == 35
    slope, intercept = np.polyfit(log_weight, log_ratio, 1)
    residual = log_ratio - intercept - slope * log_weight
    slope_se = np.sqrt(residual.var(ddof=2) / ((log_weight - log_weight.mean()) ** 2).sum())
    # AMT in mg: no weight trend (slope 0) and ratio ~1. AMT in mg/kg: slope 1. Tolerance 3 SE of
    # the regression slope (0.10) and 3 SE of the mean log ratio (SD / sqrt(35)).
    assert abs(slope) < 3 * slope_se
    assert abs(slope - 1.0) > 3 * slope_se
    assert abs(log_ratio.mean()) < 3 * log_ratio.std(ddof=1) / np.sqrt(len(ratio))


def test_bundled_data_have_not_changed(theoph, pheno):
    # Pinned hashes of the shipped data (see Cohort.data_hash); update them, and SOURCES.md,
    # only when the bundled CSVs are deliberately re-extracted.
    assert theoph.data_hash() == "aa6c86d54845344f368861da0c40fe0f8b97635535dc685e7bb3605af4b7d804"
    assert pheno.data_hash() == "8caf3c1e7189c282b6bbf586be85e75e3b269bc5eba588207ecc272e796ce174"
