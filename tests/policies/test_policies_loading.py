"""Policy specs and user policies: what parses, and the errors for what does not."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from medsim.policies.builtin import TDM, FixedDose, Flip
from medsim.policies.loading import FunctionPolicy, PolicySpecError, parse_policy
from medsim.policies.protocol import Policy

USER_CODE = """
from dataclasses import dataclass

import numpy as np

from medsim.policies.protocol import Option


@dataclass(frozen=True)
class Doubling:
    dose: float = 1.0
    name: str = "doubling"

    def init(self, n, *, seed):
        return np.full(n, self.dose)

    def act(self, state, obs, *, rng):
        return state * 2, Option(interval=np.ones(obs.n), bolus={1: state})


def every_hour(obs, *, rng):
    return Option(interval=np.ones(obs.n))


def make(dose="3") -> Doubling:  # the annotation marks it as a policy factory
    return Doubling(dose=float(dose))


class NoAct:
    name = "no act"

    def init(self, n, *, seed):
        return None


policy = Doubling(dose=5.0)
"""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_policies.py"
    path.write_text(USER_CODE)
    return path


def test_builtin_specs_parse_and_round_trip():
    fixed = parse_policy("fixed:dose=400,every=12")
    assert fixed == FixedDose(dose=400.0, every=12.0)
    assert parse_policy(fixed.name) == fixed
    assert parse_policy("fixed:measure_at=1;2;6,duration=1").measure_at == (1.0, 2.0, 6.0)
    tdm = parse_policy("tdm:target=10,every=12,adjust_after=2")
    assert tdm == TDM(target=10.0, every=12.0, adjust_after=2)
    assert parse_policy("basal_bolus:correct_between_meals=true").correct_between_meals is True
    assert isinstance(parse_policy("pid"), Policy)


def test_composite_specs():
    flip = parse_policy("flip:q=0.3,a=fixed,a.dose=400,b=fixed,b.dose=600")
    assert isinstance(flip, Flip) and flip.q == 0.3
    assert flip.a == FixedDose(dose=400.0) and flip.b == FixedDose(dose=600.0)
    with pytest.raises(PolicySpecError, match="needs b=<policy>"):
        parse_policy("flip:a=fixed")
    with pytest.raises(PolicySpecError, match="needs a model, posterior draws and safety bounds"):
        parse_policy("safe_timing:eps=0.1,base=tdm")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "tmd:target=10",
            "unknown policy 'tmd'; built-in policies: fixed, tdm, basal_bolus, pid, flip, safe_timing, replay",
        ),
        ("tdm:traget=10", "policy 'tdm': unknown parameter 'traget'; valid parameters: target, every, dose"),
        ("tdm:target=ten", r"policy 'tdm': parameter target='ten' is not a number"),
        ("tdm:adjust_after=1.5", "parameter adjust_after='1.5' is not an integer"),
        ("basal_bolus:correct_between_meals=maybe", "is not true or false"),
        ("tdm:target", "'target' is not of the form key=value"),
        ("tdm:target=1,target=2", "'target' is given twice"),
        ("tdm:min_change=2", "need 0 < min_change <= 1 <= max_change"),
        ("fixed:every=-1", "every must be > 0"),
        ("", "non-empty string"),
    ],
)
def test_bad_specs_name_key_value_and_valid_choices(spec, message):
    with pytest.raises(PolicySpecError, match=message):
        parse_policy(spec)


def test_user_policies_from_a_file(user_file):
    default = parse_policy(str(user_file))
    assert default.name == "doubling" and default.dose == 5.0
    cls = parse_policy(f"{user_file}:Doubling:dose=2")
    assert cls.dose == 2.0  # dataclass fields are converted like built-in parameters
    made = parse_policy(f"{user_file}:make:dose=4")
    assert made.dose == 4.0
    fn = parse_policy(f"{user_file}:every_hour")
    assert isinstance(fn.policy, FunctionPolicy)
    _, option = fn.act(fn.init(2, seed=0), _obs(2), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(option.interval, [1.0, 1.0])


def test_user_policies_from_a_module(user_file, monkeypatch):
    monkeypatch.syspath_prepend(str(user_file.parent))
    sys.modules.pop("my_policies", None)
    assert parse_policy("my_policies:Doubling").name == "doubling"
    assert parse_policy("my_policies:make:dose=6").dose == 6.0


def test_user_policy_errors(user_file, tmp_path):
    with pytest.raises(PolicySpecError, match="is not a policy: it lacks act"):
        parse_policy(f"{user_file}:NoAct")
    with pytest.raises(PolicySpecError, match=r"has no attribute 'Missing'; it has: .*Doubling"):
        parse_policy(f"{user_file}:Missing")
    with pytest.raises(PolicySpecError, match="does not exist"):
        parse_policy(str(tmp_path / "nope.py"))
    with pytest.raises(PolicySpecError, match="cannot import policy module 'no_such_module_xyz'"):
        parse_policy("no_such_module_xyz:Policy")
    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n")
    with pytest.raises(PolicySpecError, match="failed to import: SyntaxError"):
        parse_policy(str(broken))
    with pytest.raises(PolicySpecError, match="memoryless policy function; it takes no parameters"):
        parse_policy(f"{user_file}:every_hour:x=1")
    with pytest.raises(PolicySpecError, match="unknown parameter 'speed'"):
        parse_policy(f"{user_file}:Doubling:speed=1")
    wrong = tmp_path / "wrong_signature.py"
    wrong.write_text(
        textwrap.dedent(
            """
            class P:
                name = "p"
                def init(self, n, seed):
                    return None
                def act(self, state, obs):
                    return None, None
            policy = P()
            """
        )
    )
    with pytest.raises(PolicySpecError, match="act\\(\\) must accept the keyword argument 'rng'"):
        parse_policy(str(wrong))


def _obs(n):
    from medsim.policies.protocol import Observation

    zeros = np.zeros(n)
    return Observation(
        time=zeros,
        measured={},
        announced={},
        covariates={},
        active=np.ones(n, bool),
        patient=np.arange(n),
        index=np.zeros(n, int),
        subject=np.full(n, ""),
        time_unit="h",
        horizon=1.0,
    )
