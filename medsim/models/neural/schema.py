"""JSON types of a neural configuration: each field read from a file is checked before use.

A configuration comes back from a checkpoint's JSON, which a user may have edited. Without
these checks ``"latent_dim": "six"`` or ``"config": "x"`` reaches the network constructor and
ends in a traceback; with them the message names the field (``config.latent_dim``) and says
what was expected (``an integer``) and what was found (``text 'six'``).

The expected JSON type of each field is read from the dataclass annotation, so a field added to
:class:`~medsim.models.neural.config.NeuralConfig` or one of its specs is checked without a
second list to maintain.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from typing import Any

#: Largest magnitude of a number in a configuration (a float32 network computes with them).
MAX_NUMBER = 1e30

_JSON_KIND = {bool: "true/false", int: "integer", float: "number", str: "text", list: "array", dict: "object"}


def describe(value: Any) -> str:
    """``text 'six'``, ``integer 3``, ``null``: a JSON value as a message shows it."""
    if value is None:
        return "null"
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"{_JSON_KIND.get(type(value), type(value).__name__)} {shown}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    try:
        return _is_number(value) and math.isfinite(value) and abs(value) <= MAX_NUMBER
    except OverflowError:  # an integer beyond float range
        return False


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _integers(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(_integer(v) for v in value)


def _object(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)


#: Dataclass annotation -> (test, what is expected).
CHECKS: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "str": (_text, "text"),
    "Interpolation": (_text, "text"),
    "int": (_integer, "an integer"),
    "float": (_finite, f"a finite number of magnitude at most {MAX_NUMBER:g}"),
    "bool": (_boolean, "true or false"),
    "tuple[int, ...]": (_integers, "an array of integers"),
    "Mapping[str, Any]": (_object, "an object"),
}


def expect(ok: bool, where: str, expected: str, value: Any, error: type[Exception]) -> None:
    """Raise ``error`` naming ``where``, what was expected and what was found, unless ``ok``."""
    if not ok:
        raise error(f"{where}: expected {expected}, got {describe(value)}")


def typed_fields(
    cls: type,
    data: Any,
    where: str,
    error: type[Exception],
    nested: Mapping[str, type] | None = None,
) -> dict[str, Any]:
    """Check a JSON object against dataclass ``cls``; its fields as keyword arguments.

    Parameters
    ----------
    cls : dataclass type
    data : Any
        The JSON value read for an instance of ``cls``.
    where : str
        How messages name ``data`` (``"model.json: config"``); fields are ``where.field``.
    error : exception type
        Raised for the first problem.
    nested : mapping, optional
        Field name -> dataclass type of the elements of a tuple-of-specs field, checked in turn
        (``where.observables[0].name``).

    Returns
    -------
    dict
        Field name -> value (arrays of integers as tuples, specs as instances).
    """
    nested = nested or {}
    expect(_object(data), where, "an object", data, error)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise error(f"{where}: unexpected keys {unknown}; expected a subset of {sorted(known)}")
    out: dict[str, Any] = {}
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise error(f"{where}: missing key {name!r}")
            continue
        value, here = data[name], f"{where}.{name}"
        if name in nested:
            expect(isinstance(value, list | tuple), here, "an array of objects", value, error)
            out[name] = tuple(
                nested[name](**typed_fields(nested[name], item, f"{here}[{k}]", error)) for k, item in enumerate(value)
            )
            continue
        test, expected = CHECKS[str(f.type)]
        expect(test(value), here, expected, value, error)
        out[name] = tuple(value) if str(f.type).startswith("tuple") else value
    return out


def check_calibration(record: Mapping[str, Any], where: str, error: type[Exception]) -> None:
    """The entries of a calibration record that the calibration gate reads have their types.

    ``coverage`` maps levels (``"0.9"``) to fractions in [0, 1]; ``coverage_by_step`` and
    ``width_by_step`` map levels to arrays of numbers (NaN where a step had no prediction);
    ``n_predictions`` and ``n_subjects`` are counts. Other entries are kept as they are.
    """
    coverage = record.get("coverage", {})
    expect(_object(coverage), f"{where}.coverage", "an object of level -> fraction", coverage, error)
    for level, value in coverage.items():
        fraction = _finite(value) and 0.0 <= value <= 1.0
        expect(fraction, f"{where}.coverage.{level}", "a fraction between 0 and 1", value, error)
    for key in ("coverage_by_step", "width_by_step"):
        steps = record.get(key, {})
        expect(_object(steps), f"{where}.{key}", "an object of level -> array of numbers", steps, error)
        for level, values in steps.items():
            numbers = isinstance(values, list | tuple) and all(_is_number(v) for v in values)
            expect(numbers, f"{where}.{key}.{level}", "an array of numbers", values, error)
    for key in ("n_predictions", "n_subjects"):
        if key in record:
            count = record[key]
            expect(_integer(count) and count >= 0, f"{where}.{key}", "a count (integer >= 0)", count, error)
