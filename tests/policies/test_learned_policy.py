"""``learned:PATH``: safetensors + JSON agents, evaluated by the environment and by ``medsim risk``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import medsim.cli.risk_cmds  # noqa: F401  (registers the command on the shared app)
from medsim.cli import app
from medsim.policies.env import GLUCOSE, THEOPHYLLINE, core
from medsim.policies.env.behaviour import behaviour_steps
from medsim.policies.learned import LearnedPolicy, LearnedPolicyError, load_learned, save_learned
from medsim.policies.loading import parse_policy
from medsim.policies.protocol import PolicyContext


def _agent(tmp_path, task_name="Glucose-v0", task=GLUCOSE, names=None):
    """A one-hidden-layer net whose action depends on measured glucose (so features matter)."""
    params = core.make_params(task, pool_size=2, prior_draws=2)
    names = names or params.observation_names
    d, t = len(names), len(task.treatments) + 1
    rng = np.random.default_rng(0)
    w0, b0 = 0.3 * rng.standard_normal((4, d)), np.zeros(4)
    w1, b1 = 0.3 * rng.standard_normal((t, 4)), np.zeros(t)
    scale = np.maximum(np.abs(params.pool.initial_state()[params.model.state_names[-1]].mean()), 1.0) * np.ones(d)
    return save_learned(tmp_path / "agent.json", task=task_name, names=names, weights=[(w0, b0), (w1, b1)], scale=scale)


def test_round_trip_and_spec(tmp_path):
    path = _agent(tmp_path)
    policy = parse_policy(f"learned:{path}")
    assert isinstance(policy, LearnedPolicy) and policy.name == f"learned:{path}"
    x = np.abs(np.random.default_rng(1).standard_normal((5, len(policy.names)))) * 100
    a = policy.action(x)
    assert a.shape == (5, 3)
    assert np.all(a >= GLUCOSE.action_low - 1e-6) and np.all(a <= GLUCOSE.action_high + 1e-6)


def test_learned_policy_sees_in_medsim_what_it_saw_in_the_environment(tmp_path):
    # Driven through the environment core (features from the env state) and through the rollout
    # (features from the protocol Observation), the agent must take the same actions: compare the
    # first-interval actions the environment logged with the policy's own from the env observation.
    path = _agent(tmp_path, "Theophylline-v0", THEOPHYLLINE)
    policy = load_learned(path)
    params = core.make_params(THEOPHYLLINE, seed=1, pool_size=2, prior_draws=2)
    for step in behaviour_steps(params, policy, np.arange(2)):
        expected = policy.action(step.observation)
        active = step.active
        np.testing.assert_allclose(step.action[active], expected[active], rtol=1e-6)  # float32 features


def test_medsim_risk_evaluates_a_learned_policy_beside_builtins(tmp_path):
    path = _agent(tmp_path, "Theophylline-v0", THEOPHYLLINE)
    out = tmp_path / "report"
    args = ["risk", "--prior", "pk_oral_1cmt", "--policy", f"learned:{path}", "--policy", "fixed:dose=300,every=12"]
    args += ["--spec", "conc<=20,conc>=5;horizon=24h;epsilon=0.1;rare=off", "--n", "8", "--prior-draws", "4"]
    args += ["--dt", "0.05", "--seed", "0", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    assert [p["policy"] for p in data["policies"]] == [f"learned:{path}", "fixed:dose=300"]


def test_wrong_model_is_refused(tmp_path):
    import medsim.models as registry

    path = _agent(tmp_path, "Theophylline-v0", THEOPHYLLINE)
    with pytest.raises(LearnedPolicyError, match="trained on model 'pk_oral_1cmt'"):
        parse_policy(f"learned:{path}", context=PolicyContext(model=registry.get("glucose_insulin")))


def test_bad_files_are_named(tmp_path):
    path = _agent(tmp_path)
    doc = json.loads(path.read_text())
    weights = path.with_suffix(".safetensors")
    blob = weights.read_bytes()

    def write(**changes):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**doc, **changes}))
        return bad

    with pytest.raises(LearnedPolicyError, match="key 'format'"):
        load_learned(write(format="pickle"))
    with pytest.raises(LearnedPolicyError, match="key 'task'"):
        load_learned(write(task="Nope-v0"))
    with pytest.raises(LearnedPolicyError, match="key 'weights'"):
        load_learned(write(weights="../agent.safetensors"))
    with pytest.raises(LearnedPolicyError, match="observation"):
        load_learned(write(observation={"names": doc["observation"]["names"][:-1], "scale": [1.0]}))
    weights.write_bytes(blob[:-4] + b"\0\0\0\0")
    with pytest.raises(LearnedPolicyError, match="key 'sha256'"):
        load_learned(path)
    weights.write_bytes(b"\x80\x04K\x01.")  # a pickle is not a safetensors file
    with pytest.raises(LearnedPolicyError, match="safetensors"):
        load_learned(write(sha256=None))
    with pytest.raises(LearnedPolicyError, match="cannot read"):
        load_learned(tmp_path / "missing.json")
