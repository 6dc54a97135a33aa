"""Safety specifications: inline / TOML / JSON parsing, validation against a model, errors."""

from __future__ import annotations

import json

import pytest

from medsim.models import get
from medsim.policies.spec import (
    SafetySpec,
    SpecError,
    TargetRange,
    parse_inline_spec,
    spec_from_mapping,
)
from medsim.policies.spec_file import load_spec, parse_spec
from medsim.simulate.types import Bound

PK = get("pk_oral_1cmt")  # time in h, observable "conc"
GLUCOSE = get("glucose_insulin")  # time in min, observable "glucose_mg_dL"


def test_inline_spec_from_the_issue():
    spec = parse_inline_spec("conc<=20,conc>=5;horizon=72h;epsilon=0.05;delta=0.05")
    assert spec.bounds == (Bound("conc", 20.0, "upper"), Bound("conc", 5.0, "lower"))
    assert (spec.horizon, spec.time_unit, spec.epsilon, spec.delta) == (72.0, "h", 0.05, 0.05)
    assert spec.confidence == pytest.approx(0.95)
    assert spec.observables == ("conc",)


def test_inline_bounds_key():
    spec = parse_inline_spec("bounds=conc<=20,conc>=2;horizon=3d")
    assert [b.name for b in spec.bounds] == ["conc<=20", "conc>=2"] and spec.time_unit == "d"


def test_inline_target_and_defaults():
    spec = parse_inline_spec("glucose_mg_dL>=70;glucose_mg_dL<=250;horizon=1d;target=70<=glucose_mg_dL<=180")
    assert spec.target == TargetRange("glucose_mg_dL", 70.0, 180.0)
    assert (spec.epsilon, spec.delta) == (0.05, 0.05)
    assert len(spec.bounds) == 2


@pytest.mark.parametrize(
    ("horizon", "model", "expected"),
    [("72h", PK, 72.0), ("3d", PK, 72.0), ("90min", PK, 1.5), ("1d", GLUCOSE, 1440.0), ("2 hours", GLUCOSE, 120.0)],
)
def test_horizon_is_converted_to_the_model_time_unit(horizon, model, expected):
    obs = model.observable_names[0]
    spec = parse_spec(f"{obs}<=1000;horizon={horizon}", model=model)
    assert spec.time_unit == model.time_unit
    assert spec.horizon == pytest.approx(expected)  # exact unit factors: 60 min/h, 24 h/d


def test_bare_horizon_takes_the_model_unit():
    spec = parse_spec("glucose_mg_dL>=70;horizon=600", model=GLUCOSE)
    assert (spec.horizon, spec.time_unit) == (600.0, "min")


def test_toml_file(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(
        'horizon = "72h"\nepsilon = 0.1\ndelta = 0.01\ntarget = "10<=conc<=15"\n'
        'bounds = ["conc<=20", {observable = "conc", lower = 5}]\n'
    )
    spec = load_spec(path)
    assert spec.bounds == (Bound("conc", 20.0, "upper"), Bound("conc", 5.0, "lower"))
    assert (spec.epsilon, spec.delta, spec.source) == (0.1, 0.01, str(path))
    assert parse_spec(str(path), model=PK).horizon == 72.0


def test_json_file_and_round_trip(tmp_path):
    path = tmp_path / "spec.json"
    data = {"bounds": [{"observable": "conc", "value": 20, "side": "upper"}], "horizon": 3, "time_unit": "d"}
    path.write_text(json.dumps(data))
    spec = parse_spec(path, model=PK)
    assert spec.horizon == 72.0
    again = spec_from_mapping(spec.to_dict(), source="copy")
    assert again.bounds == spec.bounds and again.horizon == spec.horizon and again.time_unit == "h"


def test_unknown_observable_lists_the_models_observables():
    with pytest.raises(SpecError, match=r"no observable 'glucose'.*\['conc'\]"):
        parse_spec("glucose<=20;horizon=72h", model=PK)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("conc<=20;horizon=72h;epsilon=1.5", r"inline: key 'epsilon' must lie strictly between 0 and 1, got 1.5"),
        ("conc<=20;horizon=72h;delta=0", r"key 'delta' must lie strictly between 0 and 1, got 0.0"),
        ("conc<=20;horizon=-1h", r"key 'horizon' must be a positive"),
        ("conc<=20;horizon=72 fortnights", r"unknown time unit 'fortnights'"),
        ("conc<=20;horizon=soon", r"key 'horizon' value 'soon' is not a duration"),
        ("conc<=20;horizon=72h;epsilon=lots", r"key 'epsilon' must be a number, got 'lots'"),
        ("conc<=20;horizon=72h;gamma=2", r"unknown key\(s\) \['gamma'\]"),
        ("horizon=72h", r"missing key 'bounds'"),
        ("conc<=20", r"missing key 'horizon'"),
        ("conc=<20;horizon=72h", r"not a bound"),
        ("conc<=20,conc<=20;horizon=72h", r"lists \['conc<=20'\] more than once"),
        ("conc<=20;horizon=72h;target=15<=conc<=10", r"key 'target' needs low < high"),
    ],
)
def test_inline_errors_name_key_and_value(text, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(text, model=PK)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("horizon = \n")
    with pytest.raises(SpecError, match=r"bad\.toml: not valid TOML"):
        load_spec(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"bounds": [{"observable": "conc", "upper": 20, "lower": 5}], "horizon": "1h"}))
    with pytest.raises(SpecError, match=r"wrong\.json: key 'bounds' entry .* exactly one of 'upper', 'lower'"):
        load_spec(wrong)
    with pytest.raises(SpecError, match=r"missing\.toml: cannot read the spec file"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(SpecError, match=r"spec\.yaml: a spec file must end in \.json or \.toml"):
        load_spec(tmp_path / "spec.yaml")


def test_spec_without_unit_cannot_convert_until_validated():
    spec = SafetySpec((Bound("conc", 20.0),), 72.0)
    with pytest.raises(SpecError, match="validate the spec against a model"):
        spec.horizon_in("h")
    assert spec.validate(PK).horizon_in("d") == pytest.approx(3.0)


def test_monitoring_start_parses_converts_and_validates():
    spec = parse_inline_spec("conc<=20,conc>=5;horizon=3d;from=24h")
    assert spec.monitor_from == pytest.approx(1.0) and spec.time_unit == "d"
    checked = spec.validate(get("pk_oral_1cmt"))
    assert checked.horizon == pytest.approx(72.0) and checked.monitor_from == pytest.approx(24.0)
    assert "from=24h" in str(checked)
    assert spec_from_mapping(checked.to_dict()).monitor_from == pytest.approx(24.0)
    with pytest.raises(SpecError, match="key 'from'"):
        parse_inline_spec("conc<=20;horizon=24h;from=30h")
    with pytest.raises(SpecError, match="key 'from' value 'soon'"):
        parse_inline_spec("conc<=20;horizon=24h;from=soon")
