"""The SVI fits of simulation-based calibration: one :func:`medsim.inference.fit` per cohort.

:func:`medsim.inference.calibration.run_calibration` with ``method="svi"`` fits every simulated
cohort with the SVI path of :func:`medsim.inference.fit` (a multivariate-normal guide, the
coordinates and settings ``medsim fit --method svi`` uses) and ranks the truth among draws from
the fitted guide. Each fit is an :class:`SviFitTask` (the model's registered name and
parameters, the design, the cohort's simulated values, the seed and settings: numbers and names
only) run by :func:`fit_task`. By default the fits run one after the other in this process (they
share the compiled likelihood only through JAX's cache, since each cohort's data are part of the
fitted model); given ``map_tasks`` (e.g. :func:`medsim.policies.dask_workers.map_on_cluster` on a Dask
client: ``medsim sbc --workers N``) they run wherever it sends them, with the same seeds, and come
back in cohort order.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsim.inference.problem import FitData

#: numpyro keeps its effect-handler stack in a module global, so two fits in threads of one process
#: (a Dask worker with several threads, or in-process workers) would corrupt each other's traces:
#: fits in one process run one at a time.
_FIT_LOCK = threading.Lock()

MapTasks = Callable[[Callable[[Any], Any], Sequence[Any]], list]
"""``map_tasks(fn, tasks) -> [fn(t) for t in tasks]``, in order, wherever it runs them."""


@dataclass(frozen=True)
class SviFitTask:
    """One calibration cohort's SVI fit, as data: what a worker needs and nothing it must trust.

    ``model`` is a registered name; ``parameters`` the (possibly narrowed) parameter records that
    replace the registered ones; ``description`` the client's ``model.describe()`` as JSON, checked
    on the worker (the same medsim, the same model). ``values`` are the cohort's simulated
    measurements, ``(S, T)`` numpy.
    """

    model: str
    parameters: tuple
    description: str
    design: Any  # medsim.inference.calibration.Design (a frozen dataclass of numbers)
    values: np.ndarray
    names: tuple[str, ...]
    seed: int
    draws: int
    svi_steps: int
    max_substep: float | None
    process_noise: bool
    guide: str
    learning_rate: float


def describe(model: Any) -> str:
    """The model's description as canonical JSON (what :class:`SviFitTask` checks on a worker)."""
    return json.dumps(model.describe(), sort_keys=True, default=str)


def task_model(task: SviFitTask) -> Any:
    """The task's model rebuilt from the registry (ValueError if it differs from the client's)."""
    import medsim.models as registry

    try:
        model = dataclasses.replace(registry.get(task.model), parameters=task.parameters)
    except registry.UnknownModelError as err:
        raise ValueError(f"calibration fit: {err}") from None
    if describe(model) != task.description:
        raise ValueError(
            f"calibration fit: model {task.model!r} rebuilt here differs from the client's (another medsim "
            "version, or a model that is not registered); install the same medsim everywhere"
        )
    return model


def fit_task(task: SviFitTask, model: Any = None) -> dict[str, Any]:
    """Fit one calibration cohort by SVI: ``{"samples": site -> (draws, ...), "elbo", "ok", "wall"}``.

    ``model``: the model object when it is at hand (this process); else rebuilt by :func:`task_model`.
    """
    from medsim.inference.fitting import fit

    model = model if model is not None else task_model(task)
    with _FIT_LOCK:
        posterior = fit(
            task.design.cohort(task.values),
            model,
            method="svi",
            draws=task.draws,
            seed=task.seed,
            process_noise=task.process_noise,
            svi_steps=task.svi_steps,
            max_substep=task.max_substep,
            guide=task.guide,
            svi_learning_rate=task.learning_rate,
        )
    return _result(posterior, task.names)


def _result(posterior: Any, names: Sequence[str]) -> dict[str, Any]:
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
    svi_steps, max_substep, process_noise, guide, learning_rate
        As in :func:`medsim.inference.fit`.
    map_tasks : callable, optional
        Runs :func:`fit_task` on the :class:`SviFitTask` of every cohort and returns the results in
        order (default: one after the other, here).

    Returns
    -------
    samples : dict site -> (C, draws, ...)
        Population sites, ``eta_<p>`` (C, draws, S) and ``eta_<p>_decentered``.
    stats : dict
        ``elbo`` (C,) and ``diagnostics_ok`` (C,) bool of each fit, and its wall time ``fit_time_s`` (C,).
    """
    names = [s.site for s in data.priors.sites]
    for p in data.priors.random_effects:
        names += [f"eta_{p}", f"eta_{p}_decentered"]
    model = data.model
    tasks = [
        SviFitTask(
            model=model.name,
            parameters=tuple(model.parameters),
            description=describe(model),
            design=design,
            values=np.asarray(values, float),
            names=tuple(names),
            seed=seed * 1000 + c,
            draws=draws,
            svi_steps=svi_steps,
            max_substep=max_substep,
            process_noise=process_noise,
            guide=guide,
            learning_rate=learning_rate,
        )
        for c, values in enumerate(np.asarray(measured))
    ]
    if map_tasks is None:  # here, one after the other, with the model object at hand
        results = [fit_task(task, model) for task in tasks]
    else:
        results = list(map_tasks(fit_task, tasks))
    if len(results) != len(tasks):
        raise ValueError(f"calibration fits: {len(tasks)} cohorts sent, {len(results)} results came back")
    samples = {name: np.stack([r["samples"][name] for r in results]) for name in names}
    stats = {
        "elbo": np.asarray([r["elbo"] for r in results]),
        "diagnostics_ok": np.asarray([r["ok"] for r in results]),
        "fit_time_s": np.asarray([r["wall"] for r in results]),
    }
    return samples, stats
