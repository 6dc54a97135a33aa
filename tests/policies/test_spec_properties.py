"""The safety-spec parser is total: any text, JSON or TOML gives a valid spec or a SpecError.

Property-based (hypothesis): spec strings are assembled from the grammar's pieces with hostile
numbers (``1e400``, ``nan``, huge integers), units and keys mixed in, next to arbitrary text.
Whatever parses must satisfy the spec's invariants, so that no report is built on a spec that
cannot hold.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsim.models import get
from medsim.policies.spec import SafetySpec, SpecError, derived_name, spec_from_mapping
from medsim.policies.spec_file import load_spec, parse_spec

PK = get("pk_oral_1cmt")  # time in h, observable "conc"
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Pieces:
    """Strategies for the parts of a spec: plausible values only, or mixed with hostile ones.

    Half the examples are built from plausible parts only, so that a good share of them parse
    and the invariants of accepted specs get checked; the other half mix in hostile parts.
    """

    def __init__(self, hostile: bool) -> None:
        def mix(plausible, bad):
            return st.one_of(plausible, bad) if hostile else plausible

        self.numbers = mix(
            st.one_of(st.floats(0.001, 1000.0).map(repr), st.integers(1, 300).map(str)),
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True).map(repr),
                st.integers(-(10**30), 10**30).map(str),
                st.sampled_from(["1e400", "-1e400", "nan", "inf", "-0", ".5", "5.", "1e-400", "0", "1_0", ""]),
                st.text(max_size=4),
            ),
        )
        self.chances = mix(st.floats(0.001, 0.5).map(repr), self.numbers)
        self.observables = mix(
            st.just("conc"), st.one_of(st.sampled_from(["conc2", "_", "2conc", "c-c"]), st.text(max_size=5))
        )
        self.ops = mix(st.sampled_from(["<=", ">=", "<", ">"]), st.sampled_from(["=<", "==", "", "<=<", "=>"]))
        self.units = mix(
            st.sampled_from(["h", "min", "d", "hours", ""]),
            st.one_of(st.sampled_from(["H", "m", "weeks"]), st.text(max_size=3)),
        )
        self.keys = mix(
            st.sampled_from(["from", "epsilon", "delta", "target", "time_unit", "bounds"]),
            st.one_of(st.sampled_from(["horizon", "source", "Epsilon"]), st.text(max_size=6)),
        )
        self.json_numbers = mix(st.one_of(st.floats(0.001, 1000.0), st.integers(1, 300)), JSON_VALUES)
        self.json_values = JSON_VALUES if hostile else st.nothing()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.integers(10**300, 10**320) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
PIECES_HOSTILE = Pieces(True)
PIECES = st.sampled_from([Pieces(False), PIECES_HOSTILE])


@st.composite
def bound_texts(draw, p: Pieces) -> str:
    space = draw(st.sampled_from(["", " "]))
    return f"{draw(p.observables)}{space}{draw(p.ops)}{space}{draw(p.numbers)}"


@st.composite
def inline_specs(draw) -> str:
    p = draw(PIECES)
    segments = [",".join(draw(st.lists(bound_texts(p), min_size=1, max_size=3)))]
    keys = draw(st.lists(p.keys, max_size=3, unique=True))
    for key in (["horizon"] if draw(st.integers(0, 9)) < 9 else []) + keys:
        if key == "target":
            value = f"{draw(p.numbers)}<={draw(p.observables)}<={draw(p.numbers)}"
        elif key in ("horizon", "from"):
            value = f"{draw(p.numbers)}{draw(p.units)}"
        elif key == "time_unit":
            value = draw(p.units)
        elif key == "bounds":
            value = draw(bound_texts(p))
        else:
            value = draw(p.chances)
        segments.append(f"{key}={value}")
    return ";".join(draw(st.permutations(segments)))


@st.composite
def bound_mappings(draw, p: Pieces) -> dict:
    side = draw(st.sampled_from(["upper", "lower", "value"]))
    entry = {"observable": draw(p.observables), side: draw(p.json_numbers)}
    if side == "value" and draw(st.booleans()):
        entry["side"] = draw(st.sampled_from(["upper", "lower"]))
    if draw(st.integers(0, 3)) == 0:
        op = {"upper": "<=", "lower": ">=", "value": "<="}[side]
        entry["name"] = f"{entry['observable']} {op} {entry[side]}"
    extra = st.fixed_dictionaries(
        {},
        optional={
            "upper": p.json_numbers,
            "side": st.sampled_from(["upper", "lower", "both", 1]),
            "name": st.one_of(bound_texts(p), st.text(max_size=8)),
            "extra": JSON_VALUES,
        },
    )
    if p is PIECES_HOSTILE and draw(st.booleans()):
        entry.update(draw(extra))
    return entry


@st.composite
def json_specs(draw) -> dict:
    p = draw(PIECES)
    if p is PIECES_HOSTILE and draw(st.integers(0, 3)) == 0:
        return draw(st.dictionaries(p.keys, JSON_VALUES, max_size=4))
    bound = st.one_of(bound_texts(p), bound_mappings(p))
    duration = st.one_of(st.builds(lambda x, u: f"{x}{u}", p.numbers, p.units), p.json_numbers)
    chance = st.one_of(st.floats(0.001, 0.5), p.json_values)
    return draw(
        st.fixed_dictionaries(
            {
                "bounds": st.one_of(st.lists(st.one_of(bound, p.json_values), min_size=1, max_size=3), bound),
                "horizon": duration,
            },
            optional={
                "from": duration,
                "epsilon": chance,
                "delta": chance,
                "time_unit": st.one_of(p.units, p.json_values),
                "target": st.one_of(
                    st.fixed_dictionaries({"observable": p.observables, "low": p.json_numbers, "high": p.json_numbers}),
                    st.builds(lambda a, o, b: f"{a}<={o}<={b}", p.numbers, p.observables, p.numbers),
                    p.json_values,
                ),
            },
        )
    )


def check_invariants(spec: SafetySpec) -> None:
    """What every accepted spec guarantees to the estimators and reports."""
    assert spec.bounds
    assert 0.0 < spec.epsilon < 1.0 and 0.0 < spec.delta < 1.0
    assert math.isfinite(spec.horizon) and 0.0 <= spec.monitor_from < spec.horizon
    for b in spec.bounds:
        assert math.isfinite(b.value) and b.name == derived_name(b)
    for obs in spec.observables:
        lows = [b.value for b in spec.bounds if b.observable == obs and b.side == "lower"]
        highs = [b.value for b in spec.bounds if b.observable == obs and b.side == "upper"]
        assert max(lows, default=-math.inf) < min(highs, default=math.inf)
    if spec.target is not None:
        assert math.isfinite(spec.target.low) and spec.target.low < spec.target.high
    again = spec_from_mapping(json.loads(json.dumps(spec.to_dict(), allow_nan=False)), source=spec.source)
    assert again.bounds == spec.bounds and again.target == spec.target
    assert (again.horizon, again.monitor_from, again.time_unit) == (spec.horizon, spec.monitor_from, spec.time_unit)


def parse_or_spec_error(text: str, model=None) -> SafetySpec | None:
    try:
        spec = parse_spec(text, model=model)
    except SpecError:
        return None
    check_invariants(spec)
    return spec


@SETTINGS
@given(inline_specs())
def test_inline_specs_parse_or_raise_spec_error(text):
    spec = parse_or_spec_error(text)
    if spec is not None:
        try:
            checked = spec.validate(PK)
        except SpecError:
            return
        check_invariants(checked)
        assert checked.time_unit == "h"


@SETTINGS
@given(st.text(alphabet=st.sampled_from("conc<=>;,.=0123456789e-+h horizon epsilon delta target from nan inf")))
def test_text_from_the_spec_alphabet_parses_or_raises_spec_error(text):
    parse_or_spec_error(text, model=PK)


@SETTINGS
@given(st.text())
def test_arbitrary_text_parses_or_raises_spec_error(text):
    parse_or_spec_error(text)


@SETTINGS
@given(json_specs())
def test_json_documents_parse_or_raise_spec_error(data):
    try:
        spec = spec_from_mapping(data, source="spec.json")
    except SpecError:
        return
    check_invariants(spec)


@SETTINGS
@given(st.one_of(json_specs(), JSON_VALUES), st.sampled_from([".json", ".toml"]), st.binary(max_size=40))
def test_spec_files_parse_or_raise_spec_error_naming_the_file(data, suffix, junk):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"spec{suffix}"
        if suffix == ".json":
            path.write_text(json.dumps(data))
        else:
            # TOML from the JSON document where it maps to TOML syntax; raw bytes otherwise.
            path.write_bytes(junk + "".join(f"{k!s} = {json.dumps(v)}\n" for k, v in _items(data)).encode())
        try:
            spec = load_spec(path)
        except SpecError as err:
            assert str(path) in str(err)
            return
        check_invariants(spec)


def _items(data):
    return data.items() if isinstance(data, dict) else []
