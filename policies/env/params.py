"""The static part of an environment: task, validated spec, patients, compiled simulator (:func:`make_params`).

Built once per environment; every :func:`medsim.policies.env.core.step` reads it. Patients come from the
model's prior by default (so an environment runs on a fresh install), a posterior file or its
draws (population or personalized twins), a saved virtual population, or a neural checkpoint.

A neural checkpoint (``NAME.json`` + ``NAME.safetensors``, written by ``medsim fit --model neural``)
gives patients the way ``medsim risk CHECKPOINT`` does: :func:`medsim.inference.neural.load_checkpoint`,
the calibration gate, then :func:`medsim.models.neural.sample_neural_population` (new patients with
the training means of the covariates). The exported model then replaces the task's registered
model, so it must run the task: the same time unit, the treated dose compartments and the spec's
observables (a neural model of a theophylline cohort runs ``Theophylline-v0``; one without the
task's compartments or observables is refused with :class:`~medsim.policies.env.task.TaskError`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import medsim.models as registry
from medsim.policies.env.task import EnvTask, TaskError
from medsim.policies.evaluate import default_scenario
from medsim.policies.rollout_setup import _Setup
from medsim.policies.spec import SafetySpec
from medsim.policies.spec_file import parse_spec
from medsim.population import PosteriorDraws, VirtualPopulation, sample_population

COSTS = ("bridge", "grid", "end")


@dataclass(frozen=True, eq=False)
class EnvParams:
    """Everything a step needs that does not change during an episode (built by :func:`make_params`).

    Attributes
    ----------
    task : EnvTask
    spec : SafetySpec
        Validated against the model; horizon in the model's time unit.
    pool : VirtualPopulation
        The patients episodes are drawn from (episode ``e`` is patient ``e mod len(pool)``).
    setup : rollout setup
        The compiled simulator, observe function, target bounds and tolerances the rollout uses.
    seed : int
        Seed of every random stream.
    cost : {"bridge", "grid", "end"}
    reward : callable or None
        ``reward(outcome) -> (n,)``; ``None``: time in target range / horizon.
    observation_names : tuple of str
        Meaning of each entry of the observation vector.
    """

    task: EnvTask
    spec: SafetySpec
    pool: VirtualPopulation
    setup: Any
    seed: int
    cost: str
    reward: Callable[..., np.ndarray] | None
    observation_names: tuple[str, ...]
    theta: Mapping[str, np.ndarray]
    n_events: int

    @property
    def model(self):
        return self.pool.model

    @property
    def horizon(self) -> float:
        return float(self.spec.horizon)

    @property
    def announced_cmts(self) -> tuple[int, ...]:
        scen = self.setup.scenario
        return (int(scen.cmt),) if scen is not None and scen.announced else ()


def _is_neural(model) -> bool:
    """A model exported from a neural checkpoint (:class:`medsim.models.neural.export.NeuralPhysiology`)."""
    return hasattr(model, "neural_config")  # without importing torch for mechanistic models


def is_checkpoint_path(path: str | Path) -> bool:
    """Whether ``path`` names a neural checkpoint (``NAME.json``, ``NAME.safetensors`` or ``NAME`` beside
    ``NAME.json``) rather than a posterior file; decided from the names, as ``medsim risk`` decides."""
    path = Path(path)
    return path.suffix in (".json", ".safetensors") or path.with_name(path.name + ".json").exists()


def _neural_patients(
    path: str | Path, *, mode: str, pool_size: int, seed: int, floor: float | None, force: bool
) -> VirtualPopulation:
    """New patients of a neural checkpoint, through its loader and calibration gate (module docstring)."""
    from dataclasses import replace

    from medsim.inference.neural import load_checkpoint
    from medsim.models.neural import sample_neural_population
    from medsim.models.neural.gate import DEFAULT_FLOOR

    if mode != "population":
        raise TaskError(
            f"posterior: {path} is a neural checkpoint; mode={mode!r} needs the subject's record: write the twins "
            "with `medsim sample CHECKPOINT --mode personalized --subject ID --cohort COHORT --out twins.nc` and pass "
            "population= (the loaded VirtualPopulation)"
        )
    loaded = load_checkpoint(path)  # CheckpointFormatError names the file and what is wrong
    pool = sample_neural_population(  # MiscalibratedModelError: coverage_floor= / force_uncalibrated=True
        loaded.model, pool_size, seed=seed, floor=DEFAULT_FLOOR if floor is None else float(floor), force=force
    )
    prov = {"checkpoint": str(loaded.path), "checkpoint_weights_sha256": loaded.weights_sha256}
    return replace(pool, provenance={**pool.provenance, **prov})


def _check_neural(task: EnvTask, model, registered) -> None:
    """Raise :class:`TaskError` unless the neural ``model`` can run ``task`` in place of ``registered``."""
    where = f"the neural model {model.name!r} (patients of the posterior= checkpoint)"
    if model.time_unit != registered.time_unit:
        raise TaskError(
            f"{where} runs in {model.time_unit!r}; task on {task.model} declares its intervals and dt in "
            f"{registered.time_unit!r}"
        )
    task.check_model(model)
    spec = parse_spec(task.spec, model=registered)
    missing = sorted({b.observable for b in spec.bounds} - set(model.observable_names))
    if missing:
        raise TaskError(
            f"{where} has observables {list(model.observable_names)}; the task's safety spec needs {missing}"
        )


def _patients(
    model, posterior, population, *, mode: str, subject: str | None, pool_size: int, prior_draws: int, seed: int,
    floor: float | None = None, force: bool = False,
) -> VirtualPopulation:  # fmt: skip
    if isinstance(posterior, str | Path) and population is None and is_checkpoint_path(posterior):
        return _neural_patients(posterior, mode=mode, pool_size=pool_size, seed=seed, floor=floor, force=force)
    if population is not None:
        pool = population if isinstance(population, VirtualPopulation) else VirtualPopulation.load(population)
        if pool.model.name != model.name and not _is_neural(pool.model):
            raise TaskError(f"population: patients are of model {pool.model.name!r}, the task needs {model.name!r}")
        return pool
    if posterior is None:
        draws = PosteriorDraws.from_prior(model, prior_draws, seed=seed)
    elif isinstance(posterior, PosteriorDraws):
        draws = posterior
    else:
        from medsim.inference.posterior import Posterior

        draws = Posterior.load(Path(posterior)).draws()
    if draws.model.name != model.name:
        raise TaskError(f"posterior: draws are of model {draws.model.name!r}, the task needs {model.name!r}")
    return sample_population(draws, pool_size, mode=mode, subject=subject, seed=seed)


def make_params(
    task: EnvTask,
    *,
    seed: int = 0,
    posterior: str | Path | PosteriorDraws | None = None,
    population: str | Path | VirtualPopulation | None = None,
    mode: str = "population",
    subject: str | None = None,
    pool_size: int = 1000,
    prior_draws: int = 200,
    cost: str = "bridge",
    reward: Callable[..., np.ndarray] | None = None,
    measurement_noise: bool = True,
    coverage_floor: float | None = None,
    force_uncalibrated: bool = False,
) -> EnvParams:
    """Build the static part of an environment.

    Parameters
    ----------
    task : EnvTask
    seed : int
        Seed of the patients (prior draws, population sampling) and of every random stream.
    posterior : path or PosteriorDraws, optional
        A posterior file written by ``medsim fit`` (or its draws), or a neural checkpoint
        (``NAME.json``; see the module docstring); default: the model's priors.
    population : path or VirtualPopulation, optional
        Use these patients instead of sampling (e.g. a saved population of digital twins).
    mode, subject : str
        ``"population"`` (new patients) or ``"personalized"`` (twins of ``subject``).
    pool_size : int
        Patients sampled from the posterior or prior.
    cost : {"bridge", "grid", "end"}
    reward : callable, optional
        ``reward(outcome: StepOutcome) -> (n,)``; default: time in target range / horizon.
    measurement_noise : bool
    coverage_floor : float, optional
        Calibration gate of a neural checkpoint: the held-out 90% coverage it must reach
        (default 0.8, as ``medsim risk --coverage-floor``).
    force_uncalibrated : bool
        Use a neural checkpoint that fails (or never ran) the gate (``medsim risk --force``); its
        population's provenance records it.

    Raises
    ------
    TaskError
        On an unknown cost, patients or treatments that do not fit the task's model, or a neural
        checkpoint whose model cannot run the task.
    CheckpointFormatError
        On an unreadable neural checkpoint (:mod:`medsim.inference.neural.checkpoint`).
    MiscalibratedModelError
        On a neural checkpoint that fails the calibration gate (and ``force_uncalibrated`` is False).
    """
    if cost not in COSTS:
        raise TaskError(f"cost must be one of {COSTS}, got {cost!r}")
    if reward is not None and not callable(reward):
        raise TaskError(f"reward must be a callable reward(outcome) -> (n,) array, got {type(reward).__name__}")
    model = registry.get(task.model)
    task.check_model(model)
    pool = _patients(
        model,
        posterior,
        population,
        mode=mode,
        subject=subject,
        pool_size=int(pool_size),
        prior_draws=int(prior_draws),
        seed=int(seed),
        floor=coverage_floor,
        force=bool(force_uncalibrated),
    )
    if _is_neural(pool.model):  # the exported neural model replaces the registered one
        _check_neural(task, pool.model, model)
        model = pool.model
    spec = parse_spec(task.spec, model=model)
    scenario = default_scenario(model, task.scenario, int(seed))
    setup = _Setup(
        model, spec.bounds, spec.horizon, task.dt, seed, scenario, measurement_noise, spec.target, None,
        "milstein", 10**6,
    )  # fmt: skip
    announced = (int(scenario.cmt),) if scenario is not None and scenario.announced else ()
    names = (
        *(f"measured:{o}" for o in setup.measured_obs),
        *(f"announced:cmt{c}" for c in announced),
        *(f"last:{t.label}" for t in task.treatments),
        "time_fraction",
        *(f"covariate:{c.name}" for c in model.covariates),
    )
    # numpy, not jax: gathering a batch's rows is a host index, not one dispatched gather per parameter.
    theta = {k: np.asarray(v, np.float32) for k, v in pool.simulation_parameters().items()}
    n_events = 0
    if scenario is not None:
        n_events = int(scenario.events(np.arange(1), spec.horizon, time_unit=model.time_unit).time.shape[1]) + 1
    return EnvParams(task, spec, pool, setup, int(seed), cost, reward, names, theta, n_events)
