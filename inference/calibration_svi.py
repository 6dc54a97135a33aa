"""The SVI fits of simulation-based calibration: one :func:`medsim.inference.fit` per cohort.

:func:`medsim.inference.calibration.run_calibration` with ``method="svi"`` fits every simulated
cohort with the SVI path of :func:`medsim.inference.fit` (a multivariate-normal guide, the
coordinates and settings ``medsim fit --method svi`` uses) and ranks the truth among draws from
the fitted guide. The fits run one after the other; they share the compiled likelihood only
through JAX's cache, since each cohort's data are part of the fitted model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medsim.inference.problem import FitData


def svi_fits(
    data: FitData,
    cohorts: list[Any],
    *,
    seed: int,
    draws: int,
    svi_steps: int,
    max_substep: float | None,
    process_noise: bool,
    guide: str = "mvn",
    learning_rate: float = 0.01,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fit every cohort by SVI and stack the guide's draws.

    Parameters
    ----------
    data : FitData
        The prepared design (its ``priors`` name the sites to return).
    cohorts : list of medsim.data.Cohort
        The simulated cohorts (fitted measurements only), C of them.
    seed : int
        Cohort ``c`` is fitted with seed ``seed * 1000 + c`` (same seed, same draws).
    draws : int
        Draws from each fitted guide.
    svi_steps, max_substep, process_noise, guide, learning_rate
        As in :func:`medsim.inference.fit`.

    Returns
    -------
    samples : dict site -> (C, draws, ...)
        Population sites, ``eta_<p>`` (C, draws, S) and ``eta_<p>_decentered``.
    stats : dict
        ``elbo`` (C,) and ``diagnostics_ok`` (C,) bool of each fit, and its wall time ``fit_time_s`` (C,).
    """
    from medsim.inference.fitting import fit

    names = [s.site for s in data.priors.sites]
    for p in data.priors.random_effects:
        names += [f"eta_{p}", f"eta_{p}_decentered"]
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    elbo, ok, wall = [], [], []
    for c, cohort in enumerate(cohorts):
        posterior = fit(
            cohort,
            data.model,
            method="svi",
            draws=draws,
            seed=seed * 1000 + c,
            process_noise=process_noise,
            svi_steps=svi_steps,
            max_substep=max_substep,
            guide=guide,
            svi_learning_rate=learning_rate,
        )
        group = posterior.idata.posterior
        for name in names:
            value = np.asarray(group[name].values)
            out[name].append(value.reshape(-1, *value.shape[2:]))  # (chain * draw, ...)
        elbo.append(float(group.attrs["elbo"]))
        ok.append(bool(group.attrs["diagnostics_ok"]))
        wall.append(float(group.attrs["wall_time_s"]))
    samples = {name: np.stack(values) for name, values in out.items()}
    return samples, {"elbo": np.asarray(elbo), "diagnostics_ok": np.asarray(ok), "fit_time_s": np.asarray(wall)}
