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
"""

from __future__ import annotations

import numpy as np

WINDOWS = 10
ADVICE = "lower the learning rate (--svi-learning-rate) or check the priors"
"""What to do about a fit with non-finite steps or one that diverged."""
ELBO_REL_TOL = 1e-3
"""Relative change of the smoothed ELBO treated as real: 1e-3 of a 1600-nat ELBO (an 8-subject
glucose cohort) is 1.6 nats, about the standard error of a 150-step window mean there."""


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
