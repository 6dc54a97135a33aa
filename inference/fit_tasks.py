"""Fits as data: one :class:`FitTask` per fit, run here or wherever ``map_tasks`` sends it.

A task holds what a fit needs and nothing a worker must trust: the model's registered name, its
parameter records (which may replace the registered ones, as
:func:`medsim.inference.calibration.narrowed_priors` does), the client's description of it (checked
where the fit runs: the same medsim, the same model), the cohort (medsim's own data object:
arrays and names), the seed and the keyword settings of :func:`medsim.inference.fit`. The seed does
not depend on where a task runs, so the numbers do not either (up to floating-point summation
order: a one-core worker and a two-core process may differ in the last bits of an ELBO).

``map_tasks(fn, tasks)`` returns ``[fn(t) for t in tasks]`` in order; the default runs them one
after the other here, :func:`medsim.policies.dask_workers.map_on_cluster` on a Dask client's
workers. Two users: the SVI fits of simulation-based calibration
(:mod:`medsim.inference.calibration_svi`, ``medsim sbc --workers N``) and :func:`fit_seeds`, one
cohort fitted with several seeds (do the fits agree?).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: numpyro keeps its effect-handler stack in a module global, so two fits in threads of one process
#: (a Dask worker with several threads, or in-process workers) would corrupt each other's traces:
#: fits in one process run one at a time.
_FIT_LOCK = threading.Lock()

MapTasks = Callable[[Callable[[Any], Any], Sequence[Any]], list]
"""``map_tasks(fn, tasks) -> [fn(t) for t in tasks]``, in order, wherever it runs them."""


@dataclass(frozen=True)
class FitTask:
    """One fit as data (see the module docstring); ``settings`` are :func:`medsim.inference.fit`'s
    keyword arguments as ``(name, value)`` pairs of plain values."""

    model: str
    parameters: tuple
    description: str
    cohort: Any
    seed: int
    settings: tuple[tuple[str, Any], ...] = ()


def describe(model: Any) -> str:
    """The model's description as canonical JSON (what a task checks where it runs)."""
    return json.dumps(model.describe(), sort_keys=True, default=str)


def task_for(model: Any, cohort: Any, seed: int, settings: Mapping[str, Any]) -> FitTask:
    """The :class:`FitTask` of fitting ``model`` to ``cohort`` with ``seed`` and ``settings``."""
    if "progress" in settings:
        raise ValueError("a fit task takes no progress callback (it may run in another process)")
    return FitTask(
        model=model.name,
        parameters=tuple(model.parameters),
        description=describe(model),
        cohort=cohort,
        seed=int(seed),
        settings=tuple(sorted(settings.items())),
    )


def task_model(task: FitTask) -> Any:
    """The task's model rebuilt from the registry (ValueError if it differs from the client's)."""
    import medsim.models as registry

    try:
        model = dataclasses.replace(registry.get(task.model), parameters=task.parameters)
    except registry.UnknownModelError as err:
        raise ValueError(f"fit task: {err}") from None
    if describe(model) != task.description:
        raise ValueError(
            f"fit task: model {task.model!r} rebuilt here differs from the client's (another medsim "
            "version, or a model that is not registered); install the same medsim everywhere"
        )
    return model


def run(task: FitTask, model: Any = None) -> Any:
    """Run one task: the :class:`~medsim.inference.posterior.Posterior`.

    ``model``: the model object when it is at hand (this process); else rebuilt by :func:`task_model`.
    """
    from medsim.inference.fitting import fit

    model = model if model is not None else task_model(task)
    with _FIT_LOCK:
        return fit(task.cohort, model, seed=task.seed, **dict(task.settings))


def in_order(fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list:
    """The default ``map_tasks``: one after the other, here."""
    return [fn(task) for task in tasks]


def fit_seeds(
    cohort: Any, model: Any, seeds: Sequence[int], *, map_tasks: MapTasks | None = None, **settings: Any
) -> list[Any]:
    """Fit ``cohort`` once per seed (the same ``settings``, :func:`medsim.inference.fit`'s keywords).

    Returns the posteriors in the order of ``seeds``. Each is the one ``fit(cohort, model,
    seed=s, **settings)`` gives here; with ``map_tasks`` (e.g. a Dask client's workers) the fits run
    side by side. Comparing them says whether a fit depends on its seed (SVI's optimum, NUTS's
    chains); ``medsim check --compare`` ranks posterior files.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected distinct integers, got {seeds}")
    tasks = [task_for(model, cohort, s, settings) for s in seeds]
    if map_tasks is None:
        return [run(task, model) for task in tasks]
    return list(map_tasks(run, tasks))
