"""A synthetic type-1 diabetes cohort from the ``glucose_insulin`` model.

Each virtual subject gets parameters from the model's population distribution (typical values
with log-normal between-subject variability), a basal rate matched to a fasting glucose target,
three meals a day at jittered times with random carbohydrate content, a meal bolus from a
carbohydrate ratio derived from the subject's own insulin sensitivity (mis-tuned by a random
factor, as real ratios are), and glucose measured by a sensor every ``obs_every`` minutes with
the model's combined residual error. Process noise is on, at the model's default scale.

Why a matched carbohydrate ratio: a bolus of ``B`` U lowers glucose by about
``S_I * G * B * 1e6 / C_I`` mg/dL (integrated insulin action times glucose), while ``c`` grams of
carbohydrate raise it by ``1000 c / V_G`` mg/dL; equating the two gives the ratio in g/U.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from medsim.data import Cohort
from medsim.models import get as get_model
from medsim.models.base import PhysiologyModel
from medsim.population.prior import prior_population
from medsim.simulate import DoseEvents, simulate_schedule

MINUTES_PER_DAY = 1440.0
INSULIN_CMT = 1
MEAL_CMT = 2
GLUCOSE_CMT = 3


@dataclass(frozen=True)
class SyntheticCohort:
    """A generated cohort with the truth behind it.

    Attributes
    ----------
    cohort : Cohort
        Event table form (TIME in min, DV glucose in mg/dL, AMT in U or g).
    truth : dict name -> (S,)
        The individual parameters each subject was simulated with.
    carb_ratio_g_per_u : (S,)
        The carbohydrate ratio used for meal boluses.
    """

    cohort: Cohort
    truth: dict[str, np.ndarray]
    carb_ratio_g_per_u: np.ndarray


def matched_basal_u_per_h(params: dict, target_mg_dl: np.ndarray | float) -> np.ndarray:
    """Basal rate (U/h) whose steady state puts fasting glucose at ``target_mg_dl``.

    See :meth:`~medsim.models.glucose_insulin.GlucoseInsulin.basal_for_fasting_glucose`.
    """
    theta = {k: np.asarray(params[k], np.float64) for k in ("EGP", "GEZI", "S_I", "C_I")}
    return np.asarray(get_model("glucose_insulin").basal_for_fasting_glucose(theta, target_mg_dl), np.float64)


def glucose_cohort(
    n_subjects: int = 12,
    days: float = 2.0,
    *,
    seed: int = 0,
    obs_every: float = 30.0,
    fasting_target: tuple[float, float] = (110.0, 150.0),
    carbs_g: tuple[float, float] = (30.0, 90.0),
    meal_minutes: tuple[float, ...] = (7 * 60.0, 12.5 * 60.0, 19 * 60.0),
    meal_jitter_min: float = 30.0,
    ratio_mistuning: tuple[float, float] = (0.8, 1.25),
    dt: float = 1.0,
    model: PhysiologyModel | None = None,
) -> SyntheticCohort:
    """Simulate and measure a synthetic type-1 diabetes cohort.

    Parameters
    ----------
    n_subjects, days : int, float
        Cohort size and study length.
    seed : int
        Seeds every random choice (parameters, meals, process and measurement noise).
    obs_every : float
        Sensor sampling interval in minutes (measurements at 0, obs_every, ...).
    fasting_target : (low, high) mg/dL
        Each subject's basal rate is matched to a fasting glucose drawn uniformly in this range.
    carbs_g : (low, high) g
        Meal carbohydrate content, uniform.
    meal_minutes : minutes after midnight of each day's meals; jittered by
        ``Normal(0, meal_jitter_min)``.
    ratio_mistuning : (low, high)
        The matched carbohydrate ratio is multiplied by a uniform factor in this range.
    dt : float
        Simulator sub-step in minutes.
    model : PhysiologyModel, optional
        Defaults to the registered ``glucose_insulin``.

    Returns
    -------
    SyntheticCohort
    """
    if n_subjects < 1 or days <= 0 or obs_every <= 0:
        raise ValueError("glucose_cohort: n_subjects >= 1, days > 0 and obs_every > 0 are required")
    model = model or get_model("glucose_insulin")
    rng = np.random.default_rng(seed)
    key_params, key_sim = jax.random.split(jax.random.key(seed))
    params = {k: np.asarray(v, np.float64) for k, v in prior_population(model, n_subjects, key=key_params).items()}
    target = rng.uniform(*fasting_target, n_subjects)
    basal = matched_basal_u_per_h(params, target)
    params["BASAL"] = basal
    horizon = days * MINUTES_PER_DAY
    # carbohydrate ratio matched to the subject (see module docstring), then mis-tuned
    matched_ratio = params["V_G"] * params["S_I"] * 1e6 * target / (1000.0 * params["C_I"])
    ratio = matched_ratio * rng.uniform(*ratio_mistuning, n_subjects)

    n_days = int(np.ceil(days))
    meal_t = (np.arange(n_days)[:, None] * MINUTES_PER_DAY + np.asarray(meal_minutes)[None, :]).reshape(-1)
    meal_t = meal_t[None, :] + rng.normal(0.0, meal_jitter_min, (n_subjects, meal_t.size))
    meal_t = np.clip(meal_t, 1.0, horizon - 1.0)
    carbs = rng.uniform(*carbs_g, meal_t.shape).round(0)
    bolus = (carbs / ratio[:, None]).round(1)
    basal_rate = basal / 60.0  # U/min
    # events: one basal infusion over the whole study, then meals and meal boluses
    ev_time = np.concatenate([np.zeros((n_subjects, 1)), meal_t, meal_t], axis=1)
    ev_cmt = np.concatenate(
        [np.full((n_subjects, 1), INSULIN_CMT), np.full(meal_t.shape, MEAL_CMT), np.full(meal_t.shape, INSULIN_CMT)],
        axis=1,
    )
    ev_amount = np.concatenate([(basal_rate * horizon)[:, None], carbs, bolus], axis=1)
    ev_rate = np.concatenate([basal_rate[:, None], np.zeros(meal_t.shape), np.zeros(meal_t.shape)], axis=1)
    order = np.argsort(ev_time, axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    ev_time, ev_cmt, ev_amount, ev_rate = map(take, (ev_time, ev_cmt, ev_amount, ev_rate))

    obs_t = np.arange(0.0, horizon + 1e-9, obs_every)
    obs_time = np.broadcast_to(obs_t, (n_subjects, obs_t.size))
    events = DoseEvents.from_arrays(ev_time, ev_cmt, ev_amount, ev_rate)
    sim_params = {k: np.asarray(v, np.float32) for k, v in params.items()}
    truth_glucose = np.asarray(
        simulate_schedule(model, sim_params, events, obs_time, key=key_sim, dt=dt)["glucose_mg_dL"], np.float64
    )
    residual = model.residual["glucose_mg_dL"]
    sd = np.asarray(residual.sd(truth_glucose))
    measured = np.maximum(truth_glucose + sd * rng.standard_normal(truth_glucose.shape), 20.0).round(1)

    cohort = Cohort.from_arrays(
        ids=[f"T1D-{i + 1:02d}" for i in range(n_subjects)],
        obs_time=obs_time,
        obs_value=measured,
        obs_cmt=GLUCOSE_CMT,
        dose_time=list(ev_time),
        dose_amount=list(ev_amount),
        dose_cmt=list(ev_cmt),
        dose_rate=list(ev_rate),
        covariates={"BASAL": basal.round(3)},
        units={"TIME": "min", "DV": "mg/dL", "AMT": "U insulin (CMT 1) / g carbohydrate (CMT 2)", "BASAL": "U/h"},
        name="synthetic_t1d",
        source=f"medsim.synthetic.glucose_cohort(n_subjects={n_subjects}, days={days}, seed={seed})",
    )
    return SyntheticCohort(cohort=cohort, truth=params, carb_ratio_g_per_u=ratio)
