"""Safety specs that would make a report lie: self-chosen bound names, empty safe sets, bad numbers."""

from __future__ import annotations

import json

import pytest

from medsim.models import get
from medsim.policies.spec import SafetySpec, SpecError, TargetRange, spec_from_mapping
from medsim.policies.spec_file import load_spec, parse_spec
from medsim.simulate.types import Bound

PK = get("pk_oral_1cmt")  # time in h, observable "conc"


def _json_spec(tmp_path, bounds, **extra):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"horizon": "72h", "bounds": bounds, **extra}))
    return path


def test_a_json_bound_cannot_be_shown_under_a_name_that_is_not_the_bound(tmp_path):
    # Reported: a lower bound of 5 was shown in the report as "conc<=2000 (looks safe)".
    lying = {"observable": "conc", "lower": 5, "name": "conc<=2000 (looks safe)"}
    with pytest.raises(SpecError, match=r"spec\.json: key 'bounds' entry .*'name' 'conc<=2000 \(looks safe\)'"):
        load_spec(_json_spec(tmp_path, [lying]))
    with pytest.raises(SpecError, match="does not describe the bound 'conc>=5'"):
        load_spec(_json_spec(tmp_path, [{"observable": "conc", "lower": 5, "name": "conc<=5"}]))


def test_a_name_that_describes_the_bound_is_accepted_and_shown_in_canonical_form(tmp_path):
    spec = load_spec(_json_spec(tmp_path, [{"observable": "conc", "lower": 5, "name": "conc >= 5.0"}]))
    assert [b.name for b in spec.bounds] == ["conc>=5"]


def test_bounds_built_in_python_with_a_foreign_name_are_refused():
    with pytest.raises(SpecError, match="entry named 'harmless' is the bound 'conc>=5'"):
        SafetySpec((Bound("conc", 5.0, "lower", name="harmless"),), 72.0)


@pytest.mark.parametrize(
    "text",
    [
        "conc<=20,conc>=30;horizon=72h",  # reported: accepted and reported FAIL 100 %
        "conc>=30,conc<=20;horizon=72h",
        "conc<=20,conc>=20;horizon=72h",  # a single value: every continuous path leaves it
        "conc<=20,conc<=40,conc>=5,conc>=25;horizon=72h",  # tightest pair is empty
    ],
)
def test_an_empty_safe_set_is_an_error_naming_both_bounds(text):
    with pytest.raises(SpecError, match=r"inline: key 'bounds' leaves no safe value of 'conc': conc>=\d+ and conc<="):
        parse_spec(text)


def test_nested_levels_on_one_side_stay_allowed():
    # Per-bound probabilities of nested levels (e.g. 20 and 30 mg/L) are a supported report.
    spec = parse_spec("conc<=20,conc<=30,conc>=2;horizon=72h", model=PK)
    assert [b.name for b in spec.bounds] == ["conc<=20", "conc<=30", "conc>=2"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("conc<=1e400;horizon=72h", r"'conc<=1e400': the bound must be a finite number"),  # was a traceback
        ("conc<=20;horizon=1e400h", r"key 'horizon' must be a positive, finite time"),
        ("conc<=20;horizon=72h;from=72h", r"key 'from' must be a time in \[0, horizon\)"),
        ("conc<=20;horizon=72h;from=100h", r"key 'from' must be a time in \[0, horizon\)"),
        ("conc<=20;horizon=72h;epsilon=0", r"key 'epsilon' must lie strictly between 0 and 1"),
        ("conc<=20;horizon=72h;epsilon=1", r"key 'epsilon' must lie strictly between 0 and 1"),
        ("conc<=20;horizon=72h;delta=-0.1", r"key 'delta' must lie strictly between 0 and 1"),
        ("conc<=20;horizon=72h;delta=nan", r"key 'delta' must be finite"),
        ("conc<=20,conc<=20.0;horizon=72h", r"lists \['conc<=20'\] more than once"),
        ("conc<=8;horizon=72h;target=10<=conc<=15", r"'10<=conc<=15' lies outside the safe set \(conc<=8\)"),
        ("conc>=16;horizon=72h;target=10<=conc<=15", r"lies outside the safe set \(conc>=16\)"),
        ("conc<=20;horizon=72h;target=1e400<=conc<=1e401", r"key 'target' needs an observable name and finite"),
    ],
)
def test_contradictory_or_unrepresentable_specs_name_the_key(text, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(text)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"bounds": [{"observable": "conc", "upper": 20, "sid": "lower"}]}, r"unknown key\(s\) \['sid'\]"),
        ({"bounds": [{"observable": "conc", "upper": 20, "side": "lower"}]}, r"'side' goes with 'value'"),
        ({"bounds": [{"observable": "conc", "value": 20, "side": "below"}]}, r"'side' must be 'upper' or 'lower'"),
        ({"bounds": [{"observable": "conc x", "upper": 20}]}, r"needs an 'observable' name"),
        ({"bounds": [{"observable": "conc", "upper": 10**400}]}, r"key 'bounds.conc.upper' must be a number"),
        ({"bounds": ["conc<=20"], "horizon": 10**400}, r"key 'horizon' must be a number"),
        ({"bounds": ["conc<=20"], "horizon": ["72h"]}, r"key 'horizon' value \['72h'\] is not a duration"),
        ({"bounds": ["conc<=20"], "target": {"observable": 3, "low": 1, "high": 2}}, r"key 'target' .* observable"),
    ],
)
def test_json_spec_errors_name_the_part_of_the_spec(data, match):
    with pytest.raises(SpecError, match=match):
        spec_from_mapping({"horizon": "72h", **data}, source="spec.json")


def test_spec_files_that_json_cannot_represent_as_python_are_spec_errors(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    with pytest.raises(SpecError, match=r"deep\.json: not valid JSON"):
        load_spec(deep)
    digits = tmp_path / "digits.json"
    digits.write_text('{"horizon": 1' + "0" * 5000 + "}")  # past Python's int-to-str digit limit
    with pytest.raises(SpecError, match=r"digits\.json: not valid JSON"):
        load_spec(digits)
    with pytest.raises(SpecError, match="not a usable file name"):
        parse_spec("a\x00b.json")


def test_target_range_is_validated_like_the_bounds():
    assert parse_spec("conc<=20,conc>=2;horizon=72h;target=10<=conc<=15").target == TargetRange("conc", 10.0, 15.0)
