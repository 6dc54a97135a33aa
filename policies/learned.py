"""``learned:PATH``: a trained agent, saved in a safe format, as a medsim policy.

A learned policy is two files: ``NAME.json`` (the architecture, what it observes and how its
output becomes an option) and the ``safetensors`` file it names (the weights; never pickle)::

    {
      "format": "medsim-learned-policy", "version": 1,
      "task": "Glucose-v0",                  # a registered environment task (policies.env.task.TASKS)
      "intervals": "continuous",             # or "discrete": the last outputs are logits over task.intervals
      "observation": {"names": [...], "offset": [...], "scale": [...]},   # input = (features - offset) / scale
      "network": {"kind": "mlp", "activation": "tanh", "layers": 3},      # layers.<i>.weight (out, in), .bias
      "output": "unit",                      # unit: clip to [-1, 1], map linearly onto the declared bounds
      "weights": "NAME.safetensors", "sha256": "<hex digest of the weights file>"
    }

The features are the environment's (:func:`medsim.policies.env.vectors.features`), computed from the
:class:`~medsim.policies.protocol.Observation` the rollout hands every policy, so ``medsim risk --policy
learned:agent.json`` evaluates the agent exactly as the environment trained it, in the same
report as the built-in policies. The network is evaluated deterministically (the mean action) in
numpy. :func:`save_learned` writes both files atomically; :func:`from_sb3` exports a
stable-baselines3 ``MlpPolicy`` (PPO, A2C) without pickling it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsim.policies.env.task import EnvTask
from medsim.policies.env.vectors import action_option, features
from medsim.policies.protocol import Observation, Option, PolicyContext, PolicySpecError

FORMAT = "medsim-learned-policy"
_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0), "identity": lambda z: z}
_MAX_JSON = 10_000_000  # bytes: an architecture file is small; refuse anything that is not one


class LearnedPolicyError(PolicySpecError):
    """A learned-policy file is missing, malformed or inconsistent; the message names the file and key."""


@dataclass(frozen=True, eq=False)
class LearnedPolicy:
    """A feed-forward network mapping environment features to an option (see the module docstring)."""

    path: str
    task: EnvTask
    names: tuple[str, ...]
    offset: np.ndarray
    scale: np.ndarray
    weights: tuple[tuple[np.ndarray, np.ndarray], ...]
    activation: str = "tanh"
    intervals: str = "continuous"
    output: str = "unit"
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"learned:{self.path}"

    def init(self, n: int, *, seed: int) -> dict[str, np.ndarray]:
        """Memory per patient: the last treatment (a feature the agent observes)."""
        return {"last": np.zeros((n, len(self.task.treatments)))}

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Network output for features ``x`` (n, d)."""
        h = (np.asarray(x, np.float64) - self.offset) / self.scale
        act = _ACTIVATIONS[self.activation]
        for i, (w, b) in enumerate(self.weights):
            h = h @ w.T + b
            if i < len(self.weights) - 1:
                h = act(h)
        return h

    def action(self, x: np.ndarray) -> np.ndarray:
        """The environment action ``(n, treatments + 1)`` in physical units for features ``x``."""
        out = self.forward(x)
        t = len(self.task.treatments)
        low, high = self.task.action_low.astype(np.float64), self.task.action_high.astype(np.float64)
        if self.intervals == "discrete":
            treat, logits = out[:, :t], out[:, t:]
            interval = np.asarray(self.task.intervals, np.float64)[np.argmax(logits, axis=1)]
        else:
            treat, interval = out[:, :t], out[:, t]
        if self.output == "unit":
            treat = low[:t] + 0.5 * (np.clip(treat, -1.0, 1.0) + 1.0) * (high[:t] - low[:t])
            if self.intervals != "discrete":
                interval = low[t] + 0.5 * (np.clip(interval, -1.0, 1.0) + 1.0) * (high[t] - low[t])
        return np.concatenate([treat, np.reshape(interval, (-1, 1))], axis=1)

    def act(self, state: dict[str, np.ndarray], obs: Observation, *, rng: np.random.Generator):
        x = features(self.names, obs, state["last"])
        option, _ = action_option(self.task, self.action(x))
        last = np.column_stack(
            [np.asarray((option.bolus if tr.kind == "bolus" else option.rate)[tr.cmt]) for tr in self.task.treatments]
        )
        last = np.where(np.asarray(obs.active)[:, None], last, state["last"])
        return {"last": last}, Option(interval=option.interval, bolus=option.bolus, rate=option.rate)

    @classmethod
    def from_spec(cls, raw: Mapping[str, str], context: PolicyContext) -> LearnedPolicy:
        """``learned:PATH`` (``raw`` holds the path under ``""``); checks the task's model against ``context``."""
        path = raw.get("")
        if not path:
            raise LearnedPolicyError("learned: give the path of the policy's JSON file, e.g. learned:agent.json")
        policy = load_learned(path)
        model = context.model
        if model is not None and model.name != policy.task.model:
            raise LearnedPolicyError(
                f"{path}: the policy was trained on model {policy.task.model!r}; this evaluation uses {model.name!r}"
            )
        return policy


def _fail(path: Path, key: str, message: str) -> LearnedPolicyError:
    return LearnedPolicyError(f"{path}: key {key!r}: {message}")


def load_learned(path: str | Path) -> LearnedPolicy:
    """Read a learned policy (JSON architecture + safetensors weights).

    Raises
    ------
    LearnedPolicyError
        Naming the file and key: unreadable or oversized JSON, wrong format, unknown task, weights
        file missing or with another digest, weights whose shapes do not chain, observation
        vectors of the wrong length.
    """
    from safetensors.numpy import load_file

    from medsim.policies.env.task import TaskError, resolve_task

    path = Path(path)
    try:
        if path.stat().st_size > _MAX_JSON:
            raise LearnedPolicyError(f"{path}: over {_MAX_JSON} bytes; not a learned-policy architecture file")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise LearnedPolicyError(f"{path}: cannot read the learned-policy file ({err.strerror})") from None
    except ValueError as err:
        raise LearnedPolicyError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LearnedPolicyError(f"{path}: key 'format' must be {FORMAT!r}")
    try:
        task = resolve_task(str(doc.get("task", "")))
    except TaskError as err:
        raise _fail(path, "task", str(err)) from None
    intervals = doc.get("intervals", "continuous")
    if intervals not in ("continuous", "discrete"):
        raise _fail(path, "intervals", f"expected 'continuous' or 'discrete', got {intervals!r}")
    output = doc.get("output", "unit")
    if output not in ("unit", "physical"):
        raise _fail(path, "output", f"expected 'unit' or 'physical', got {output!r}")
    net = doc.get("network", {})
    if not isinstance(net, dict) or net.get("kind") != "mlp" or net.get("activation") not in _ACTIVATIONS:
        raise _fail(path, "network", f"expected kind 'mlp' and activation one of {sorted(_ACTIVATIONS)}, got {net!r}")
    n_layers = net.get("layers")
    if not (isinstance(n_layers, int) and n_layers >= 1):
        raise _fail(path, "network.layers", f"expected an int >= 1, got {n_layers!r}")
    obs = doc.get("observation", {})
    names = tuple(obs.get("names", ())) if isinstance(obs, dict) else ()
    if not names or not all(isinstance(n, str) for n in names):
        raise _fail(path, "observation.names", "expected a non-empty list of feature names")
    d = len(names)
    offset, scale = (np.asarray(obs.get(k, [fill] * d), np.float64) for k, fill in (("offset", 0.0), ("scale", 1.0)))
    if offset.shape != (d,) or scale.shape != (d,) or not (np.all(np.isfinite(offset)) and np.all(scale > 0)):
        raise _fail(path, "observation", f"offset and scale must be {d} finite numbers (scale > 0)")
    weights_name = doc.get("weights")
    if not isinstance(weights_name, str) or Path(weights_name).name != weights_name:
        raise _fail(path, "weights", "expected the file name of the safetensors weights, in the same folder")
    wpath = path.parent / weights_name
    try:
        blob = wpath.read_bytes()
    except OSError as err:
        raise _fail(path, "weights", f"cannot read {wpath} ({err.strerror})") from None
    digest = doc.get("sha256")
    if digest is not None and hashlib.sha256(blob).hexdigest() != digest:
        raise _fail(path, "sha256", f"{wpath} does not match the recorded digest (file changed since it was saved)")
    try:
        tensors = load_file(str(wpath))
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise _fail(path, "weights", f"{wpath} is not a readable safetensors file ({err})") from None
    t = len(task.treatments)
    n_out = t + (len(task.intervals) if intervals == "discrete" else 1)
    layers, width = [], d
    for i in range(n_layers):
        w, b = tensors.get(f"layers.{i}.weight"), tensors.get(f"layers.{i}.bias")
        if w is None or b is None:
            raise _fail(path, "weights", f"{wpath} lacks layers.{i}.weight or layers.{i}.bias")
        if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
            raise _fail(path, "weights", f"layers.{i} has shapes {w.shape}, {b.shape}; expected ({{out}}, {width})")
        layers.append((np.asarray(w, np.float64), np.asarray(b, np.float64)))
        width = w.shape[0]
    if width != n_out:
        raise _fail(path, "weights", f"the last layer has {width} outputs; task {doc['task']} needs {n_out}")
    meta = {k: doc[k] for k in ("trained_with", "training") if k in doc}
    return LearnedPolicy(
        str(path), task, names, offset, scale, tuple(layers), net["activation"], intervals, output, meta
    )


def save_learned(
    path: str | Path,
    *,
    task: str,
    names: Sequence[str],
    weights: Sequence[tuple[np.ndarray, np.ndarray]],
    activation: str = "tanh",
    offset: Sequence[float] | None = None,
    scale: Sequence[float] | None = None,
    intervals: str = "continuous",
    output: str = "unit",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``PATH`` (JSON) and ``PATH`` with suffix ``.safetensors`` atomically; returns the JSON path.

    The result loads with :func:`load_learned` (which checks it; call it to validate).
    """
    from safetensors.numpy import save

    from medsim.io import write_bytes, write_text

    path = Path(path)
    tensors = {}
    for i, (w, b) in enumerate(weights):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(w, np.float32)
        tensors[f"layers.{i}.bias"] = np.ascontiguousarray(b, np.float32)
    blob = save(tensors)
    wpath = path.with_suffix(".safetensors")
    write_bytes(wpath, blob)
    d = len(names)
    doc = {
        "format": FORMAT,
        "version": 1,
        "task": task,
        "intervals": intervals,
        "observation": {
            "names": list(names),
            "offset": [float(v) for v in (offset if offset is not None else [0.0] * d)],
            "scale": [float(v) for v in (scale if scale is not None else [1.0] * d)],
        },
        "network": {"kind": "mlp", "activation": activation, "layers": len(weights)},
        "output": output,
        "weights": wpath.name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        **dict(extra or {}),
    }
    write_text(path, json.dumps(doc, indent=2) + "\n")
    return path


def from_sb3(model: Any) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The weights ``[(W, b), ...]`` and activation of a stable-baselines3 ``MlpPolicy`` actor.

    The deterministic action of such a policy is ``action_net(policy_net(features))``; with the
    environment's action rescaled to ``[-1, 1]`` (gymnasium's ``RescaleAction``) it is saved with
    ``output="unit"``.

    Raises
    ------
    LearnedPolicyError
        When the actor is not a plain stack of linear layers and one activation.
    """
    import torch

    policy = model.policy
    layers, activation = [], None
    for module in policy.mlp_extractor.policy_net:
        if isinstance(module, torch.nn.Linear):
            layers.append(module)
        else:
            name = type(module).__name__.lower()
            if name not in ("tanh", "relu") or activation not in (None, name):
                raise LearnedPolicyError(f"stable-baselines3 actor: unsupported layer {type(module).__name__}")
            activation = name
    layers.append(policy.action_net)
    out = [(lin.weight.detach().cpu().numpy(), lin.bias.detach().cpu().numpy()) for lin in layers]
    return out, activation or "identity"
