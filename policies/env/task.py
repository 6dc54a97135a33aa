"""Environment tasks: what an agent controls, within which bounds, under which safety spec.

A task is the declaration behind one registered environment id (``medsim/Glucose-v0``): the
model, the treatments the agent chooses (compartment, bolus or rate, declared range in the
compartment's dose unit), the range of the time until the next interaction, the safety spec
whose violation is the cost, the disturbance scenario and the default reward. Everything else
(equations, target range, residual error) comes from the model and :mod:`medsim.policies.targets`.

Default reward: the time the noise-free observable spent inside the task's target range during
the interval, divided by the horizon, so an episode's return is the time-in-range fraction of
the horizon (in ``[0, 1]``); the target range is :func:`medsim.policies.targets.target_range` (70-180
mg/dL for glucose models, the spec's bounds otherwise). A user reward is any callable
``reward(step) -> (n,) float`` of a :class:`~medsim.policies.env.core.StepOutcome`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

TreatmentKind = Literal["bolus", "rate"]


class TaskError(ValueError):
    """An environment task or its arguments are inconsistent; the message names the field."""


@dataclass(frozen=True)
class Treatment:
    """One controllable treatment: a bolus given at the interaction or a rate held until the next one.

    Attributes
    ----------
    cmt : int
        Dose compartment (a key of the model's ``dose_targets``).
    kind : {"bolus", "rate"}
    low, high : float
        Declared range, in the compartment's dose unit (``"rate"``: dose unit per model time unit).
    """

    cmt: int
    kind: TreatmentKind
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.kind not in ("bolus", "rate"):
            raise TaskError(f"treatment on cmt {self.cmt}: kind must be 'bolus' or 'rate', got {self.kind!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and 0 <= self.low < self.high):
            raise TaskError(f"treatment {self.label}: need 0 <= low < high (finite), got {self.low}, {self.high}")

    @property
    def label(self) -> str:
        return f"{self.kind}_cmt{self.cmt}"


@dataclass(frozen=True)
class EnvTask:
    """A reinforcement-learning task on one medsim model (see the module docstring).

    Attributes
    ----------
    model : str
        Registered model name (:func:`medsim.models.get`).
    spec : str
        Safety spec, inline or a ``.toml``/``.json`` path (:func:`medsim.policies.spec_file.parse_spec`);
        its horizon is the episode length.
    treatments : tuple of Treatment
    interval : (low, high)
        Range of the time until the next interaction (model time unit).
    intervals : tuple of float
        Choices of the discrete-interval variant (model time unit).
    scenario : {"auto", "meals", "none"}
        Disturbances (:func:`medsim.policies.evaluate.default_scenario`); announced meals force an
        interaction at each meal, as in every medsim rollout.
    dt : float
        Simulator sub-step (model time unit).
    """

    model: str
    spec: str
    treatments: tuple[Treatment, ...]
    interval: tuple[float, float]
    intervals: tuple[float, ...]
    scenario: str = "auto"
    dt: float = 1.0

    def __post_init__(self) -> None:
        lo, hi = self.interval
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            raise TaskError(f"task on {self.model}: interval must be 0 < low < high (finite), got {self.interval}")
        if not self.intervals or any(not (lo <= v <= hi) for v in self.intervals):
            raise TaskError(f"task on {self.model}: intervals {self.intervals} must lie in {self.interval}")
        if not self.treatments:
            raise TaskError(f"task on {self.model}: declare at least one treatment")
        labels = [t.label for t in self.treatments]
        if len(set(labels)) != len(labels):
            raise TaskError(f"task on {self.model}: treatments {labels} repeat a compartment and kind")
        if not self.dt > 0:
            raise TaskError(f"task on {self.model}: dt must be > 0, got {self.dt}")

    def check_model(self, model) -> None:
        """Raise :class:`TaskError` when a treatment doses into a compartment ``model`` lacks."""
        for t in self.treatments:
            if t.cmt not in model.dose_targets:
                raise TaskError(
                    f"treatment {t.label}: model {model.name!r} doses into compartments {sorted(model.dose_targets)}"
                )

    @property
    def action_low(self) -> np.ndarray:
        return np.array([t.low for t in self.treatments] + [self.interval[0]], np.float32)

    @property
    def action_high(self) -> np.ndarray:
        return np.array([t.high for t in self.treatments] + [self.interval[1]], np.float32)

    @property
    def action_names(self) -> tuple[str, ...]:
        return (*(t.label for t in self.treatments), "interval")


Reward = Callable[..., np.ndarray]

#: Type-1 diabetes: insulin (U) as a bolus and as a pump rate (U/min), glucose_insulin in minutes.
#: Bolus up to 20 U (a large meal bolus); rate up to 0.1 U/min = 6 U/h (5 x a typical adult basal);
#: interactions every 5 min (CGM) to 4 h (fingerstick); safety 70-250 mg/dL over one day.
GLUCOSE = EnvTask(
    model="glucose_insulin",
    spec="glucose_mg_dL>=70,glucose_mg_dL<=250;horizon=24h;epsilon=0.05",
    treatments=(Treatment(1, "bolus", 0.0, 20.0), Treatment(1, "rate", 0.0, 0.1)),
    interval=(5.0, 240.0),
    intervals=(5.0, 15.0, 30.0, 60.0, 120.0, 240.0),
    scenario="auto",
    dt=1.0,
)

#: Theophylline (one-compartment oral PK, hours): oral doses up to 1000 mg, next look 1-24 h,
#: therapeutic window 5-20 mg/L over three days (monitored from 12 h, after the first doses).
THEOPHYLLINE = EnvTask(
    model="pk_oral_1cmt",
    spec="conc<=20,conc>=5;horizon=72h;from=12h;epsilon=0.05",
    treatments=(Treatment(1, "bolus", 0.0, 1000.0),),
    interval=(1.0, 24.0),
    intervals=(2.0, 4.0, 6.0, 8.0, 12.0, 24.0),
    scenario="none",
    dt=1.0 / 60.0,
)

#: Registered environment ids and their tasks (``gymnasium.make("medsim/Glucose-v0")``).
TASKS: dict[str, EnvTask] = {"Glucose-v0": GLUCOSE, "Theophylline-v0": THEOPHYLLINE}


def resolve_task(task: str | EnvTask) -> EnvTask:
    """A task object from a registered name (``"Glucose-v0"`` or ``"medsim/Glucose-v0"``) or itself."""
    if isinstance(task, EnvTask):
        return task
    name = str(task).split("/")[-1]
    if name not in TASKS:
        raise TaskError(f"unknown task {task!r}; registered tasks: {', '.join(TASKS)}")
    return TASKS[name]
