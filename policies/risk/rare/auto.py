"""When to switch from the plain estimate to a rare-event estimator, and the switch itself.

A plain estimate that saw fewer than ``min_violations`` violations (counted as patients with a
grid violation, the events a plain Monte Carlo run can see) cannot bound a small probability
usefully: "0 % [0 %, 0.37 %]" on 1000 patients. :func:`rare_followup` then estimates the same
probability (the population mean of the bridge-corrected crossing probability of one bound) by
splitting on the real closed loop, and returns ``None`` when the plain estimate suffices. A
spec's ``rare=`` choice forces the switch; on the closed loop (hashed per-interaction noise) only
``ams`` applies (subset simulation and importance sampling need increments that enter the
dynamics continuously).
"""

from __future__ import annotations

from typing import Any

from medsim.policies.protocol import Policy
from medsim.policies.risk.rare.ams import ams
from medsim.policies.risk.rare.closed_loop import closed_loop_problem
from medsim.policies.risk.rare.result import RareEstimate
from medsim.population.virtual import VirtualPopulation
from medsim.simulate.types import Bound

METHODS = ("ams", "subset", "is")


class RareMethodError(ValueError):
    """A ``rare=`` choice that is unknown, or does not apply to the problem."""


def needs_rare(n_violations: int, *, min_violations: int = 10, method: str | None = None) -> bool:
    """True when the plain estimate saw fewer than ``min_violations`` or ``method`` forces it.

    Raises
    ------
    RareMethodError
        On a ``method`` other than ``None``, ``"ams"``, ``"subset"`` or ``"is"``.
    """
    if method is not None and method not in METHODS:
        raise RareMethodError(f"rare: expected one of {METHODS}, got {method!r}")
    return method is not None or int(n_violations) < int(min_violations)


def rare_followup(
    model,
    population: VirtualPopulation,
    policy: Policy,
    *,
    bound: Bound,
    n_violations: int,
    horizon: float,
    dt: float,
    seed: int,
    interactions: int,
    min_violations: int = 10,
    method: str | None = None,
    n_paths: int = 200,
    replicas: int = 10,
    **rollout_options: Any,
) -> RareEstimate | None:
    """Splitting estimate of ``P(leave bound)`` when the plain one saw too few violations.

    Parameters
    ----------
    model, population, policy, horizon, dt, seed
        As given to the plain rollout.
    bound : Bound
        The bound whose violation probability is wanted.
    n_violations : int
        Violations the plain estimate saw.
    interactions : int
        Most interactions per path (the horizon over the policy's shortest interval, plus events).
    min_violations : int
        Switch below this many.
    method : {"ams", "subset", "is"} or None
        The spec's ``rare=`` choice (forces the switch).
    n_paths, replicas
        Splitting's paths per replica and independent replicas.
    rollout_options
        Passed to :func:`~medsim.policies.risk.rare.closed_loop.closed_loop_problem`.

    Returns
    -------
    RareEstimate or None
        ``None`` when the plain estimate suffices.

    Raises
    ------
    RareMethodError
        For ``method="subset"`` or ``"is"`` (not applicable to the hashed closed-loop noise) or an
        unknown method.
    """
    if not needs_rare(n_violations, min_violations=min_violations, method=method):
        return None
    if method not in (None, "ams"):
        raise RareMethodError(
            f"rare={method}: the closed loop draws its noise from hashed per-interaction streams (a clone "
            "replays its donor's noise), which only splitting can use; use rare=ams (subset and is apply to "
            "path problems whose increments enter the dynamics continuously)"
        )
    problem = closed_loop_problem(
        model,
        population,
        policy,
        bound=bound,
        horizon=horizon,
        dt=dt,
        seed=seed,
        interactions=interactions,
        **rollout_options,
    )
    return ams(problem, seed=seed, n_paths=n_paths, replicas=replicas)
