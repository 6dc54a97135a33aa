"""Reading and writing event tables: round trips, ADDL, infusions, mapping, units, defaults."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from medsim.data import (
    Cohort,
    CohortFormatError,
    CohortWarning,
    read_event_table,
    validate_event_table,
    write_event_table,
)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_round_trip_gives_the_same_cohort_and_hash(small_cohort, tmp_path, suffix):
    path = write_event_table(small_cohort, tmp_path / f"small{suffix}")
    assert (tmp_path / f"small{suffix}.units.json").exists()
    back = read_event_table(path)
    assert back == small_cohort
    assert back.data_hash() == small_cohort.data_hash()
    assert back.name == "small" and back.source == str(path)
    assert dict(back.units) == dict(small_cohort.units)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_hash_is_independent_of_subject_block_order(small_cohort, tmp_path):
    frame = small_cohort.to_event_table()
    blocks = [frame[frame["ID"] == i] for i in reversed(small_cohort.ids)]
    a = read_event_table(frame, units=small_cohort.units)
    b = read_event_table(pd.concat(blocks, ignore_index=True), units=small_cohort.units)
    assert b.ids == ("10", "2", "1")
    assert a.data_hash() == b.data_hash() == small_cohort.data_hash()


def test_write_is_atomic_when_writing_fails(small_cohort, tmp_path, monkeypatch):
    target = tmp_path / "keep.csv"
    target.write_text("old content\n")

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        write_event_table(small_cohort, target)
    assert target.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]


def test_addl_expands_to_exact_times(write_text):
    path = write_text(
        "addl.csv",
        "ID,TIME,DV,AMT,EVID,CMT,MDV,RATE,ADDL,II\n"
        "1,0,.,100,1,1,1,0,3,12\n"
        "1,1,5,.,0,1,0,.,.,.\n"
        "1,0.5,.,20,1,2,1,10,30,0.1\n",
    )
    with pytest.raises(CohortFormatError, match=r"row 4, column TIME: value '0\.5': TIME decreases"):
        read_event_table(path)
    path.write_text(path.read_text().replace("1,0.5,.,20", "1,1.5,.,20"))
    s = read_event_table(path).subject("1")
    bolus = s.dose_cmt == 1
    np.testing.assert_array_equal(s.dose_time[bolus], [0.0, 12.0, 24.0, 36.0])
    np.testing.assert_array_equal(s.dose_amount[bolus], [100.0] * 4)
    infusion = s.dose_cmt == 2
    # Exactly t + k * II (one rounding each); adding II thirty times instead differs from this in
    # 26 of the 31 times, by up to 4 units in the last place, so the comparison is exact on purpose.
    np.testing.assert_array_equal(s.dose_time[infusion], 1.5 + np.arange(31) * 0.1)
    np.testing.assert_array_equal(s.dose_rate[infusion], np.full(31, 10.0))
    assert s.n_dose == 4 + 31


def test_infusions_from_rate_and_duration(write_text):
    path = write_text(
        "inf.csv",
        "ID,TIME,DV,AMT,EVID,CMT,MDV,RATE,DUR\n1,0,.,100,1,1,1,50,.\n1,4,.,30,1,1,1,0,2\n1,5,2,0,0,1,0,0,0\n",
    )
    s = read_event_table(path).subject("1")
    np.testing.assert_array_equal(s.dose_rate, [50.0, 15.0])  # RATE as given; AMT / DUR = 30 / 2
    assert read_event_table(path).summary()["infusions"] == 2


def test_nonmem_defaults_for_missing_columns(write_text):
    path = write_text("minimal.csv", "ID,TIME,DV,AMT\n1,0,.,100\n1,1,4.2,0\n1,2,3.9,.\n")
    s = read_event_table(path).subject("1")
    np.testing.assert_array_equal(s.dose_time, [0.0])  # EVID 1 from AMT > 0
    np.testing.assert_array_equal(s.obs_time, [1.0, 2.0])
    np.testing.assert_array_equal(s.obs_cmt, [1, 1])  # CMT default 1
    np.testing.assert_array_equal(s.dose_rate, [0.0])  # RATE default 0 (bolus)
    no_doses = write_text("obs_only.csv", "ID,TIME,DV\nA,0,1\nA,1,2\n")
    assert read_event_table(no_doses).n_doses == 0


def test_missing_evid_cell_gets_default_with_warning(write_text):
    path = write_text("evid.csv", "ID,TIME,DV,AMT,EVID\n1,0,.,100,.\n1,1,4.2,0,0\n")
    with pytest.warns(CohortWarning, match=r"column EVID, row 2: EVID is missing; the NONMEM default was used"):
        cohort = read_event_table(path)
    assert cohort.n_doses == 1


def test_ignored_records_are_warned_with_their_rows(write_text):
    path = write_text(
        "ignored.csv",
        "ID,TIME,DV,AMT,EVID,CMT,MDV\n1,0,.,100,1,1,1\n1,1,4.2,0,0,1,1\n1,2,.,0,2,1,1\n\n1,3,3.0,0,0,1,0\n",
    )
    with pytest.warns(CohortWarning) as caught:
        cohort = read_event_table(path)
    messages = [str(w.message) for w in caught]
    assert any("column MDV, row 3: observation records with MDV = 1 are ignored" in m for m in messages)
    assert any("column EVID, row 4: EVID 2 (other-event) records are ignored" in m for m in messages)
    assert any("row 5: blank lines are ignored" in m for m in messages)
    np.testing.assert_array_equal(cohort.subject("1").obs_time, [3.0])
    report = validate_event_table(path)
    assert report.ok and len(report.notices) == 3 and report.summary["ignored_rows"] == 3


def test_comment_records_and_pre_dose_samples_are_reported(write_text):
    path = write_text(
        "c.csv",
        "C,ID,TIME,DV,AMT,EVID\n,1,0,.,100,1\n,1,0,2.0,0,0\nC,1,1,99,0,0\n,1,2,1.0,0,0\n",
    )
    report = validate_event_table(path)
    assert report.ok
    texts = report.warnings
    assert any("column C, row 4: comment records" in t for t in texts)
    assert any("column TIME, row 3: observations listed after a dose at the same time" in t for t in texts)
    with pytest.warns(CohortWarning):
        np.testing.assert_array_equal(read_event_table(path).subject("1").obs_value, [2.0, 1.0])


def test_column_mapping_lower_case_and_column_map(write_text):
    nlmixr = write_text("nlmixr.csv", "id,time,dv,amt,evid,cmt,WT\n1,0,0,320,1,1,70\n1,1,5,0,0,2,70\n")
    c = read_event_table(nlmixr)
    assert c.n_observations == 1 and c.covariate_names == ("WT",)
    raw = write_text("r.csv", "Subject,Time,conc,Dose,weight\n1,0,.,320,70\n1,1,5,.,70\n")
    mapped = read_event_table(raw, column_map={"subject": "ID", "CONC": "DV", "dose": "AMT", "weight": "WT"})
    assert mapped.covariate_names == ("WT",) and mapped.n_doses == 1
    with pytest.raises(CohortFormatError, match="required column ID"):
        read_event_table(raw)
    with pytest.warns(CohortWarning, match="column_map entry 'nope' -> 'X' matches no column"):
        read_event_table(nlmixr, column_map={"nope": "X"})


def test_units_sidecar_is_read_and_overridden(write_text):
    path = write_text("u.csv", "ID,TIME,DV,AMT,WT\n1,0,.,10,70\n1,1,2,0,70\n")
    (path.parent / "u.csv.units.json").write_text(json.dumps({"time": "h", "DV": "mg/L", "WT": "kg"}))
    assert dict(read_event_table(path).units) == {"TIME": "h", "DV": "mg/L", "WT": "kg"}
    assert read_event_table(path, units={"TIME": "min"}).units["TIME"] == "min"
    (path.parent / "u.csv.units.json").write_text("[1, 2]")
    with pytest.raises(CohortFormatError, match=r"u\.csv\.units\.json: expected a JSON object of column name -> unit"):
        read_event_table(path)


def test_covariate_selection_rules(write_text):
    path = write_text(
        "cov.csv",
        "ID,TIME,DV,AMT,WT,SITE,TAD,CRCL\n"
        "1,0,.,10,70,north,0,90\n1,1,2,0,70,north,1,95\n2,0,.,10,80,south,0,60\n2,2,3,0,80,south,2,60\n",
    )
    with pytest.warns(CohortWarning) as caught:
        auto = read_event_table(path)
    assert auto.covariate_names == ("WT",)
    ignored = " ".join(str(w.message) for w in caught)
    assert "column SITE: column ignored: it holds text" in ignored
    assert "column TAD: column ignored: it changes within subjects (first on row 3)" in ignored
    with pytest.warns(CohortWarning) as caught:
        explicit = read_event_table(path, covariates=["WT", "CRCL"], constant_covariates=["WT"])
    messages = [str(w.message) for w in caught]
    assert any("column CRCL, row 3: covariate changes within subject 1; the baseline" in m for m in messages)
    assert any("columns not listed in covariates= are ignored: SITE, TAD" in m for m in messages)
    assert explicit.subject("1").covariates["CRCL"] == 90.0  # first-record value
    with pytest.raises(
        CohortFormatError, match="row 3, column CRCL: value '95': covariate CRCL changes within subject 1"
    ):
        read_event_table(path, covariates=["WT", "CRCL"])
    with pytest.raises(ValueError, match=r"\['amt'\] are reserved NONMEM columns"):
        read_event_table(path, covariates=["WT", "amt"])


def test_problems_from_several_rows_are_all_listed_with_the_file_name(write_text):
    path = write_text("many.csv", "ID,TIME,DV,AMT,EVID\n1,-1,.,100,1\n1,0,x,0,0\n1,1,.,0,0\n")
    with pytest.raises(CohortFormatError) as err:
        read_event_table(path)
    message = str(err.value)
    assert f"{path}: 3 problems (rows are numbered as in a spreadsheet" in message
    assert f"1. {path}, row 2, column TIME: value '-1': negative time" in message
    assert f"2. {path}, row 3, column DV: value 'x': not a number" in message
    assert f"3. {path}, row 4, column DV: value '.': observation record (EVID 0, MDV 0) without a DV" in message
    assert [p.row for p in err.value.problems] == [2, 3, 4]
    assert isinstance(err.value, ValueError)


def test_dataframe_input_reports_the_same_rows_as_csv(write_text):
    text = "ID,TIME,DV,AMT,EVID\n1,0,.,100,1\n1,2,1.0,0,0\n1,1,2.0,0,0\n"
    from_csv = validate_event_table(write_text("df.csv", text))
    frame = pd.DataFrame(
        {"ID": [1, 1, 1], "TIME": [0.0, 2.0, 1.0], "DV": [np.nan, 1.0, 2.0], "AMT": [100.0, 0, 0], "EVID": [1, 0, 0]}
    )
    from_frame = validate_event_table(frame)
    assert (
        [(p.row, p.column) for p in from_csv.problems]
        == [(p.row, p.column) for p in from_frame.problems]
        == [(4, "TIME")]
    )
    assert from_frame.source == "<DataFrame>"


def test_model_checks(write_text):
    theoph_like = "ID,TIME,DV,AMT,EVID,CMT\n1,0,.,320,1,1\n1,1,5,0,0,2\n"
    path = write_text("m.csv", theoph_like)
    assert validate_event_table(path, model="pk_oral_1cmt").ok
    assert not validate_event_table(path, model="pk_oral_1cmt", units={"TIME": "min"}).ok
    report = validate_event_table(path, model="pk_oral_1cmt", units={"TIME": "min"})
    assert report.problems[0].format() == (
        "column TIME: value 'min': time unit differs from the 'h' model 'pk_oral_1cmt' works in; expected TIME "
        "(and RATE, II, DUR) in h"
    )
    from medsim.models import get

    glucose = validate_event_table(path, model=get("glucose_insulin"))
    assert {(p.row, p.column) for p in glucose.problems} == {(1, "BASAL"), (3, "CMT")}


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="event table not found"):
        read_event_table(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match=r"expected a name ending in \.csv, \.csv\.gz, \.parquet, \.pq"):
        read_event_table(tmp_path / "table.xlsx")
    with pytest.raises(ValueError, match="cannot tell the table format"):
        write_event_table(Cohort(()), tmp_path / "out.txt")


def test_subjects_without_observations_are_kept_with_a_notice(write_text):
    path = write_text("empty_subject.csv", "ID,TIME,DV,AMT,EVID\n1,0,.,10,1\n1,1,2,0,0\n2,0,.,10,1\n")
    with pytest.warns(CohortWarning, match="row 4: subjects without observations: 2; they are kept"):
        cohort = read_event_table(path)
    assert cohort.subject("2").n_obs == 0 and cohort.summary()["subjects_without_observations"] == 1


def test_validating_100k_rows(tmp_path):
    """A large table validates completely (its speed is measured in benchmarks/data.py)."""
    rng = np.random.default_rng(0)
    n_subjects, per = 1000, 100
    evid = np.tile((np.arange(per) % 10 == 0).astype(int), n_subjects)
    frame = pd.DataFrame(
        {
            "ID": np.repeat(np.arange(1, n_subjects + 1), per),
            "TIME": np.tile(np.arange(per, dtype=float), n_subjects),
            "DV": np.where(evid == 1, np.nan, rng.lognormal(size=evid.size).round(4)),
            "AMT": np.where(evid == 1, 100.0, 0.0),
            "EVID": evid,
            "WT": np.repeat(rng.uniform(50, 90, n_subjects).round(1), per),
        }
    )
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False, na_rep=".")
    report = validate_event_table(path)
    assert report.ok and report.summary["observations"] == 90_000
    assert report.summary["subjects"] == n_subjects
    assert os.path.getsize(path) > 1_000_000


def test_wrong_separator_gets_a_hint(write_text):
    path = write_text("semicolon.csv", "ID;TIME;DV\n1;0;2\n")
    report = validate_event_table(path)
    assert report.problems[0].format() == (
        "row 1, column ID: required column ID (the subject identifier) is missing (the header looks separated by "
        "';'; expected comma-separated values)"
    )
