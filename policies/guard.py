"""User policies run behind a guard: every call is checked, every failure is a PolicyError.

medsim loads user policies from ``--policy module:attr`` or ``file.py`` and runs their code in
the rollout. A policy that raises, exits (``sys.exit``) or returns something other than
``(state, Option)`` would otherwise end ``medsim risk`` in a traceback deep inside the rollout,
or silently with exit status 0 and no report. :class:`GuardedPolicy` wraps a loaded policy so
that each ``init``/``act`` call either returns a checked result or raises a
:class:`~medsim.policies.protocol.PolicyError` naming the policy, the call and what came back (the
original exception chained). ``KeyboardInterrupt`` is left alone: it is the user's Ctrl-C.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.policies.protocol import Observation, Option, PolicyError

T = TypeVar("T")


def describe(value: Any) -> str:
    """``"int 17"`` / ``"str 'text'"``: the type and a short repr of what user code returned."""
    try:
        shown = reprlib.repr(value)
    except Exception:  # a user object whose __repr__ fails still gets named by its type
        shown = "<no repr>"
    return f"{type(value).__name__} {shown}"


def run_user_code(where: str, call: Callable[[], T], *, passthrough: tuple[type[BaseException], ...] = ()) -> T:
    """Run ``call()`` (user code); turn what it raises, or an attempt to exit, into a PolicyError.

    Parameters
    ----------
    where : str
        What is being called, for the message (``"user policy 'p' (my.py:P): act()"``).
    call : callable
        The user code to run.
    passthrough : tuple of exception types
        Errors medsim itself raises inside ``call`` (e.g. a parameter error) that keep their type.

    Raises
    ------
    PolicyError
        ``call`` raised (the original exception is chained) or called ``sys.exit``.
    """
    try:
        return call()
    except passthrough:
        raise
    except SystemExit as err:
        raise PolicyError(
            f"{where} tried to exit the program (SystemExit({err.code!r})); a policy must return, not exit"
        ) from err
    except Exception as err:
        raise PolicyError(f"{where} raised {type(err).__name__}: {err}") from err


@dataclass(frozen=True)
class GuardedPolicy:
    """A user policy whose ``init`` and ``act`` are run by :func:`run_user_code` and checked.

    Attributes other than these are read from the wrapped policy, so a loaded user policy can be
    inspected like the object the user wrote (``parse_policy("my.py:P:gain=2").gain``).

    Attributes
    ----------
    policy : object
        The user's policy (already checked against :class:`medsim.policies.protocol.Policy`).
    name : str
        Its name, read once when it was loaded.
    origin : str
        Where it came from (``"module:attr"`` or ``"file.py:attr"``), for messages.
    model : PhysiologyModel, optional
        The model it acts on; when given, options are also checked against its dose compartments.
    """

    policy: Any
    name: str
    origin: str
    model: PhysiologyModel | None = None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr == "policy":  # not while copying or unpickling
            raise AttributeError(attr)
        return getattr(self.policy, attr)

    def _where(self, call: str) -> str:
        return f"user policy {self.name!r} ({self.origin}): {call}"

    def init(self, n: int, *, seed: int) -> Any:
        return run_user_code(self._where("init()"), lambda: self.policy.init(n, seed=seed))

    def act(self, state: Any, obs: Observation, *, rng: np.random.Generator) -> tuple[Any, Option]:
        where = self._where("act()")
        out = run_user_code(where, lambda: self.policy.act(state, obs, rng=rng))
        if not (isinstance(out, tuple) and len(out) == 2):
            raise PolicyError(f"{where} must return a pair (state, Option); got {describe(out)}")
        new_state, option = out
        if not isinstance(option, Option):
            raise PolicyError(
                f"{where} must return (state, Option); the second item is {describe(option)}, expected an "
                "Option(interval=..., bolus={cmt: ...}, rate={cmt: ...}) from policies.protocol"
            )
        return new_state, option.validated(obs.n, self.model, np.asarray(obs.active, bool), self.name)
