"""Subset simulation with preconditioned Crank–Nicolson moves on the increments.

The event ``{S >= 0}`` (``S`` the path's largest score) is reached through nested intermediate
events ``{S > z_1} ⊃ {S > z_2} ⊃ ...``, each level the ``1 - p0`` quantile of the scores of the
current population (Au & Beck 2001, Probab. Eng. Mech. 16:263). The ``p0 N`` paths above a level
seed Markov chains that stay in it: the preconditioned Crank–Nicolson proposal
``xi' = rho xi + sqrt(1 - rho^2) eta`` (Cotter, Roberts, Stuart & White 2013, Stat. Sci. 28:424)
leaves the standard normal law of the increments invariant, so a move is accepted exactly when
the proposed path stays above the level (Papaioannou, Betz, Zwirglmaier & Straub 2015, Probab.
Eng. Mech. 41:89). ``sqrt(1 - rho^2)`` is adapted between levels towards an acceptance rate of
0.44.

As in :mod:`.ams` the estimate of ``E[phi]`` partitions the mass: the paths of level ``j`` below
the next level carry ``P_j / N`` each, the final population (at least ``p0 N`` paths at or above 0)
``P_J / N`` each. The estimator is consistent with a bias of order ``1 / N`` (Au & Beck 2001,
§4); the interval comes from independent replicas.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from medsim.policies.risk.rare.problem import PathProblem
from medsim.policies.risk.rare.replicas import check_replicas, first_unfinished, run_replicas
from medsim.policies.risk.rare.result import RareEstimate, replica_interval


class SubsetFailure(RuntimeError):
    """A subset simulation that did not reach the event level within its level budget."""


class _State(NamedTuple):
    inc: jax.Array  # (N, T, C)
    top: jax.Array  # (N,) largest score
    crossing: jax.Array  # (N,)
    mass: jax.Array  # P_j
    total: jax.Array
    level: jax.Array  # levels done
    done: jax.Array
    cost: jax.Array
    spread: jax.Array  # sqrt(1 - rho^2)
    levels: jax.Array  # (max_levels,)


def _simulate(problem: PathProblem, inc: jax.Array) -> tuple[jax.Array, jax.Array]:
    score, crossing = problem.evaluate(inc)
    return score.max(axis=1), crossing


def _replica(problem: PathProblem, n: int, n_seeds: int, max_levels: int, key: jax.Array) -> _State:
    T, C = problem.shape
    chain = n // n_seeds
    inc = jax.random.normal(jax.random.fold_in(key, 0), (n, T, C))
    top, crossing = _simulate(problem, inc)
    zero = jnp.float32(0.0)
    st = _State(
        inc,
        top,
        crossing,
        jnp.float32(1.0),
        zero,
        jnp.int32(0),
        jnp.bool_(False),
        zero + n,
        jnp.float32(0.6),
        jnp.full((max_levels,), jnp.nan, jnp.float32),
    )

    def move(st: _State, z: jax.Array, kl: jax.Array) -> _State:
        seeds = jnp.argsort(-st.top)[:n_seeds]
        x, s, q = st.inc[seeds], st.top[seeds], st.crossing[seeds]
        a = jnp.sqrt(1.0 - st.spread**2)

        def step(carry, i):
            x, s, q, acc = carry
            eta = jax.random.normal(jax.random.fold_in(kl, i), x.shape)
            y = a * x + st.spread * eta
            s_new, q_new = _simulate(problem, y)
            ok = s_new > z
            x = jnp.where(ok[:, None, None], y, x)
            s, q = jnp.where(ok, s_new, s), jnp.where(ok, q_new, q)
            return (x, s, q, acc + ok.mean()), (x, s, q)

        (_, _, _, acc), (xs, ss, qs) = jax.lax.scan(step, (x, s, q, zero), jnp.arange(chain - 1))
        pop = jnp.concatenate([x[None], xs]).reshape(n, T, C)
        top = jnp.concatenate([s[None], ss]).reshape(n)
        crossing = jnp.concatenate([q[None], qs]).reshape(n)
        rate = acc / max(chain - 1, 1)
        spread = jnp.clip(st.spread * jnp.exp(rate - 0.44), 0.05, 1.0)
        return st._replace(inc=pop, top=top, crossing=crossing, cost=st.cost + n_seeds * (chain - 1), spread=spread)

    def body(st: _State) -> _State:
        z = jnp.sort(st.top)[n - n_seeds - 1]
        final = jnp.mean(st.top >= 0.0) >= n_seeds / n
        below = st.top <= z
        taken = jnp.where(final, 1.0, below.astype(jnp.float32))
        total = st.total + st.mass * jnp.sum(taken * st.crossing) / n
        above = n - jnp.sum(below)
        extinct = above == 0
        new = st._replace(
            total=total,
            mass=st.mass * above / n,
            level=st.level + 1,
            done=final | extinct,
            levels=st.levels.at[st.level].set(jnp.where(final, 0.0, z)),
        )
        kl = jax.random.fold_in(key, st.level + 1)
        return jax.lax.cond(new.done, lambda a: a, lambda a: move(a, z, kl), new)

    return jax.lax.while_loop(lambda st: ~st.done & (st.level < max_levels), body, st)


def subset_simulation(
    problem: PathProblem,
    *,
    seed: int,
    n_paths: int = 1000,
    p0: float = 0.1,
    replicas: int = 10,
    first_replica: int = 0,
    max_levels: int = 40,
    level: float = 0.95,
) -> RareEstimate:
    """Estimate ``E[crossing]`` of ``problem`` by subset simulation (see the module docstring).

    Parameters
    ----------
    problem : PathProblem
    seed : int
    n_paths : int
        Paths per level (``N``); ``p0 N`` must divide ``N``.
    p0 : float
        Conditional probability of each intermediate level.
    replicas, first_replica, level
        As in :func:`medsim.policies.risk.rare.ams.ams`.
    max_levels : int
        Level budget per replica (``p`` down to about ``p0^max_levels``).

    Raises
    ------
    ValueError
        When ``p0 N`` is not a whole divisor of ``N`` or the counts are bad.
    SubsetFailure
        If a replica has not reached the event level within ``max_levels``.
    """
    if not (isinstance(n_paths, int) and n_paths >= 4):
        raise ValueError(f"n_paths: expected an int >= 4, got {n_paths!r}")
    n_seeds = round(p0 * n_paths)
    if not (0.0 < p0 < 1.0) or n_seeds < 1 or n_paths % n_seeds:
        raise ValueError(f"p0: p0 * n_paths must be a whole divisor of n_paths, got p0={p0!r}, n_paths={n_paths}")
    check_replicas(replicas)
    settings = (n_paths, n_seeds, int(max_levels))
    out = run_replicas(_replica, problem, settings, seed=seed, first_replica=first_replica, replicas=replicas)
    bad = first_unfinished(out.done, first_replica)
    if bad is not None:
        raise SubsetFailure(
            f"subset simulation on {problem.name!r}: replica {bad} did not reach the event level in "
            f"{max_levels} levels; raise max_levels"
        )
    values = out.total.astype(float)
    method = f"subset simulation ({replicas} replicas of {n_paths} paths, p0={p0:g}; log-scale t interval)"
    est, rel = replica_interval(values, level=level, seed=seed, method=method)
    n_lv = int(out.level[0])
    return RareEstimate(
        probability=est,
        relative_error=rel,
        path_equivalents=float(out.cost.sum()),
        estimator="subset",
        problem=problem.name,
        replicas=tuple(float(v) for v in values),
        levels=tuple(float(v) for v in out.levels[0, :n_lv]),
        iterations=float(out.level.mean()),
    )
