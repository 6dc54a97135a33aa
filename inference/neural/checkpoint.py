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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from medsim.io import atomic_write
from medsim.models.neural.config import NeuralConfig, NeuralConfigError
from medsim.models.neural.model import NeuralPatientModel
from medsim.models.neural.schema import expect

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


#: Provenance entries the commands read, with their JSON type (others are kept as they are).
_PROVENANCE_LISTS = ("train_ids", "validation_ids", "test_ids")
_PROVENANCE_TEXT = ("cohort_source", "data_hash", "cohort")


def _check_weights_file(name: Any, json_path: Path) -> None:
    """``weights_file`` must name a ``.safetensors`` file in the checkpoint's own folder."""
    where = f"{json_path}: weights_file"
    expect(isinstance(name, str) and bool(name), where, "a file name", name, CheckpointFormatError)
    plain = name not in (".", "..") and not any(c in name for c in "/\\\0") and Path(name).name == name
    if not plain or Path(name).is_absolute():
        raise CheckpointFormatError(
            f"{where}: expected the name of a file in the checkpoint's folder (no folder part, no absolute "
            f"path), got {name!r}"
        )
    if not name.endswith(".safetensors"):
        raise CheckpointFormatError(f"{where}: expected a .safetensors file name, got {name!r}")


def _check_record(record: dict[str, Any], json_path: Path) -> None:
    """The types of the record's entries (the configuration is checked when it is built)."""
    where = str(json_path)
    for key in ("config", "weights_file", "weights_sha256"):
        if key not in record:
            raise CheckpointFormatError(f"{where}: missing key {key!r}")
    config = record["config"]
    expect(isinstance(config, dict), f"{where}: config", "an object", config, CheckpointFormatError)
    _check_weights_file(record["weights_file"], json_path)
    digest = record["weights_sha256"]
    is_digest = isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) is not None
    expect(is_digest, f"{where}: weights_sha256", "64 hexadecimal digits (a SHA-256)", digest, CheckpointFormatError)
    provenance = record.get("provenance", {})
    expect(isinstance(provenance, dict), f"{where}: provenance", "an object", provenance, CheckpointFormatError)
    for key in _PROVENANCE_LISTS:
        value = provenance.get(key, [])
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        expect(ok, f"{where}: provenance.{key}", "an array of subject IDs (text)", value, CheckpointFormatError)
    for key in _PROVENANCE_TEXT:
        value = provenance.get(key)
        expect(
            value is None or isinstance(value, str), f"{where}: provenance.{key}", "text", value, CheckpointFormatError
        )


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's JSON record, validated (without loading weights).

    Raises
    ------
    CheckpointFormatError
        If the file is missing, unreadable or not JSON, is not a medsim checkpoint of this format
        version, or an entry has the wrong type: the message names the file and the entry
        (``config``, ``weights_file``, ``provenance.test_ids`` ...) and what was expected.
        ``weights_file`` must be a ``.safetensors`` file name in the checkpoint's own folder.
    """
    _, json_path = checkpoint_paths(path)
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointFormatError(f"{json_path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointFormatError(f"{json_path}: is a folder; expected a checkpoint's JSON file") from None
    except OSError as err:
        raise CheckpointFormatError(f"{json_path}: cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise CheckpointFormatError(f"{json_path}: not UTF-8 text; expected a checkpoint's JSON record") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise CheckpointFormatError(f"{json_path}: not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointFormatError(f"{json_path}: not a medsim neural checkpoint (expected format {FORMAT!r})")
    if record.get("format_version") != FORMAT_VERSION or isinstance(record.get("format_version"), bool):
        raise CheckpointFormatError(
            f"{json_path}: checkpoint format version {record.get('format_version')!r}, this medsim reads "
            f"{FORMAT_VERSION}"
        )
    _check_record(record, json_path)
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
    except OSError as err:
        raise CheckpointFormatError(
            f"{weights_path}: weights file of {json_path.name} cannot be read ({err.strerror or err})"
        ) from None
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
    broken = sorted(k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    if broken:
        # A diverged training run saves NaN weights; they would surface far away (a residual
        # error "needs add > 0", NaN trajectories), so they are refused here, by name.
        raise CheckpointFormatError(
            f"{weights_path}: tensors {broken[:5]}{' ...' if len(broken) > 5 else ''} hold NaN or infinite "
            "values; expected finite weights (the training that saved them diverged: retrain, e.g. with a "
            "smaller learning rate)"
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
