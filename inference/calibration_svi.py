"""The SVI fits of simulation-based calibration: one :func:`medsim.inference.fit` per cohort.

:func:`medsim.inference.calibration.run_calibration` with ``method="svi"`` fits every simulated
cohort with the SVI path of :func:`medsim.inference.fit` (a multivariate-normal guide, the
coordinates and settings ``medsim fit --method svi`` uses) and ranks the truth among draws from
the fitted guide. Each fit is a :class:`~medsim.inference.fit_tasks.FitTask` (data only) run by
:func:`calibration_fit`, which sends back only the ranked sites' draws. By default the fits run
one after the other in this process (they share the compiled likelihood only through JAX's cache,
since each cohort's data are part of the fitted model); given ``map_tasks`` (e.g.
:func:`medsim.policies.dask_workers.map_on_cluster` on a Dask client: ``medsim sbc --workers N``) they
run wherever it sends them, with the same seeds, and come back in cohort order.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from medsim.inference.backends.numpyro_svi import SviDivergedError
from medsim.inference.fit_tasks import MapTasks, run, task_for
from medsim.inference.problem import FitData

__all__ = ["MapTasks", "calibration_fit", "svi_fits"]


def calibration_fit(task: Any, names: Sequence[str], model: Any = None) -> dict[str, Any]:
    """Run one cohort's fit task and keep what calibration ranks: ``{"samples": site -> (draws, ...),
    "elbo", "ok", "wall"}``, or ``{"diverged": why}`` when the fit left no valid guide (one such
    cohort must not stop the others' fits)."""
    try:
        return _result(run(task, model), names)
    except SviDivergedError as err:
        return {"diverged": str(err)[:500]}


def _result(posterior: Any, names: Sequence[str]) -> dict[str, Any]:
    """The ranked sites' draws of a fit, its ELBO, whether its checks passed and its wall time."""
    group = posterior.idata.posterior
    samples = {}
    for name in names:
        value = np.asarray(group[name].values)
        samples[name] = value.reshape(-1, *value.shape[2:])  # (chain * draw, ...)
    return {
        "samples": samples,
        "elbo": float(group.attrs["elbo"]),
        "ok": bool(group.attrs["diagnostics_ok"]),
        "wall": float(group.attrs["wall_time_s"]),
    }


def svi_fits(
    data: FitData,
    design: Any,
    measured: np.ndarray,
    *,
    seed: int,
    draws: int,
    svi_steps: int,
    max_substep: float | None,
    process_noise: bool,
    guide: str = "mvn",
    learning_rate: float = 0.01,
    svi_start: str = "prior",
    map_tasks: MapTasks | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fit every cohort by SVI and stack the guide's draws.

    Parameters
    ----------
    data : FitData
        The prepared design (its ``priors`` name the sites to return; its model is the one fitted,
        which must be a registered model, its parameters possibly replaced, e.g. narrowed).
    design : medsim.inference.calibration.Design
    measured : (C, S, T) array
        The simulated cohorts' values (the design's fitted times come first).
    seed : int
        Cohort ``c`` is fitted with seed ``seed * 1000 + c`` (same seed, same draws).
    draws : int
        Draws from each fitted guide.
    svi_steps, max_substep, process_noise, guide, learning_rate, svi_start
        As in :func:`medsim.inference.fit` (``svi_start``: ``"prior"``, ``"ode"`` or ``"prior,ode"``).
    map_tasks : callable, optional
        Runs :func:`calibration_fit` on every cohort's :class:`~medsim.inference.fit_tasks.FitTask` and
        returns the results in order (default: one after the other, here).

    Returns
    -------
    samples : dict site -> (C, draws, ...)
        Population sites, ``eta_<p>`` (C, draws, S) and ``eta_<p>_decentered``.
    stats : dict
        ``elbo`` (C,) and ``diagnostics_ok`` (C,) bool of each fit, and its wall time ``fit_time_s`` (C,);
        ``failed``: ``{"cohort", "why"}`` of each fit that diverged (no valid guide), left out of
        ``samples`` and the arrays above (C counts the others). Every fit diverged: ValueError.
    """
    names = [s.site for s in data.priors.sites]
    for p in data.priors.random_effects:
        names += [f"eta_{p}", f"eta_{p}_decentered"]
    model = data.model
    settings = dict(
        method="svi",
        draws=draws,
        process_noise=process_noise,
        svi_steps=svi_steps,
        max_substep=max_substep,
        guide=guide,
        svi_learning_rate=learning_rate,
        svi_start=svi_start,
    )
    tasks = [
        task_for(model, design.cohort(np.asarray(values, float)), seed * 1000 + c, settings)
        for c, values in enumerate(np.asarray(measured))
    ]
    if map_tasks is None:  # here, one after the other, with the model object at hand
        results = [calibration_fit(task, names, model) for task in tasks]
    else:
        results = list(map_tasks(partial(calibration_fit, names=tuple(names)), tasks))
    if len(results) != len(tasks):
        raise ValueError(f"calibration fits: {len(tasks)} cohorts sent, {len(results)} results came back")
    failed = [{"cohort": c, "why": r["diverged"]} for c, r in enumerate(results) if "diverged" in r]
    results = [r for r in results if "diverged" not in r]
    if not results:
        raise ValueError(f"calibration: every one of the {len(tasks)} SVI fits diverged, e.g. {failed[0]['why']}")
    samples = {name: np.stack([r["samples"][name] for r in results]) for name in names}
    stats = {
        "elbo": np.asarray([r["elbo"] for r in results]),
        "diagnostics_ok": np.asarray([r["ok"] for r in results]),
        "fit_time_s": np.asarray([r["wall"] for r in results]),
        "failed": failed,
    }
    return samples, stats
