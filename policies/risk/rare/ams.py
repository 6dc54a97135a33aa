"""Adaptive multilevel splitting in the space of Brownian increments.

One replica holds ``n`` paths of fixed shape. At each iteration the ``k`` lowest path scores
``S_i = max_t score_it`` define the level ``Z`` (the k-th smallest); every path with ``S_i <= Z``
is killed and replaced by a clone of a uniformly chosen survivor that keeps the survivor's
increments up to the first step where its running score exceeded ``Z`` and draws fresh
increments after it (Cérou & Guyader 2007, Stoch. Anal. Appl. 25:417). The clone's law is the law
of a path conditioned to exceed ``Z``, because the score is adapted and the increments are
independent; so the policy, the dosing and every other part of the path act inside the clone.
Killing all paths tied at ``Z`` keeps the estimator unbiased (Bréhier, Gazeau, Goudenège,
Lelièvre & Rousset 2016, Ann. Appl. Probab. 26:3559, "generalized AMS").

The estimator of ``E[phi(X)]`` (here ``phi`` is the bridge-corrected crossing probability) is the
partition of the unit mass over the killed paths: with ``C_j = prod_{l <= j} (1 - K_l / n)``,
``p_hat = sum_j C_{j-1} / n * sum_{killed at j} phi + C_J / n * sum_{final} phi``. Paths killed at
low levels carry their (tiny) within-step crossing probabilities; the iteration stops when the
k-th smallest score reaches 0 (a grid violation). For ``phi = 1{S >= 0}`` this is the classical
estimator ``C_J * (share of final paths outside)``.

Random numbers: replica ``r`` uses ``fold_in(key(seed), r)``; iteration ``j`` and clone batch
``m`` of it ``fold_in(fold_in(that, j + 1), m)``. A replica's result therefore does not depend on
how many replicas run beside it. The whole algorithm is one compiled ``while_loop`` vmapped over
replicas; clones are simulated in fixed-size batches of ``k`` paths (a second batch only when more
than ``k`` paths tie at the level).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from medsim.policies.risk.rare.problem import PathProblem
from medsim.policies.risk.rare.replicas import check_replicas, first_unfinished, run_replicas
from medsim.policies.risk.rare.result import RareEstimate, replica_interval


class AMSFailure(RuntimeError):
    """A splitting run that did not reach the event level within its iteration budget."""


class PathFailure(AMSFailure):
    """A splitting run in which a path could not be simulated (a non-finite crossing probability:
    the closed loop flags a path the rollout would refuse this way)."""


class _State(NamedTuple):
    inc: jax.Array  # (n, T, C) increments
    run: jax.Array  # (n, T) running maximum of the score
    crossing: jax.Array  # (n,) phi
    weight: jax.Array  # C_j
    total: jax.Array  # estimate accumulated so far
    it: jax.Array  # iterations done
    done: jax.Array
    cost: jax.Array  # paths simulated
    levels: jax.Array  # (max_iter,) level of each iteration


def _simulate(problem: PathProblem, inc: jax.Array) -> tuple[jax.Array, jax.Array]:
    score, crossing = problem.evaluate(inc)
    return jax.lax.cummax(score, axis=1), crossing


def _replica(problem: PathProblem, n: int, k: int, max_iter: int, key: jax.Array) -> _State:
    T, C = problem.shape
    inc = jax.random.normal(jax.random.fold_in(key, 0), (n, T, C))
    run, crossing = _simulate(problem, inc)
    zero = jnp.float32(0.0)
    st = _State(
        inc,
        run,
        crossing,
        jnp.float32(1.0),
        zero,
        jnp.int32(0),
        jnp.bool_(False),
        zero + n,
        jnp.full((max_iter,), jnp.nan, jnp.float32),
    )

    def clone(st: _State, z: jax.Array, killed: jax.Array, n_killed: jax.Array, kit: jax.Array) -> _State:
        order_killed = jnp.argsort(~killed, stable=True)  # killed rows first
        order_alive = jnp.argsort(killed, stable=True)  # survivors first
        pick = jax.random.randint(jax.random.fold_in(kit, 0), (n,), 0, n - n_killed)
        donors_all = order_alive[pick]
        steps = jnp.arange(T)

        def batch(m, st: _State) -> _State:
            slot = m * k + jnp.arange(k)
            valid = slot < n_killed
            slot = jnp.minimum(slot, n - 1)
            rows = jnp.where(valid, order_killed[slot], n)  # n: dropped by the scatter
            donors = donors_all[slot]
            tau = jnp.argmax(st.run[donors] > z, axis=1)  # first step above the level
            fresh = jax.random.normal(jax.random.fold_in(kit, m + 1), (k, T, C))
            inc = jnp.where(steps[None, :, None] > tau[:, None, None], fresh, st.inc[donors])
            run, crossing = _simulate(problem, inc)
            return st._replace(
                inc=st.inc.at[rows].set(inc, mode="drop"),
                run=st.run.at[rows].set(run, mode="drop"),
                crossing=st.crossing.at[rows].set(crossing, mode="drop"),
                cost=st.cost + jnp.sum(valid),
            )

        n_batches = (n_killed + k - 1) // k
        return jax.lax.fori_loop(0, n_batches, batch, st)

    def body(st: _State) -> _State:
        s = st.run[:, -1]
        z = jnp.sort(s)[k - 1]
        final = z >= 0.0
        killed = s <= z
        n_killed = jnp.sum(killed)
        extinct = n_killed == n
        taken = jnp.where(final, 1.0, killed.astype(jnp.float32))
        total = st.total + st.weight * jnp.sum(taken * st.crossing) / n
        weight = st.weight * (1.0 - n_killed / n)
        done = final | extinct
        levels = st.levels.at[st.it].set(z)
        new = st._replace(
            total=total, weight=jnp.where(final, st.weight, weight), it=st.it + 1, done=done, levels=levels
        )
        kit = jax.random.fold_in(key, st.it + 1)
        return jax.lax.cond(done, lambda a: a, lambda a: clone(a, z, killed, n_killed, kit), new)

    return jax.lax.while_loop(lambda st: ~st.done & (st.it < max_iter), body, st)


def ams(
    problem: PathProblem,
    *,
    seed: int,
    n_paths: int = 1000,
    kill_fraction: float = 0.1,
    replicas: int = 10,
    first_replica: int = 0,
    max_iterations: int | None = None,
    level: float = 0.95,
) -> RareEstimate:
    """Estimate ``E[crossing]`` of ``problem`` by adaptive multilevel splitting.

    Parameters
    ----------
    problem : PathProblem
    seed : int
        Seed of every random number.
    n_paths : int
        Paths per replica (``n``).
    kill_fraction : float
        ``k / n``: the share of paths killed per iteration (at least one). Larger is faster per
        unit of probability; ``k = 1`` has the smallest variance per path simulated.
    replicas : int
        Independent replicas; their mean is the estimate and their spread gives the interval.
    first_replica : int
        Global index of the first replica (replicas ``first_replica, ...`` are run): runs over
        disjoint replica ranges are independent and can be pooled.
    max_iterations : int, optional
        Iteration budget per replica (default: enough for ``p`` down to about 1e-15).
    level : float
        Confidence level of the interval.

    Returns
    -------
    RareEstimate

    Raises
    ------
    ValueError
        On a bad ``n_paths``, ``kill_fraction`` or ``replicas``.
    AMSFailure
        If a replica has not reached the event level after ``max_iterations`` iterations.
    PathFailure
        If a path could not be simulated (the problem returned a non-finite crossing probability).
    """
    if not (isinstance(n_paths, int) and n_paths >= 2):
        raise ValueError(f"n_paths: expected an int >= 2, got {n_paths!r}")
    if not (0.0 < kill_fraction < 1.0):
        raise ValueError(f"kill_fraction: expected a share in (0, 1), got {kill_fraction!r}")
    check_replicas(replicas)
    k = min(max(1, round(kill_fraction * n_paths)), n_paths - 1)
    if max_iterations is None:  # each iteration divides p by about 1 - k/n
        max_iterations = math.ceil(35.0 / -math.log1p(-k / n_paths)) + 10
    settings = (n_paths, k, int(max_iterations))
    out = run_replicas(_replica, problem, settings, seed=seed, first_replica=first_replica, replicas=replicas)
    broken = ~np.isfinite(out.total) | ~np.all(np.isfinite(out.crossing), axis=1)
    if np.any(broken):
        raise PathFailure(
            f"ams on {problem.name!r}: replica {int(np.flatnonzero(broken)[0]) + first_replica} met a path that "
            "could not be simulated (a non-finite or runaway state, an unusable option, or more interactions "
            "than the problem's steps); run the rollout on the host (loop='host') to see which patient and why"
        )
    bad = first_unfinished(out.done, first_replica)
    if bad is not None:
        raise AMSFailure(
            f"ams on {problem.name!r}: replica {bad} did not reach the event level in {max_iterations} "
            f"iterations (p below ~(1 - k/n)^{max_iterations}); raise max_iterations or kill_fraction"
        )
    values = out.total.astype(float)
    method = f"ams ({replicas} replicas of {n_paths} paths, k={k}; log-scale t interval)"
    est, rel = replica_interval(values, level=level, seed=seed, method=method)
    n_it = int(out.it[0])
    last = out.levels[np.arange(replicas), np.maximum(out.it, 1) - 1]
    return RareEstimate(
        probability=est,
        relative_error=rel,
        path_equivalents=float(out.cost.sum()),
        estimator="ams",
        problem=problem.name,
        replicas=tuple(float(v) for v in values),
        levels=tuple(float(v) for v in out.levels[0, :n_it]),
        iterations=float(out.it.mean()),
        extinct=int(np.sum(last < 0.0)),
    )
