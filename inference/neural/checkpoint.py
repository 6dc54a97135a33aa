"""Neural-model checkpoints: weights in safetensors, configuration and provenance in JSON.

A checkpoint ``NAME`` is two files side by side:

* ``NAME.safetensors`` — every tensor of the model's ``state_dict`` (weights and buffers), in
  the safetensors format: a JSON header plus raw little-endian arrays. Loading it executes no
  code (unlike a pickle, which ``torch.save`` would write);
* ``NAME.json`` — ``{"format": "medsim-neural-checkpoint", "format_version": 1, "config": ...,
  "provenance": ..., "weights_file": ..., "weights_sha256": ...}``: the architecture, units and
  normalisation (:class:`NeuralConfig`, including the held-out calibration), and how the
  weights were obtained (data hash, seed, package versions, training history, subject split).

Each file is written to a temporary name in the same folder and renamed into place. The JSON
records the SHA-256 of the weights file and loading checks it, so a weights file and a JSON from
different runs are never silently paired.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from medsim.io import atomic_write
from medsim.models.neural.config import NeuralConfig, NeuralConfigError
from medsim.models.neural.model import NeuralPatientModel

FORMAT = "medsim-neural-checkpoint"
FORMAT_VERSION = 1


class CheckpointFormatError(ValueError):
    """A checkpoint cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model (eval mode) and the JSON record."""

    model: NeuralPatientModel
    provenance: Mapping[str, Any]
    weights_sha256: str
    path: Path

    @property
    def config(self) -> NeuralConfig:
        return self.model.config


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(NAME.safetensors, NAME.json)`` for ``NAME``, ``NAME.safetensors`` or ``NAME.json``."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    def fill(tmp: Path) -> None:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            write(handle)

    atomic_write(path, fill)


def _record(config: NeuralConfig, provenance: Mapping[str, Any], weights: Path, digest: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "provenance": dict(provenance),
        "weights_file": weights.name,
        "weights_sha256": digest,
    }


def save_checkpoint(
    model: NeuralPatientModel, path: str | os.PathLike, *, provenance: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` (weights + config) and ``provenance`` as a checkpoint.

    Returns
    -------
    Path
        The JSON file of the checkpoint.
    """
    weights_path, json_path = checkpoint_paths(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save_safetensors(tensors, metadata={"format": FORMAT, "model": model.config.name})
    digest = hashlib.sha256(blob).hexdigest()
    _atomic_write(weights_path, lambda f: f.write(blob), "wb")
    record = _record(model.config, provenance or {}, weights_path, digest)
    text = json.dumps(record, indent=2, sort_keys=True, default=_json_default)
    _atomic_write(json_path, lambda f: f.write(text), "w")
    return json_path


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's JSON")


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's JSON record, validated (without loading weights)."""
    _, json_path = checkpoint_paths(path)
    try:
        record = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise CheckpointFormatError(f"{json_path}: no such checkpoint file") from None
    except json.JSONDecodeError as err:
        raise CheckpointFormatError(f"{json_path}: not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointFormatError(f"{json_path}: not a medsim neural checkpoint (expected format {FORMAT!r})")
    if record.get("format_version") != FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{json_path}: checkpoint format version {record.get('format_version')!r}, this medsim reads "
            f"{FORMAT_VERSION}"
        )
    for key in ("config", "weights_file", "weights_sha256"):
        if key not in record:
            raise CheckpointFormatError(f"{json_path}: missing key {key!r}")
    return record


def load_checkpoint(path: str | os.PathLike, *, device: str = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    CheckpointFormatError
        If a file is missing or malformed, the weights' SHA-256 differs from the one recorded
        in the JSON, or the tensors do not match the architecture the configuration describes
        (naming the file and the first mismatching tensors).
    """
    weights_path, json_path = checkpoint_paths(path)
    record = read_record(json_path)
    try:
        config = NeuralConfig.from_dict(record["config"], source=f"{json_path}: config")
    except NeuralConfigError as err:
        raise CheckpointFormatError(str(err)) from None
    weights_path = json_path.with_name(record["weights_file"])
    try:
        blob = weights_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointFormatError(f"{weights_path}: weights file of {json_path.name} not found") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != record["weights_sha256"]:
        raise CheckpointFormatError(
            f"{weights_path}: SHA-256 {digest[:12]}… differs from {record['weights_sha256'][:12]}… recorded in "
            f"{json_path.name}; the two files are not from the same save"
        )
    try:
        tensors = load_safetensors(blob)
    except SafetensorError as err:
        raise CheckpointFormatError(f"{weights_path}: not a readable safetensors file ({err})") from None
    model = NeuralPatientModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(expected[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or wrong:
        raise CheckpointFormatError(
            f"{weights_path}: tensors do not match the configured architecture; missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    return Checkpoint(model=model, provenance=record.get("provenance", {}), weights_sha256=digest, path=json_path)


def update_calibration(path: str | os.PathLike, calibration: Mapping[str, Any]) -> Path:
    """Store a calibration record in a checkpoint's configuration (the weights are untouched).

    Returns
    -------
    Path
        The rewritten JSON file.
    """
    _, json_path = checkpoint_paths(path)
    record = read_record(json_path)
    record["config"]["calibration"] = dict(calibration)
    text = json.dumps(record, indent=2, sort_keys=True, default=_json_default)
    _atomic_write(json_path, lambda f: f.write(text), "w")
    return json_path
