"""JSON encoding of the frozen dataclass trees in this package, driven by their type hints.

Encoding walks dataclasses, mappings and tuples; non-finite floats become ``"inf"``, ``"-inf"``
and ``"nan"`` (JSON has no such numbers). Decoding rebuilds the same tree from the field
annotations, so every report class round-trips without hand-written readers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np

from medsim.policies.risk.estimate import Estimate, decode_float, encode_float


def to_jsonable(obj: Any) -> Any:
    """Plain JSON-serialisable form of ``obj`` (dataclasses become objects keyed by field name)."""
    if isinstance(obj, Estimate):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return encode_float(obj)
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    return str(obj)


def _decode_scalar_union(data: Any) -> Any:
    """Value of a field typed as a union of JSON scalars: floats that were non-finite come back."""
    if isinstance(data, str) and data in ("inf", "-inf", "nan"):
        return float(data)
    return data


def from_jsonable(tp: Any, data: Any) -> Any:
    """Rebuild a value of annotated type ``tp`` from :func:`to_jsonable` output."""
    if tp is Any:
        return data
    if tp is Estimate:
        return Estimate.from_dict(data)
    if tp is float:
        return decode_float(data)
    if tp in (int, str, bool):
        return tp(data)
    if tp is type(None):
        return None
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return from_jsonable(rest[0], data)
        return _decode_scalar_union(data)
    if origin is Literal:
        return data
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], v) for v in data)
        return tuple(from_jsonable(a, v) for a, v in zip(args, data, strict=True))
    if origin in (dict, Mapping, typing.Mapping) or tp in (dict, Mapping):
        val = args[1] if len(args) == 2 else Any
        return {str(k): from_jsonable(val, v) for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        hints = get_type_hints(tp)
        kwargs = {f.name: from_jsonable(hints[f.name], data[f.name]) for f in dataclasses.fields(tp) if f.name in data}
        return tp(**kwargs)
    return data
