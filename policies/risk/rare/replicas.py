"""Independent replicas of a splitting-type estimator, run as one compiled, vectorised call.

Adaptive multilevel splitting (:mod:`~medsim.policies.risk.rare.ams`) and subset simulation
(:mod:`~medsim.policies.risk.rare.subset`) both estimate a probability from ``R`` independent
replicas, each a ``lax.while_loop`` over levels with fixed-shape arrays. Replica ``r`` draws all
its random numbers from ``fold_in(key(seed), r)``, so runs over disjoint replica ranges
(``first_replica``) are independent and can be pooled, and a replica's result does not depend on
how many others run with it. :func:`run_replicas` builds those keys and runs
``vmap(replica)`` under one ``jit`` whose static part is the replica function, the problem
without its array parameters and the estimator's integer settings (so a problem's parameters,
e.g. a patient's, change without recompiling).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medsim.policies.risk.rare.problem import PathProblem


def check_replicas(replicas: Any) -> None:
    """Raise ``ValueError`` unless ``replicas`` is an int >= 1."""
    if not (isinstance(replicas, int) and replicas >= 1):
        raise ValueError(f"replicas: expected an int >= 1, got {replicas!r}")


@partial(jax.jit, static_argnums=(0, 1, 2))
def _vmapped(replica: Callable, problem: PathProblem, settings: tuple, keys: jax.Array, params: Any) -> Any:
    problem = problem.with_params(params)
    return jax.vmap(partial(replica, problem, *settings))(keys)


def run_replicas(
    replica: Callable, problem: PathProblem, settings: tuple, *, seed: int, first_replica: int, replicas: int
) -> Any:
    """``replica(problem, *settings, key)`` for replicas ``first_replica ...``, as numpy arrays.

    Parameters
    ----------
    replica : callable
        A module-level function ``(problem, *settings, key) -> state`` (a pytree of arrays).
    problem : PathProblem
    settings : tuple of int
        The estimator's static settings (path count, kill count, level budget, ...).
    seed, first_replica, replicas : int
        Replica ``r`` uses the key ``fold_in(key(seed), first_replica + r)``.

    Returns
    -------
    The replicas' final states, stacked on a leading axis of length ``replicas`` (numpy).
    """
    root = jax.random.key(int(seed) % 2**32)
    keys = jax.vmap(lambda r: jax.random.fold_in(root, r))(jnp.arange(first_replica, first_replica + replicas))
    out = _vmapped(replica, problem.without_params(), tuple(settings), keys, problem.params)
    return jax.tree_util.tree_map(np.asarray, out)


def first_unfinished(done: np.ndarray, first_replica: int) -> int | None:
    """Global index of the first replica that did not reach the event level (None: all did)."""
    bad = np.flatnonzero(~np.asarray(done, bool))
    return None if bad.size == 0 else int(bad[0]) + first_replica
