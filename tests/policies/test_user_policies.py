"""User policies: misbehaving code gives a PolicyError, unknown functions are never called, the README policy runs."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import medsim.cli.risk_cmds  # noqa: F401  (registers `medsim risk` on the shared app)
import medsim.models as registry
from medsim.cli import app
from medsim.policies.guard import GuardedPolicy
from medsim.policies.loading import PolicySpecError, parse_policy
from medsim.policies.protocol import PolicyContext, PolicyError
from medsim.policies.rollout import rollout
from medsim.population import sample_population
from medsim.simulate.types import Bound

PK = registry.get("pk_oral_1cmt")  # time in h, doses into CMT 1 (depot) or 2 (central)
README = Path(__file__).resolve().parents[2] / "README.md"

MISBEHAVING = '''
import sys

import numpy as np

from medsim.policies.protocol import Option


class Returns:
    """act() returns whatever the parameter ``what`` names."""

    def __init__(self, what):
        self.what = what
        self.name = f"returns-{what}"

    def init(self, n, *, seed):
        return None

    def act(self, state, obs, *, rng):
        n = obs.n
        return {
            "pair_with_str": (None, "str"),
            "int": 17,
            "option_alone": Option(interval=np.ones(n)),
            "wrong_shape": (None, Option(interval=np.ones(n + 1))),
            "nan_interval": (None, Option(interval=np.full(n, np.nan))),
            "zero_interval": (None, Option(interval=np.zeros(n))),
            "negative_dose": (None, Option(interval=np.ones(n), bolus={1: -np.ones(n)})),
            "infinite_rate": (None, Option(interval=np.ones(n), rate={1: np.full(n, np.inf)})),
            "bolus_list": (None, Option(interval=np.ones(n), bolus=[1.0] * n)),
            "text_interval": (None, Option(interval="soon")),
            "string_cmt": (None, Option(interval=np.ones(n), bolus={"depot": np.ones(n)})),
            "unknown_cmt": (None, Option(interval=np.ones(n), bolus={7: np.ones(n)})),
        }[self.what]


class Raises:
    name = "raises"

    def init(self, n, *, seed):
        return None

    def act(self, state, obs, *, rng):
        raise ZeroDivisionError("dose / 0")


class ExitsInInit:
    name = "exits-in-init"

    def init(self, n, *, seed):
        sys.exit(3)

    def act(self, state, obs, *, rng):
        raise AssertionError("never reached")


class ExitsInAct(ExitsInInit):
    name = "exits-in-act"

    def init(self, n, *, seed):
        return None

    def act(self, state, obs, *, rng):
        sys.exit(0)


def make_policy():
    sys.exit(0)
'''


@pytest.fixture
def misbehaving(tmp_path):
    path = tmp_path / "misbehaving.py"
    path.write_text(MISBEHAVING)
    return path


def _act(policy, obs):
    return policy.act(policy.init(obs.n, seed=0), obs, rng=np.random.default_rng(0))


@pytest.mark.parametrize(
    ("what", "message"),
    [
        (
            "pair_with_str",
            r"'returns-pair_with_str' .*act\(\) must return \(state, Option\); the second item is str 'str'",
        ),
        ("int", r"act\(\) must return a pair \(state, Option\); got int 17"),
        ("option_alone", r"act\(\) must return a pair \(state, Option\); got Option"),
        ("wrong_shape", r"option.interval has shape \(3,\), expected \(2,\)"),
        ("nan_interval", r"option.interval must be > 0; patient 0 got nan"),
        ("zero_interval", r"option.interval must be > 0; patient 0 got 0.0"),
        ("negative_dose", r"option.bolus\[1\] must be finite and >= 0; patient 0 got -1.0"),
        ("infinite_rate", r"option.rate\[1\] must be finite and >= 0; patient 0 got inf"),
        ("bolus_list", r"option.bolus must be a mapping compartment -> \(n,\) array, got list"),
        ("text_interval", r"option.interval must be an array of numbers, got str"),
        ("string_cmt", r"option.bolus key 'depot' must be a compartment number"),
        ("unknown_cmt", r"option.bolus uses compartment 7; model 'pk_oral_1cmt' doses into \[1, 2\]"),
    ],
)
def test_what_act_returns_is_checked_and_named(misbehaving, make_obs, what, message):
    # Reported: act returning (None, "str") or 17 ended in an AttributeError/TypeError traceback.
    policy = parse_policy(f"{misbehaving}:Returns:what={what}", context=PolicyContext(model=PK))
    assert isinstance(policy, GuardedPolicy) and policy.what == what
    with pytest.raises(PolicyError, match=message):
        _act(policy, make_obs([0.0, 0.0]))


def test_an_exception_in_user_code_is_a_policy_error_with_the_original_chained(misbehaving, make_obs):
    policy = parse_policy(f"{misbehaving}:Raises")
    with pytest.raises(
        PolicyError,
        match=r"user policy 'raises' \(.*misbehaving.py:Raises\): act\(\) raised "
        r"ZeroDivisionError: dose / 0",
    ) as info:
        _act(policy, make_obs([0.0]))
    assert isinstance(info.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("make_policy", r"making the policy tried to exit the program \(SystemExit\(0\)\)"),
        ("ExitsInInit", r"'exits-in-init' .*init\(\) tried to exit the program \(SystemExit\(3\)\)"),
        ("ExitsInAct", r"'exits-in-act' .*act\(\) tried to exit the program \(SystemExit\(0\)\)"),
    ],
)
def test_a_policy_that_exits_is_an_error(misbehaving, make_obs, attr, message):
    with pytest.raises(PolicyError, match=message):
        _act(parse_policy(f"{misbehaving}:{attr}"), make_obs([0.0]))


def test_a_misbehaving_policy_stops_the_rollout_with_a_policy_error(misbehaving, pk_draws):
    population = sample_population(pk_draws, 2, seed=0)
    policy = parse_policy(f"{misbehaving}:Returns:what=int", context=PolicyContext(model=PK))
    with pytest.raises(PolicyError, match="got int 17"):
        rollout(PK, population, policy, bounds=(Bound("conc", 20.0),), horizon=24.0, dt=0.5, seed=0)


def test_cli_reports_a_policy_that_exits_and_exits_non_zero(misbehaving, tmp_path):
    # Reported: make_policy calling sys.exit(0) ended `medsim risk` with status 0, no report, no message.
    args = ["risk", "--prior", "pk_oral_1cmt", "--prior-draws", "2", "--n", "2", "--out", str(tmp_path / "r")]
    args += ["--spec", "conc<=20;horizon=24h", "--policy", f"{misbehaving}:make_policy"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "tried to exit the program" in result.output and "make_policy" in result.output
    assert not (tmp_path / "r" / "report.json").exists()


# --------------------------------------------------------------------------- what medsim agrees to call
FACTORIES = """
from pathlib import Path

from medsim.policies.loading import policy_factory
from medsim.policies.protocol import Option, Policy

import numpy as np

SIDE_EFFECT = Path(__file__).with_name("called")


class Quiet:
    name = "quiet"

    def init(self, n, *, seed):
        return None

    def act(self, state, obs, *, rng):
        return None, Option(interval=np.full(obs.n, np.inf))


def make_policy():
    return Quiet()


@policy_factory
def marked():
    return Quiet()


def annotated() -> Policy:
    return Quiet()


def annotated_class() -> Quiet:
    return Quiet()


def plain(cmd="x"):
    SIDE_EFFECT.write_text(cmd)
    return Quiet()


class NotAPolicy:
    def __init__(self, cmd="x"):
        SIDE_EFFECT.write_text(cmd)
"""


@pytest.fixture
def factories(tmp_path):
    path = tmp_path / "factories.py"
    path.write_text("from __future__ import annotations\n" + FACTORIES)
    return path


@pytest.mark.parametrize("attr", ["make_policy", "marked", "annotated", "annotated_class"])
def test_identifiable_factories_are_called(factories, attr):
    assert parse_policy(f"{factories}:{attr}").name == "quiet"


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        (
            "plain:cmd=rm",
            "is a function that is neither a policy function f(obs, *, rng) -> Option nor a policy factory",
        ),
        ("NotAPolicy:cmd=rm", "is not a policy: it lacks init and act"),
    ],
)
def test_other_functions_and_classes_are_refused_before_they_are_called(factories, attr, message):
    with pytest.raises(PolicySpecError, match=re.escape(message)):
        parse_policy(f"{factories}:{attr}")
    assert not (factories.parent / "called").exists()


def test_a_stdlib_function_is_not_run(tmp_path):
    # Reported: `--policy subprocess:getoutput:cmd=...` ran a shell command.
    marker = tmp_path / "ran"
    for spec in (
        f"subprocess:getoutput:cmd=touch {marker}",
        f"os:system:command=touch {marker}",
        f"subprocess:Popen:args=touch {marker}",
    ):
        with pytest.raises(PolicySpecError, match=r"is not a policy|neither a policy function"):
            parse_policy(spec)
    assert not marker.exists()


def test_parameters_are_checked_against_the_factory_before_it_runs(factories):
    with pytest.raises(PolicySpecError, match=r"cannot be called with \{'gain': '2'\}"):
        parse_policy(f"{factories}:make_policy:gain=2")


# --------------------------------------------------------------------------- README and the current folder
def _readme_policy() -> str:
    """The Python block of the README paragraph that describes the policy protocol."""
    text = README.read_text()
    paragraph = text.index("A policy is any object with")
    block = re.search(r"```python\n(.*?)```", text[paragraph:], re.S)
    assert block is not None and "class MyPolicy" in block.group(1)
    return block.group(1)


@pytest.fixture
def working_folder(tmp_path, monkeypatch):
    """``tmp_path`` as the current folder, not on ``sys.path``: as under the ``medsim`` entry point."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    yield tmp_path
    for name in ("my_module", "my_local_policies"):
        sys.modules.pop(name, None)


def test_a_module_in_the_current_folder_is_found(working_folder):
    # Reported: `--policy my_module:MyPolicy` failed for a module in the current folder.
    (working_folder / "my_local_policies.py").write_text(textwrap.dedent(MISBEHAVING))
    assert parse_policy("my_local_policies:Raises").name == "raises"


def test_the_readme_policy_runs(working_folder, pk_draws):
    # Reported: a policy written from the README (no name, act returning an Option) failed.
    (working_folder / "my_module.py").write_text(_readme_policy())
    policy = parse_policy("my_module:MyPolicy", context=PolicyContext(model=PK))
    population = sample_population(pk_draws, 2, seed=0)
    result = rollout(PK, population, policy, bounds=(Bound("conc", 20.0),), horizon=24.0, dt=0.5, seed=0)
    assert result.policy == "my_policy"
    np.testing.assert_array_equal(result.treatment["bolus_cmt1"], 320.0)  # doses at 0 and 12 h


def test_help_says_that_policy_runs_user_code():
    result = CliRunner().invoke(app, ["risk", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    assert "Loading your code imports and runs it: name only code you trust" in text
