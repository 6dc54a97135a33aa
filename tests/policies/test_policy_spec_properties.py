"""The policy-spec parser is total: any ``--policy`` string gives a policy or a typed error.

Property-based (hypothesis). Built-in specs (``fixed:dose=..,every=..``), composite specs with
nested component options (``flip:a=..,a.dose=..``, ``safe_timing:base=..,base.target=..``) and
user-code specs (``file.py:attr:k=v``, ``module:attr``) are assembled with hostile values and keys,
next to arbitrary text. Whatever is built must satisfy the policy protocol, and no user function
that is not a policy maker may ever be called.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import medsim.models as registry
from medsim.policies.builtin import BUILTINS
from medsim.policies.loading import parse_policy
from medsim.policies.protocol import Policy, PolicyContext, PolicyError, PolicySpecError
from medsim.simulate.types import Bound

PK = registry.get("pk_oral_1cmt")
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TYPED = (PolicySpecError, PolicyError)

PLAUSIBLE = st.one_of(st.floats(0.01, 500.0).map(lambda x: f"{x:g}"), st.integers(0, 50).map(str))
VALUES = st.one_of(
    PLAUSIBLE,
    PLAUSIBLE,
    PLAUSIBLE,
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e400", "true", "1;2;4", "1;nan", "", "=", "x"]),
    st.text(alphabet=st.characters(blacklist_characters=",:"), max_size=5),
)
KEYS = st.one_of(st.sampled_from(["q", "a", "b", "base", "dose", "a.b", "base."]), st.text(max_size=5))
KINDS = st.sampled_from(sorted(BUILTINS))

USER_CODE = """
from pathlib import Path

import numpy as np

from medsim.policies.protocol import Option


def _called(what):
    Path(__file__).with_name("called").write_text(what)


class Quiet:
    def __init__(self, every="1"):
        self.every = float(every)
        self.name = "quiet"

    def init(self, n, *, seed):
        return None

    def act(self, state, obs, *, rng):
        return None, Option(interval=np.full(obs.n, self.every))


def make_policy(every="1"):
    return Quiet(every)


def every_hour(obs, *, rng):
    return Option(interval=np.ones(obs.n))


def run_command(cmd="x"):
    _called(cmd)


class Command:
    def __init__(self, cmd="x"):
        _called(cmd)


policy = Quiet()
"""


def own_fields(kind: str) -> list[str]:
    """The parameters a built-in takes from its spec (composites: their options and components)."""
    if kind == "flip":
        return ["q"]
    if kind == "safe_timing":
        return ["eps", "grid", "particles", "dt"]
    return [f for f in BUILTINS[kind].__dataclass_fields__ if not f.startswith("_")]


@st.composite
def params(draw, keys=KEYS) -> list[str]:
    """``key=value`` items: mostly the policy's own keys and plausible values, some hostile."""
    names = draw(st.lists(keys, max_size=3, unique=True))
    return [f"{name}={draw(VALUES)}" for name in names]


@st.composite
def policy_items(draw, depth: int = 0) -> tuple[str, list[str]]:
    """A built-in ``kind`` and its ``key=value`` items, with component policies up to two levels deep."""
    kind = draw(KINDS)
    own = st.sampled_from(own_fields(kind))
    items = draw(params(st.one_of(own, own, own, own, KEYS)))
    sides = {"flip": ("a", "b"), "safe_timing": ("base",)}.get(kind, ())
    for side in sides:
        if depth >= 2:
            component, sub = "fixed", []
        else:
            component, sub = draw(policy_items(depth + 1))
        if draw(st.integers(0, 9)) < 9:  # sometimes leave a component out
            items += [f"{side}={component}", *(f"{side}.{item}" for item in sub)]
    return kind, draw(st.permutations(items))


@st.composite
def builtin_specs(draw) -> str:
    kind, items = draw(policy_items())
    return f"{kind}:{','.join(items)}" if items else kind


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "user_policies.py"
    path.write_text(USER_CODE)
    return path


@pytest.fixture(scope="module")
def context(pk_draws) -> PolicyContext:
    return PolicyContext(model=PK, bounds=(Bound("conc", 20.0),), draws=pk_draws, dt=0.5)


@pytest.fixture
def no_side_effect_modules(monkeypatch):
    """Stand-ins for the two standard modules whose import does something visible."""
    for name in ("antigravity", "this"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))


def parses_or_typed_error(spec: str, context: PolicyContext | None = None) -> Policy | None:
    try:
        policy = parse_policy(spec, context=context)
    except TYPED:
        return None
    assert isinstance(policy, Policy) and isinstance(policy.name, str)
    return policy


@SETTINGS
@given(builtin_specs())
def test_builtin_and_composite_specs_parse_or_raise_a_typed_error(spec):
    parses_or_typed_error(spec)


@SETTINGS
@given(builtin_specs())
def test_specs_with_a_model_and_draws_parse_or_raise_a_typed_error(context, spec):
    parses_or_typed_error(spec, context)


@SETTINGS
@given(
    st.sampled_from(["Quiet", "make_policy", "every_hour", "run_command", "Command", "policy", "", "_called", "np"]),
    params(st.sampled_from(["every", "cmd", "dose"])).map(",".join),
    st.sampled_from([":", "::", ""]),
)
def test_user_specs_parse_or_raise_and_never_call_a_non_policy(user_file, attr, body, sep):
    spec = f"{user_file}:{attr}{sep}{body}" if attr else f"{user_file}{sep}{body}"
    parses_or_typed_error(spec)
    assert not (user_file.parent / "called").exists(), spec


@SETTINGS
@given(st.text(max_size=30))
def test_arbitrary_text_parses_or_raises_a_typed_error(no_side_effect_modules, text):
    parses_or_typed_error(text)


@SETTINGS
@given(
    st.sampled_from(
        [
            "json:loads",
            "os:getcwd",
            "builtins:len",
            "math:sqrt",
            "collections:OrderedDict",
            "medsim.policies.protocol:Policy",
            "medsim.policies.protocol:Option",
            "medsim.policies.builtin:FixedDose",
            "medsim_no_such_module:x",
            "policies..protocol:Policy",
            ".protocol:Policy",
        ]
    ),
    params().map(",".join),
)
def test_module_specs_parse_or_raise_a_typed_error(target, body):
    policy = parses_or_typed_error(f"{target}:{body}" if body else target)
    if policy is not None:
        assert target == "medsim.policies.builtin:FixedDose"  # the only policy class among the targets
