"""Policies from text: built-in specs (``"tdm:target=10,every=12"``) and user code.

Spec grammar
------------
``NAME[:key=value,key=value,...]`` for a built-in (``medsim.policies.builtin.BUILTINS``).
Values are numbers, ``true``/``false``, strings, or lists separated by ``;``
(``measure_at=1;2;6``). Keys with a dotted prefix configure a component policy:
``safe_timing:eps=0.05,base=tdm,base.target=10`` or ``flip:q=0.3,a=fixed,a.dose=400,b=fixed,b.dose=600``.

Learned policies: ``learned:PATH`` (a trained agent's JSON architecture and safetensors weights,
:mod:`medsim.policies.learned`).

User policies: ``package.module:attr[:key=value,...]`` or ``path/to/file.py[:attr][:key=value,...]``,
loaded by :func:`medsim.policies.user_code.load_user_policy` (what ``attr`` may be, and which functions
medsim agrees to call, is described there).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from medsim.policies.protocol import Policy, PolicyContext, PolicySpecError, for_model
from medsim.policies.user_code import FunctionPolicy, check_policy, load_user_policy, policy_factory

__all__ = [
    "FunctionPolicy",
    "PolicySpecError",
    "build_component",
    "build_dataclass",
    "build_policies",
    "check_policy",
    "load_user_policy",
    "parse_params",
    "parse_policy",
    "policy_factory",
    "split_components",
]


# ---------------------------------------------------------------------------- values
def parse_params(text: str) -> dict[str, str]:
    """``"a=1,b=x"`` -> ``{"a": "1", "b": "x"}`` (errors name the bad item)."""
    out: dict[str, str] = {}
    if not text.strip():
        return out
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PolicySpecError(f"policy parameter {item.strip()!r} is not of the form key=value")
        if key in out:
            raise PolicySpecError(f"policy parameter {key!r} is given twice")
        out[key] = value.strip()
    return out


def _convert(kind: str, key: str, value: str, annotation: str) -> Any:
    def bad(expected: str) -> PolicySpecError:
        return PolicySpecError(f"policy {kind!r}: parameter {key}={value!r} is not {expected}")

    ann = annotation.replace(" ", "")
    if ann == "bool":
        low = value.lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise bad("true or false")
    if ann == "int":
        try:
            number = float(value)
        except ValueError:
            raise bad("an integer") from None
        if not number.is_integer():
            raise bad("an integer")
        return int(number)
    if ann == "float":
        try:
            number = float(value)
        except ValueError:
            raise bad("a number") from None
        if math.isnan(number):
            raise bad("a number")
        return number
    if ann.startswith("tuple[float"):
        try:
            numbers = tuple(float(v) for v in value.split(";") if v.strip())
        except ValueError:
            raise bad("a list of numbers separated by ';'") from None
        if any(math.isnan(x) for x in numbers):
            raise bad("a list of numbers separated by ';'")
        return numbers
    return value


def build_dataclass(cls: type, kind: str, raw: Mapping[str, str]) -> Any:
    """Instantiate dataclass ``cls`` from string parameters, converting by field annotation.

    Raises
    ------
    PolicySpecError
        On an unknown key (listing the valid ones), a value of the wrong type, or a value the
        class rejects.
    """
    # Fields a policy takes from its model (protocol.FROM_MODEL) are not spec parameters.
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("from_model")}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise PolicySpecError(
            f"policy {kind!r}: unknown parameter {unknown[0]!r}; valid parameters: {', '.join(fields)}"
        )

    def annotation(t: Any) -> str:  # a string under postponed evaluation, else the type itself
        return t.__name__ if isinstance(t, type) else str(t)

    kwargs = {k: _convert(kind, k, v, annotation(fields[k].type)) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise PolicySpecError(f"policy {kind!r}: {err}") from None


def split_components(raw: Mapping[str, str], prefixes: tuple[str, ...]) -> tuple[dict[str, str], dict[str, dict]]:
    """Separate ``prefix.key=value`` entries (component parameters) from the policy's own."""
    own: dict[str, str] = {}
    parts: dict[str, dict[str, str]] = {p: {} for p in prefixes}
    for key, value in raw.items():
        head, dot, rest = key.partition(".")
        if dot and head in parts:
            parts[head][rest] = value
        else:
            own[key] = value
    return own, parts


def build_component(kind: str, raw: Mapping[str, str], context: PolicyContext) -> Policy:
    """A component policy of a composite spec (``base=tdm,base.target=10`` -> ``tdm:target=10``)."""
    body = ",".join(f"{k}={v}" for k, v in raw.items())
    return parse_policy(f"{kind}:{body}" if body else kind, context=context)


# ---------------------------------------------------------------------------- specs
def _split_spec(spec: str) -> tuple[str, str, str]:
    """-> (kind, target, params): kind ``"builtin"``, ``"learned"`` or ``"user"``."""
    from medsim.policies.builtin import BUILTINS

    head, _, rest = spec.strip().partition(":")
    if head == "learned":
        return "learned", rest, ""
    if head in BUILTINS:
        return "builtin", head, rest
    if head.endswith(".py"):
        attr, _, params = rest.partition(":")
        if "=" in attr:
            attr, params = "", rest
        return "user", f"{head}:{attr}" if attr else head, params
    if "." in head or rest:
        attr, _, params = rest.partition(":")
        if not attr or "=" in attr:
            raise PolicySpecError(
                f"unknown policy {head!r}; built-in policies: {', '.join(BUILTINS)}; user policies are "
                "'module:attribute' or 'file.py'"
            )
        return "user", f"{head}:{attr}", params
    raise PolicySpecError(f"unknown policy {head!r}; built-in policies: {', '.join(BUILTINS)}")


def parse_policy(spec: str, *, context: PolicyContext | None = None) -> Policy:
    """Build a policy from its spec string.

    Parameters
    ----------
    spec : str
        ``"fixed:dose=400,every=12"``, ``"mypkg.policies:MyPolicy:gain=2"``, ``"my_policy.py"``...
    context : PolicyContext, optional
        Model, bounds, posterior draws and step size for policies that need them (``safe_timing``).

    Raises
    ------
    PolicySpecError
        Naming the bad policy, key or value and listing the valid ones.
    """
    from medsim.policies.builtin import BUILTINS

    if not isinstance(spec, str) or not spec.strip():
        raise PolicySpecError(f"policy spec must be a non-empty string, got {spec!r}")
    kind, target, params = _split_spec(spec)
    if kind == "learned":
        from medsim.policies.learned import LearnedPolicy

        return LearnedPolicy.from_spec({"": target}, context or PolicyContext())
    raw = parse_params(params)
    if kind == "user":
        return load_user_policy(target, raw, context=context)
    builder = BUILTINS[target]
    from_spec = getattr(builder, "from_spec", None)
    if from_spec is not None:
        return from_spec(raw, context or PolicyContext())
    return build_dataclass(builder, target, raw)


def build_policies(policies: Sequence[Policy | str], *, context: PolicyContext | None = None) -> list[Policy]:
    """Policies as a library caller may give them: objects, or spec strings built here.

    The one place where an evaluation turns spec strings (``"pid:every=60"``, the command line's
    form) into policies. Policy objects are checked against the protocol and, when ``context``
    has a model, take what they read from it (:func:`medsim.policies.protocol.for_model`), so a
    policy that cannot run on the model fails here, before any patient is simulated.

    Parameters
    ----------
    policies : sequence of Policy or str
    context : PolicyContext, optional
        What specs are built with (:func:`parse_policy`).

    Raises
    ------
    PolicySpecError
        For a bad spec string, or an object that is not a policy (naming its position);
        :class:`~medsim.policies.protocol.MissingObservableError` for a glucose controller on a
        model without glucose.
    """
    if isinstance(policies, str):
        raise PolicySpecError(f"policies must be a sequence of policies or spec strings, got the string {policies!r}")
    model = None if context is None else context.model
    return [
        parse_policy(p, context=context)
        if isinstance(p, str)
        else for_model(check_policy(p, f"policies[{i}] ({type(p).__name__})"), model)
        for i, p in enumerate(policies)
    ]
