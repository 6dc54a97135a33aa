"""User policies: Python code loaded by ``--policy module:attr`` or ``--policy file.py[:attr]``.

Loading a user policy imports its module, which runs that module's code: it is a feature (write
a policy in Python, evaluate it with ``medsim risk``) and it means that only trusted code should be
named. Beyond the import, medsim calls nothing it cannot identify as making a policy:

* a class whose instances have ``init`` and ``act`` methods — instantiated with the key=value
  parameters (converted like built-in parameters when the class is a dataclass, passed as
  strings otherwise);
* a function whose first parameter is named ``obs`` — a memoryless policy
  ``f(obs, *, rng) -> Option``, wrapped in :class:`FunctionPolicy`;
* a policy factory — a function named ``make_policy``, annotated to return a policy
  (``-> Policy`` or a policy class) or decorated with :func:`policy_factory` — called with the
  parameters;
* an object that already is a policy.

Any other class or function (``subprocess:getoutput``, say) is refused before it is called.
Parameters are checked against the signature before the call.

Everything made is checked against :class:`medsim.policies.protocol.Policy` with an error that says
what is missing, and runs behind :class:`medsim.policies.guard.GuardedPolicy`, which turns exceptions,
``sys.exit`` calls and malformed returns of the user's code into a :class:`PolicyError`.
``module`` is looked up in the installed packages, ``PYTHONPATH`` and, last, the current folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsim.policies.guard import GuardedPolicy, run_user_code
from medsim.policies.protocol import Observation, Option, Policy, PolicyContext, PolicySpecError


@dataclass(frozen=True)
class FunctionPolicy:
    """A memoryless policy from a function ``f(obs, *, rng) -> Option``."""

    function: Callable[..., Option]
    name: str

    def init(self, n: int, *, seed: int) -> None:
        return None

    def act(self, state: None, obs: Observation, *, rng: np.random.Generator) -> tuple[None, Option]:
        return None, self.function(obs, rng=rng)


FACTORY_MARK = "__medsim_policy_factory__"


def policy_factory(function: Callable[..., Policy]) -> Callable[..., Policy]:
    """Mark ``function`` as a policy factory that ``--policy module:function:k=v`` may call.

    medsim calls a user function only if it can tell that the function makes a policy: it is
    named ``make_policy``, is annotated to return a policy (``-> Policy`` or a policy class), or
    carries this mark. Any other function is refused before it is called, so that
    ``--policy some_module:some_function`` cannot run arbitrary code by mistake.
    """
    setattr(function, FACTORY_MARK, True)
    return function


def check_policy(obj: Any, origin: str) -> Policy:
    """Return ``obj`` if it satisfies the policy protocol, else raise naming what is missing."""
    missing = [a for a in ("init", "act") if not callable(getattr(obj, a, None))]
    if not isinstance(getattr(obj, "name", None), str):
        missing.append("name (a str)")
    if missing:
        raise PolicySpecError(
            f"{origin} is not a policy: it lacks {', '.join(missing)}; a policy has name: str, "
            "init(n, *, seed) -> state and act(state, obs, *, rng) -> (state, Option)"
        )
    for method, needed in (("init", ("seed",)), ("act", ("rng",))):
        if not _accepts_keyword(getattr(obj, method), needed[0]):
            raise PolicySpecError(f"{origin}: {method}() must accept the keyword argument {needed[0]!r}")
    return obj


def _accepts_keyword(function: Any, keyword: str) -> bool:
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):  # not introspectable (e.g. a C function): checked when called
        return True
    return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _is_policy_class(obj: Any) -> bool:
    """A class whose instances have ``init`` and ``act`` methods (``name`` is checked on the instance)."""
    return inspect.isclass(obj) and callable(getattr(obj, "init", None)) and callable(getattr(obj, "act", None))


def _resolve_annotation(annotation: Any, namespace: Mapping[str, Any]) -> Any:
    """A string annotation (``"Policy"``, ``"mod.MyPolicy"``) looked up by name, without evaluating it."""
    if not isinstance(annotation, str):
        return annotation
    head, *rest = annotation.strip().split(".")
    obj = namespace.get(head)
    for part in rest:
        obj = getattr(obj, part, None)
    return obj


def _is_factory(function: Any) -> bool:
    """A function medsim may call to make a policy (see :func:`policy_factory`)."""
    if getattr(function, FACTORY_MARK, False) is True or function.__name__ == "make_policy":
        return True
    try:
        returns = inspect.signature(function).return_annotation
    except (TypeError, ValueError):
        return False
    returns = _resolve_annotation(returns, getattr(function, "__globals__", {}))
    return returns is Policy or _is_policy_class(returns)


def _add_working_directory_to_path() -> None:
    """Let ``--policy my_module:MyPolicy`` find ``my_module.py`` in the current folder.

    ``python script.py`` and ``python -m`` do this; the ``medsim`` entry point does not. The folder
    goes last, so a file there never shadows an installed package.
    """
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed
        return
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)
    importlib.invalidate_caches()


def _import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise PolicySpecError(f"policy file {path} does not exist")
        unique = f"medsim_user_policy_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(unique, path)
        if spec is None or spec.loader is None:
            raise PolicySpecError(f"policy file {path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as err:
            sys.modules.pop(unique, None)
            raise PolicySpecError(f"policy file {path} failed to import: {type(err).__name__}: {err}") from err
        attr = attr or "policy"
    else:
        if not attr:
            raise PolicySpecError(f"user policy {target!r} must be 'module:attribute' or a .py file path")
        _add_working_directory_to_path()
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise PolicySpecError(
                f"cannot import policy module {module_name!r}: {err} (searched the installed packages, PYTHONPATH "
                "and the current folder)"
            ) from err
        except (Exception, SystemExit) as err:
            raise PolicySpecError(
                f"policy module {module_name!r} failed to import: {type(err).__name__}: {err}"
            ) from err
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise PolicySpecError(f"{module_name} has no attribute {attr!r}; it has: {', '.join(public[:30])}")
    return getattr(module, attr)


def _make(target: str, obj: Any, raw: dict[str, str]) -> Any:
    """Turn what ``target`` names into a policy object, calling only what is known to make one."""
    origin = f"user policy {target!r}"
    if inspect.isclass(obj):
        if not _is_policy_class(obj):
            missing = [m for m in ("init", "act") if not callable(getattr(obj, m, None))]
            raise PolicySpecError(
                f"{origin} is not a policy: it lacks {' and '.join(missing)} (a policy class has the methods "
                "init(n, *, seed) and act(state, obs, *, rng)); medsim does not instantiate it"
            )
        if dataclasses.is_dataclass(obj):
            from medsim.policies.loading import build_dataclass

            return run_user_code(
                f"{origin}: creating it", lambda: build_dataclass(obj, target, raw), passthrough=(PolicySpecError,)
            )
        _bind(obj, raw, origin)
        return run_user_code(f"{origin}: creating it", lambda: obj(**raw))
    function = getattr(obj, "__func__", obj)  # a bound method is judged by its function
    if inspect.isfunction(function):
        params = list(inspect.signature(obj).parameters)
        if params and params[0] == "obs":
            if raw:
                raise PolicySpecError(f"{origin} is a memoryless policy function; it takes no parameters")
            if not _accepts_keyword(obj, "rng"):
                raise PolicySpecError(f"{origin}: a policy function must accept the keyword argument 'rng'")
            return FunctionPolicy(obj, name=target)
        if not _is_factory(function):
            raise PolicySpecError(
                f"{origin} is a function that is neither a policy function f(obs, *, rng) -> Option nor a policy "
                "factory; medsim calls only factories named make_policy, annotated '-> Policy' (or a policy class) "
                "or decorated with @policies.policy_factory"
            )
        _bind(obj, raw, origin)
        return run_user_code(f"{origin}: making the policy", lambda: obj(**raw))
    if raw:
        check_policy(obj, origin)  # says "not a policy" first for e.g. os:system:command=...
        raise PolicySpecError(f"{origin} is an object; it takes no parameters")
    return obj


def _bind(callable_: Any, raw: Mapping[str, str], origin: str) -> None:
    """Check the parameters against the signature before any user code runs."""
    try:
        inspect.signature(callable_).bind(**raw)
    except TypeError as err:
        raise PolicySpecError(f"{origin}: cannot be called with {dict(raw)}: {err}") from None
    except ValueError:  # no signature to check against
        pass


def load_user_policy(
    target: str, raw: Mapping[str, str] | None = None, *, context: PolicyContext | None = None
) -> Policy:
    """Load a user policy from ``module:attr`` or ``file.py[:attr]`` (see the module docstring).

    Loading imports the module, which runs its code: pass only policies you trust.

    Returns
    -------
    GuardedPolicy
        The policy behind a guard that checks each call (see :mod:`medsim.policies.guard`).

    Raises
    ------
    PolicySpecError
        The target cannot be imported, is not a policy or a known policy maker, or the parameters
        do not fit it.
    PolicyError
        Its code raised or tried to exit while the policy was being made.
    """
    made = _make(target, _import_target(target), dict(raw or {}))
    origin = f"user policy {target!r}"
    name = run_user_code(
        f"{origin}: reading its name", lambda: check_policy(made, origin).name, passthrough=(PolicySpecError,)
    )
    model = None if context is None else context.model
    return GuardedPolicy(made, name=name, origin=target, model=model)
