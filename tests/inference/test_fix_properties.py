"""Property-based tests of the ``--fix NAME[=VALUE]`` parser (:func:`medsim.inference.priors.parse_fix`)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from medsim.inference.priors import PriorError, parse_fix

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
VALUES = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)


@given(st.lists(st.text(max_size=20), max_size=5))
def test_any_text_is_parsed_or_refused_with_a_prior_error(entries):
    try:
        parsed = parse_fix(entries)
    except PriorError as err:
        assert "--fix" in str(err)
        return
    assert len(parsed) == sum(len(e.split(",")) for e in entries)
    for name, value in parsed.items():
        assert name and name == name.strip() and "=" not in name
        assert value is None or (math.isfinite(value) and value > 0)


@given(st.dictionaries(NAMES, st.one_of(st.none(), VALUES), max_size=6))
def test_well_formed_entries_round_trip(fixed):
    entries = [name if value is None else f" {name} = {value!r}" for name, value in fixed.items()]
    assert parse_fix(entries) == fixed


@given(st.dictionaries(NAMES, st.one_of(st.none(), VALUES), min_size=1, max_size=6))
def test_comma_separated_entries_are_the_same_as_separate_ones(fixed):
    entries = [name if value is None else f"{name}={value!r}" for name, value in fixed.items()]
    assert parse_fix([",".join(entries)]) == parse_fix(entries) == fixed


@given(NAMES, st.sampled_from(["0", "-1", "nan", "inf", "-inf", "", "1e400", "x", "1e", "0x1"]))
def test_a_value_that_is_not_finite_and_positive_is_refused(name, text):
    try:
        parse_fix([f"{name}={text}"])
    except PriorError as err:
        assert name in str(err)
    else:
        raise AssertionError(f"{name}={text} was accepted")


@given(NAMES)
def test_a_name_given_twice_is_refused(name):
    try:
        parse_fix([name, f"{name}=1"])
    except PriorError as err:
        assert "twice" in str(err)
    else:
        raise AssertionError("accepted a name twice")
