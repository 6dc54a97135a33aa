"""Does the process-noise posterior agree with the model's own likelihood? (a check of SVI fits)

A variational fit can leave a process-noise scale where the ELBO's optimiser stopped rather than
where the data put it: on glucose cohorts SVI reported median scales 3 times the value at which
the likelihood peaked, hundreds of log-likelihood units lower. :func:`noise_profile` evaluates
the cohort's log-likelihood over a grid of each process-noise scale, every other site at its
posterior median and each subject's random effects at their posterior medians (a plug-in
profile), and :func:`profile_problems` flags a scale whose profile peaks outside the
posterior's central 90 % interval by more than :data:`PROFILE_GAIN_NATS`.

The profile is conditional on the other parameters' medians, not the marginal likelihood, so a
correct posterior can sit a little off its peak; the tolerance allows for that.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from medsim.inference.hierarchical import pointwise_loglik
from medsim.inference.problem import FitData

GRID_FACTORS = np.geomspace(1.0 / 30.0, 30.0, 25)
"""Profile grid: the posterior median times these factors (neighbours 1.33 apart)."""
PROFILE_GAIN_NATS = 5.0
"""A profile peak this many log-likelihood units above the posterior median's value, outside the
posterior's central 90 % interval, is flagged. A posterior that agrees with the likelihood has
its median within ~1 nat of the plug-in peak (a log-likelihood ratio of 2 nats is already a
95 % confidence bound); 5 leaves room for the plug-in's conditioning."""


def noise_profile(data: FitData, samples: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Plug-in likelihood profile of every fitted process-noise scale.

    Parameters
    ----------
    data : FitData
        What was fitted.
    samples : mapping site -> (chains, draws, ...) array
        Constrained posterior draws, with ``eta_<p>`` (as :func:`medsim.inference.hierarchical.with_random_effects`
        returns them).

    Returns
    -------
    dict process-noise site -> dict
        ``grid`` (scale values), ``loglik`` (cohort log-likelihood at each, nats), ``peak``
        (the grid value with the largest), ``posterior`` (5 %, 50 %, 95 % quantiles) and
        ``gain`` (log-likelihood at the peak minus that at the posterior median, nats). Empty
        when no process-noise scale was fitted.
    """
    sites = data.priors.by_role("process_noise")
    if not sites:
        return {}
    dtype = data.timeline.time.dtype
    medians = {s.site: jnp.asarray(np.median(samples[s.site]), dtype) for s in data.priors.sites}
    for p in data.priors.random_effects:
        eta = np.asarray(samples[f"eta_{p}"])
        medians[f"eta_{p}"] = jnp.asarray(np.median(eta.reshape(-1, eta.shape[-1]), axis=0), dtype)
    loglik = jax.jit(lambda values: jnp.sum(pointwise_loglik(data, values)))
    out = {}
    for s in sites:
        draws = np.asarray(samples[s.site], np.float64).ravel()
        q05, q50, q95 = (float(v) for v in np.quantile(draws, [0.05, 0.5, 0.95]))
        grid = np.unique(np.concatenate([q50 * GRID_FACTORS, [q05, q50, q95]]))
        values = np.array([float(loglik({**medians, s.site: jnp.asarray(g, dtype)})) for g in grid], np.float64)
        finite = np.where(np.isfinite(values), values, -np.inf)
        at_median = float(values[np.argmin(np.abs(grid - q50))])
        peak = int(np.argmax(finite))
        out[s.site] = {
            "grid": [float(g) for g in grid],
            "loglik": [round(float(v), 3) for v in values],
            "peak": float(grid[peak]),
            "posterior": [q05, q50, q95],
            "gain": float(finite[peak] - at_median),
        }
    return out


def profile_problems(profile: Mapping[str, Mapping]) -> list[str]:
    """Problems found by :func:`noise_profile`: a scale whose profile peaks outside its posterior's
    central 90 % interval, more than :data:`PROFILE_GAIN_NATS` above the posterior median's value."""
    problems = []
    for site, p in profile.items():
        q05, q50, q95 = p["posterior"]
        if not q05 <= p["peak"] <= q95 and p["gain"] > PROFILE_GAIN_NATS:
            problems.append(
                f"process-noise scale {site}: posterior median {q50:.3g} (90 % interval [{q05:.3g}, {q95:.3g}]) "
                f"but the cohort's likelihood, other parameters at their posterior medians, peaks at "
                f"{p['peak']:.3g}, {p['gain']:.0f} nats higher (the variational fit did not find the "
                "process noise; run more steps or particles, or fit with NUTS)"
            )
    return problems
