"""Safety specs from files and from either form: ``load_spec`` reads ``.json``/``.toml`` files,
``parse_spec`` takes a path or an inline string (:func:`medsim.policies.spec.parse_inline_spec`).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medsim.policies.spec import _KEYS, SafetySpec, SpecError, parse_inline_spec, spec_from_mapping


def load_spec(path: str | Path) -> SafetySpec:
    """Read a spec from a ``.json`` or ``.toml`` file.

    Raises
    ------
    SpecError
        Unreadable or malformed file, or bad keys/values (the message names the file).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise SpecError(f"{path}: a spec file must end in .json or .toml")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SpecError(f"{path}: cannot read the spec file ({err.strerror})") from None
    except ValueError as err:  # e.g. a NUL character in the path
        raise SpecError(f"{path!r}: not a usable file name ({err})") from None
    try:
        data = json.loads(raw) if suffix == ".json" else tomllib.loads(raw.decode("utf-8"))
    except RecursionError:
        raise SpecError(f"{path}: not valid {suffix[1:].upper()}: nested too deeply") from None
    except ValueError as err:  # JSON/TOML syntax, undecodable bytes, integers past Python's digit limit
        raise SpecError(f"{path}: not valid {suffix[1:].upper()}: {err}") from None
    if not isinstance(data, Mapping):
        raise SpecError(f"{path}: the top level must be an object/table of keys {list(_KEYS)}")
    return spec_from_mapping(data, source=str(path))


def parse_spec(text_or_path: str | Path, *, model: Any = None) -> SafetySpec:
    """Read a spec from a file path (``.json``/``.toml``) or an inline string; validate if ``model`` is given."""
    text = str(text_or_path)
    is_file = text.lower().endswith((".json", ".toml")) and "<" not in text and ">" not in text
    spec = load_spec(text) if is_file else parse_inline_spec(text)
    return spec if model is None else spec.validate(model)
