"""Convergence checks of a variational (SVI) fit, from its ELBO trace.

SVI has no Markov chains, so R-hat, ESS, divergences and E-BFMI do not apply. What can be
checked is whether the optimiser had stopped improving the evidence lower bound, on the ELBO
trace split into :data:`WINDOWS` consecutive windows whose means smooth the per-step noise of
the ELBO estimate:

- **still rising**: the mean of the last window exceeds that of the window before by more than
  both :data:`ELBO_REL_TOL` of its magnitude and three standard errors of the difference (the
  ELBO was still improving when the run stopped: more steps, or a larger learning rate);
- **worse than earlier**: the last window's mean is below the best earlier window's by the same
  margin (the optimiser moved away from a better optimum: a learning rate too large, or a guide
  that cannot follow the posterior).

A trace too short to split (fewer than ``2 * WINDOWS`` steps) or missing is itself reported as
a problem: a fit nothing was checked on is never reported as passing.

Steps whose ELBO or gradient was not finite (a particle drawn where the model cannot be
evaluated, e.g. a simulation that ran away) are rejected by the optimiser, which keeps its state
(:func:`medsim.inference.backends.numpyro_svi.run_svi`); they appear in the trace as NaN. The
window means skip them, the count is reported, and any in the last window is a problem: the
fitted guide still puts mass where the model cannot be evaluated, so its draws may not simulate.
A whole window of rejected steps means the optimiser diverged.

A fit run from several starts (``fit(svi_start="prior,ode")``) keeps the highest ELBO;
:func:`start_checks` compares it with the others. A start whose ELBO is lower by more than the
tolerance (:data:`ELBO_REL_TOL` of the ELBO, or three standard errors of the two ELBO estimates'
difference if larger, as :func:`elbo_checks` judges a trace) reached a worse optimum and is only reported. One
whose ELBO is within it reached an optimum the ELBO cannot tell from the kept one; if their
population sites then lie further apart than :data:`START_SEPARATION` times the larger of the two
guides' posterior SDs (on the log scale for positive sites), the two optima are different
answers of equal standing: the posterior has a direction along which the data barely decide (on
glucose cohorts, a slow disturbance held in the filter against a between-subject SD), a single
Gaussian guide covers one end of it, and its intervals understate the uncertainty. That is a
problem, not a note: fit with NUTS, or hold the parameter that trades off (``--fix``).
"""

from __future__ import annotations

import numpy as np

WINDOWS = 10
ADVICE = "lower the learning rate (--svi-learning-rate) or check the priors"
"""What to do about a fit with non-finite steps or one that diverged."""
ELBO_REL_TOL = 1e-3
"""Relative change of the smoothed ELBO treated as real: 1e-3 of a 1600-nat ELBO (an 8-subject
glucose cohort) is 1.6 nats, about the standard error of a 150-step window mean there."""


START_SEPARATION = 3.0
"""Two starts' medians of a site further apart than this many posterior SDs (the larger of the
two guides') are different optima: at 3 their central 99.7 % intervals barely touch."""


COARSE_OFFSET_MAX = 0.25
"""Largest shift of the optimum, in posterior SDs of any coordinate, that coarse first steps may
leave for the fit's own filter to make up (``fit(svi_coarse_steps=)``): a quarter of an SD is
about how far two seeds of the same fit land apart, and the last steps' small learning rate
cannot be relied on to travel much further. The estimate is a linearisation, good to a factor of
about 2 (``tests/inference/test_svi_coarse.py``), which is enough to tell a thousandth of an SD
(the glucose fits) from several."""


def coarse_checks(offset: dict | None, coarse_steps: int) -> tuple[list[str], list[str]]:
    """Judge coarse first steps by their optimum's estimated offset from the exact one
    (:func:`medsim.inference.backends.numpyro_svi.coarse_offset`). Returns (checks, problems)."""
    if not coarse_steps:
        return [], []
    if not offset:
        return [], [f"the fit's first {coarse_steps} steps ran on a coarser filter and its offset was not recorded"]
    line = (
        f"coarse first steps: their filter's optimum lies {offset['max_sd']:.3g} posterior SDs from the exact one at "
        f"most ({offset['coordinate']}; median {offset['median_sd']:.2g}, tolerance {COARSE_OFFSET_MAX:g}); log "
        f"densities {offset['log_density_difference']:+.2f} nats apart"
    )
    if offset["max_sd"] <= COARSE_OFFSET_MAX:
        return [line], []
    return [], [
        f"{line}: the coarse filter is too coarse to be a start, and the last steps may not have made up the "
        "difference; fit without --svi-coarse-steps or with more --svi-coarse-substeps"
    ]


def start_checks(starts: list[dict] | None) -> tuple[list[str], list[str]]:
    """Compare the kept start of a multi-start SVI fit (first in ``starts``) with the others.

    ``starts``: the posterior's ``svi_starts`` (per start: ``start``, ``elbo``, ``sites`` as
    :func:`medsim.inference.backends.numpyro_svi.site_summary`). Returns (checks, problems).
    """
    if not starts or len(starts) < 2:
        return [], []
    kept = starts[0]
    if kept.get("elbo") is None:
        return [], [f"no start of the SVI fit reached a finite ELBO ({', '.join(s['start'] for s in starts)})"]
    checks, problems = [f"kept start {kept['start']!r}: ELBO {kept['elbo']:.1f} nats"], []
    for other in starts[1:]:
        name = other["start"]
        if other.get("elbo") is None:
            checks.append(
                f"start {name!r} reached no finite ELBO" + (f" ({other['error']})" if "error" in other else "")
            )
            continue
        gap = kept["elbo"] - other["elbo"]
        noise = 3.0 * float(np.hypot(kept.get("elbo_se") or 0.0, other.get("elbo_se") or 0.0))
        tolerance = max(ELBO_REL_TOL * abs(kept["elbo"]), noise)
        if gap > tolerance:
            checks.append(
                f"start {name!r}: ELBO {other['elbo']:.1f} nats, {gap:.1f} below the kept one (worse optimum)"
            )
            continue
        apart = []
        for site, (m_kept, sd_kept, log_kept) in kept["sites"].items():
            if site not in other["sites"]:
                continue
            m_other, sd_other, log_other = other["sites"][site]
            if log_kept != log_other:
                continue  # one fit's draws reach 0 or below: not comparable on one scale
            z = abs(m_kept - m_other) / max(sd_kept, sd_other, 1e-12)
            if z > START_SEPARATION:
                shown = (np.exp(m_kept), np.exp(m_other)) if log_kept else (m_kept, m_other)
                apart.append((z, f"{site} {shown[0]:.3g} vs {shown[1]:.3g} ({z:.1f} SDs)"))
        line = (
            f"start {name!r}: ELBO {other['elbo']:.1f} nats, {gap:.1f} below the kept one (tolerance {tolerance:.1f})"
        )
        if not apart:
            checks.append(f"{line}; population sites agree within {START_SEPARATION:g} posterior SDs")
            continue
        apart.sort(reverse=True)
        checks.append(line)
        problems.append(
            f"SVI's starts {kept['start']!r} and {name!r} reached optima the ELBO cannot tell apart ({gap:.1f} nats, "
            f"tolerance {tolerance:.1f}) that disagree: {'; '.join(t for _, t in apart[:6])}"
            f"{f' and {len(apart) - 6} more' if len(apart) > 6 else ''}. The posterior has a direction the data barely "
            "decide and a Gaussian guide covers one end of it, so the intervals understate the uncertainty: fit with "
            "NUTS, or hold the parameter that trades off (--fix); docs/fitting.md, 'Slow disturbances and "
            "between-subject SDs'"
        )
    return checks, problems


def elbo_checks(trace: np.ndarray | None) -> tuple[list[str], list[str], dict[str, float]]:
    """Check an ELBO trace (one value per optimisation step, nats).

    Returns
    -------
    checks : list of str
        What was checked, with the figures (for the report).
    problems : list of str
        Failures (empty when every check passed).
    figures : dict
        ``elbo_rel_change`` (last window against the one before, relative) and
        ``elbo_drop_nats`` (best earlier window's mean minus the last one's).
    """
    if trace is None:
        return [], ["no ELBO trace stored with this SVI fit: its convergence cannot be checked"], {}
    trace = np.asarray(trace, np.float64)
    if trace.size < 2 * WINDOWS:
        return [], [f"ELBO trace of {trace.size} steps is too short to check convergence"], {}
    size = trace.size // WINDOWS
    blocks = trace[trace.size - size * WINDOWS :].reshape(WINDOWS, size)
    finite = np.isfinite(blocks)
    if (finite.sum(axis=1) < 2).any():
        first = int(np.argmax(finite.sum(axis=1) < 2))
        return (
            [],
            [
                f"ELBO not finite in all but at most one of steps {first * size + 1}-{(first + 1) * size} (of "
                f"{trace.size}): the optimiser diverged; {ADVICE}"
            ],
            {},
        )
    means = np.nanmean(blocks, axis=1)
    ses = np.nanstd(blocks, axis=1, ddof=1) / np.sqrt(finite.sum(axis=1))
    last, se_last = means[-1], ses[-1]

    def margin(k: int) -> float:
        return max(ELBO_REL_TOL * abs(last), 3.0 * float(np.hypot(se_last, ses[k])))

    rise = float(last - means[-2])
    best = int(np.argmax(means[:-1]))
    drop = float(means[best] - last)
    figures = {"elbo_rel_change": rise / abs(last) if last else float("inf"), "elbo_drop_nats": drop}
    checks = [
        f"smoothed ELBO over the last {size} steps {last:.1f} nats, {rise:+.2f} nats from the {size} before "
        f"(tolerance {margin(WINDOWS - 2):.2f})",
        f"best earlier window {means[best]:.1f} nats (steps {best * size + 1}-{(best + 1) * size})",
    ]
    problems = []
    rejected = np.flatnonzero(~np.isfinite(trace))
    if rejected.size:
        checks.append(
            f"{rejected.size} of {trace.size} steps rejected (ELBO or gradient not finite; the optimiser kept its "
            f"state), the last at step {rejected[-1] + 1}"
        )
        figures["rejected_steps"] = int(rejected.size)
    if not finite[-1].all():
        problems.append(
            f"{int((~finite[-1]).sum())} of the last {size} steps had a non-finite ELBO or gradient: the fitted guide "
            "still puts mass where the model cannot be evaluated (a runaway simulation or an extreme parameter), so "
            f"its draws may not simulate; {ADVICE}"
        )
    if rise > margin(WINDOWS - 2):
        problems.append(
            f"ELBO still rising at the end of the run ({rise:+.2f} nats between the last two windows of {size} "
            f"steps, relative {figures['elbo_rel_change']:.1e} > {ELBO_REL_TOL:g}): not converged; run more steps"
        )
    if drop > margin(best):
        problems.append(
            f"ELBO worse at the end ({last:.1f} nats) than at steps {best * size + 1}-{(best + 1) * size} "
            f"({means[best]:.1f}): the optimiser left a better optimum (lower the learning rate)"
        )
    return checks, problems, figures
