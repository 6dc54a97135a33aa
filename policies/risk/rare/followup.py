"""The rare-event follow-up of a risk report: splitting where the plain estimate saw too little.

After the plain (bridge-corrected Monte Carlo) evaluation, :func:`with_rare_followup` looks at
each policy's rollout: when fewer than :data:`MIN_VIOLATIONS` patients had a crossing (or the
spec's ``rare=ams`` forces it) it estimates every bound's violation probability by adaptive
multilevel splitting on the same virtual population's closed loop
(:func:`~medsim.policies.risk.rare.auto.rare_followup`), within ``rare_budget`` path-equivalents per
policy, and records a :class:`RareRisk` per bound in the policy's entry of the report. With
patients from several posterior draws and enough budget, each draw gets its own splitting run
and :func:`~medsim.policies.risk.rare.epistemic.rare_epistemic` combines them (the interval is then
over draws, and the epistemic share is reported).

The verdict then rests on the rare estimate's upper bound (the sum over bounds, a union bound,
when there are several) and says so. A splitting run that fails (its iteration budget exhausted,
or every replica extinct so that the estimate is 0 without an interval) is recorded as "could
not be estimated" and the plain verdict stands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from medsim.policies.risk.estimate import Estimate
from medsim.policies.risk.rare.ams import AMSFailure, PathFailure, ams
from medsim.policies.risk.rare.auto import needs_rare
from medsim.policies.risk.rare.closed_loop import closed_loop_problem, runs_compiled
from medsim.policies.risk.rare.epistemic import rare_epistemic
from medsim.policies.risk.rare.result import RareEstimate, RareRisk
from medsim.policies.risk.verdict import Verdict
from medsim.policies.scenarios import MealScenario

MIN_VIOLATIONS = 10
"""``rare=auto`` switches to splitting when fewer patients than this had a crossing."""
DEFAULT_BUDGET = 4000.0
"""Path-equivalents per policy (all bounds and draws together) when the spec sets none."""
REPLICAS = 4
"""Independent splitting replicas per estimate (their spread gives the interval)."""
_KILL = 0.1
SEGMENT_STEPS = 4
"""Simulator sub-steps per noise segment of the compiled closed loop (splitting branches there)."""
MAX_SEGMENTS = 16
# Iterations a replica may take per path it holds: with k = 10 % of n killed per iteration,
# 16 n path-equivalents allow ~150 iterations, p down to 0.9^150 ~ 1e-7.
_DEPTH = 16


def _failed(bound: str, reason: str, plain: int, budget: float, failure: str, spent: float = 0.0) -> RareRisk:
    return RareRisk(bound, reason, plain, budget, None, None, math.nan, spent, failure=failure)


def _split(model, population, policy, bound, *, plain, reason, budget, seed, level, epsilon, options) -> RareRisk:
    """One bound's splitting estimate (per posterior draw where the budget allows)."""
    draw = np.asarray(population.draw)
    groups = [np.flatnonzero(draw == d) for d in np.unique(draw[draw >= 0])]
    per_draw = len(groups) >= 2 and budget / len(groups) >= REPLICAS * _DEPTH * 8
    share = budget / len(groups) if per_draw else budget
    n_paths = max(8, int(share / (REPLICAS * _DEPTH)))
    k = max(1, round(_KILL * n_paths))
    ams_options = dict(
        n_paths=n_paths,
        replicas=REPLICAS,
        kill_fraction=_KILL,
        max_iterations=max(1, int((share / REPLICAS - n_paths) / k)),
        level=level,
    )
    try:
        if not per_draw:
            problem = closed_loop_problem(model, population, policy, bound=bound, seed=seed, **options)
            est = ams(problem, seed=seed, **ams_options)
            if not est.value > 0:
                why = f"all {est.extinct} replicas extinct" if est.extinct else "no replica reached the bound"
                return _failed(
                    bound.name, reason, plain, budget, f"{why} (estimate 0, no interval)", est.path_equivalents
                )
            if est.probability.no_interval:
                return replace(
                    _failed(
                        bound.name,
                        reason,
                        plain,
                        budget,
                        f"no interval: {est.probability.no_interval}",
                        est.path_equivalents,
                    ),
                    estimate=est,
                    extinct=est.extinct,
                )
            return RareRisk(
                bound.name,
                reason,
                plain,
                budget,
                est,
                est.probability,
                est.relative_error,
                est.path_equivalents,
                extinct=est.extinct,
            )
        problems = [
            closed_loop_problem(model, population.take(g), policy, bound=bound, seed=seed, **options) for g in groups
        ]

        def by_draw(problem, **kw: Any) -> RareEstimate:
            return ams(problems[int(problem.params)], **kw)

        options_ = {k_: v for k_, v in ams_options.items() if k_ != "level"}
        epi = rare_epistemic(
            problems[0], list(range(len(groups))), by_draw, epsilon=epsilon, seed=seed, level=level, **options_
        )
    except PathFailure as err:
        return _failed(bound.name, reason, plain, budget, str(err))
    except AMSFailure as err:
        # Every replica ran to its iteration cap: the budget is spent.
        return _failed(bound.name, reason, plain, budget, f"budget exhausted: {err}", budget)
    spent = epi.path_equivalents
    extinct = sum(r.extinct for r in epi.per_draw)
    if not epi.probability.value > 0:
        return _failed(
            bound.name, reason, plain, budget, f"every draw's estimate is 0 ({extinct} replicas extinct)", spent
        )
    if epi.probability.no_interval:
        return replace(
            _failed(bound.name, reason, plain, budget, f"no interval: {epi.probability.no_interval}", spent),
            estimate=epi.per_draw[0],
            extinct=extinct,
        )
    p = replace(epi.probability, upper=min(epi.probability.upper, 1.0))  # a t interval can pass 1
    rel = p.se / p.value if math.isfinite(p.se) else math.nan
    return RareRisk(
        bound.name,
        reason,
        plain,
        budget,
        epi.per_draw[0],
        p,
        rel,
        spent,
        n_draws=len(groups),
        epistemic_share=epi.epistemic_share,
        extinct=extinct,
    )


def _interactions(result, horizon: float) -> int:
    """Interaction slots per path: the plain run's, and at least the rollout's own work estimate
    (horizon over the shortest interval seen, rounded up, plus one), which it checks first."""
    mask = np.asarray(result.mask, bool)
    width = (np.asarray(result.t_end) - np.asarray(result.t_start))[mask]
    shortest = float(width[width > 0].min()) if np.any(width > 0) else float(horizon)
    return max(int(mask.shape[1]), math.ceil(horizon / shortest) + 1)


def _segments(result, dt: float) -> int:
    """Noise segments per interaction for the compiled closed loop: pieces of about
    :data:`SEGMENT_STEPS` sub-steps of the longest interval seen (at most :data:`MAX_SEGMENTS`), so
    that clones branch inside an interval instead of copying its lowest point whole."""
    mask = np.asarray(result.mask, bool)
    width = (np.asarray(result.t_end) - np.asarray(result.t_start))[mask]
    longest = float(width.max()) if width.size else 0.0
    return int(np.clip(math.ceil(longest / (SEGMENT_STEPS * dt)), 1, MAX_SEGMENTS))


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def rare_verdict(plain: Verdict, rare: Sequence[RareRisk], *, epsilon: float, delta: float, seed: int) -> Verdict:
    """The verdict on the rare estimates' upper bound (a union bound over bounds), saying so.

    Returns ``plain`` with a note when some bound could not be estimated.
    """
    if not rare:
        return plain
    missing = [r.bound for r in rare if not r.estimated]
    if missing:
        note = f" (rare-event estimate of {', '.join(missing)} could not be estimated; plain verdict kept)"
        return replace(plain, statement=plain.statement + note)
    probs = [r.probability for r in rare]
    upper = min(1.0, sum(p.upper for p in probs))
    lower = max(p.lower for p in probs)
    value = min(1.0, sum(p.value for p in probs))
    se = math.sqrt(sum(p.se**2 for p in probs)) if all(math.isfinite(p.se) for p in probs) else math.nan
    method = "closed-loop splitting one-sided" + (" (sum over bounds)" if len(probs) > 1 else "")
    est = Estimate(value, lower, upper, probs[0].n, method, seed, 1.0 - delta, se)
    conf = _pct(1.0 - delta)
    why = f"from closed-loop splitting ({rare[0].reason}), upper bound {_pct(upper)}" + (
        ", summed over bounds" if len(probs) > 1 else ""
    )
    if upper <= epsilon:
        decision, text = "PASS", f"PASS: P(violation) <= {_pct(epsilon)} with {conf} confidence ({why})"
    elif lower > epsilon:
        decision, text = "FAIL", f"FAIL: P(violation) > {_pct(epsilon)} with {conf} confidence ({why})"
    else:
        decision = "UNDECIDED"
        text = (
            f"UNDECIDED: P(violation) = {value:.3g} [{lower:.3g}, {upper:.3g}]; cannot tell whether it is <= "
            f"{_pct(epsilon)} with {conf} confidence ({why}; raise rare_budget)"
        )
    return Verdict(decision, float(epsilon), float(delta), est, None, text)


def with_rare_followup(
    report,
    results: Sequence[Any],
    policies: Sequence[Any],
    population,
    *,
    dt: float,
    seed: int,
    scenario: Any = None,
    scheme: str = "milstein",
    min_violations: int = MIN_VIOLATIONS,
):
    """``report`` with the rare-event follow-up of every policy that needs one (module docstring).

    Parameters
    ----------
    report : RiskReport
        The plain report of ``results``.
    results, policies : sequences
        The plain rollouts and the policies, in the report's order.
    population : VirtualPopulation
        The patients of the plain run.
    dt, seed, scenario, scheme
        As in the plain run (``scenario`` the scenario object or ``None``).
    min_violations : int
        ``rare=auto`` switches below this many patients with a crossing.
    """
    spec = report.spec
    if spec.rare == "off":
        return report
    if isinstance(scenario, MealScenario):
        # Splitting needs every row to see the same events: the nominal meals.
        scenario = replace(scenario, time_sd_h=0.0, size_cv=0.0)
    method = "ams" if spec.rare == "ams" else None
    budget = float(spec.rare_budget if spec.rare_budget is not None else DEFAULT_BUDGET)
    level = 1.0 - 2.0 * spec.delta
    entries = []
    for risk, result, policy in zip(report.policies, results, policies, strict=True):
        if hasattr(result, "sums"):  # a streamed rollout: every patient's sums, the first ones recorded
            plain = int(np.asarray(result.sums.grid).any(axis=1).sum())
            result = result.rows
        else:
            n = int(np.asarray(result.grid_violation).shape[0])
            plain = int(np.any(np.asarray(result.grid_violation).reshape(n, -1), axis=1).sum())
        if not needs_rare(plain, min_violations=min_violations, method=method):
            entries.append(risk)
            continue
        reason = (
            "rare=ams in the spec"
            if method
            else f"the plain estimate saw {plain} patient{'' if plain == 1 else 's'} with a crossing, fewer than "
            f"{min_violations}"
        )
        options = dict(
            horizon=spec.horizon,
            dt=dt,
            interactions=_interactions(result, spec.horizon),
            scenario=scenario,
            scheme=scheme,
        )
        compiled = runs_compiled(population.model, policy, horizon=spec.horizon, scenario=scenario, scheme=scheme)
        options["segments"] = _segments(result, dt) if compiled else 1
        share = budget / len(spec.bounds)
        rare = tuple(
            _split(
                population.model,
                population,
                policy,
                bound,
                plain=plain,
                reason=reason,
                budget=share,
                seed=seed,
                level=level,
                epsilon=spec.epsilon,
                options=options,
            )
            for bound in spec.bounds
        )
        v = rare_verdict(risk.verdict, rare, epsilon=spec.epsilon, delta=spec.delta, seed=seed)
        entries.append(replace(risk, rare=rare, verdict=v))
    return replace(report, policies=tuple(entries))
