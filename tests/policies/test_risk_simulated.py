"""End to end through the simulator and the rollout: closed-form risk of a Brownian model.

The model below is x(t) = mu t + sigma W(t) (one state, constant drift and diffusion), so the
simulator's Brownian-bridge statistics are exact given the sub-step grid and the probability of
crossing x = b over [0, H] is known in closed form (``risk_fixtures.bm_passage_probability``).
One patient population, two sub-steps: a fine one and one sub-step per interaction interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
import pytest
from risk_fixtures import bm_passage_probability

from medsim.models.base import Observable, Parameter, PhysiologyModel, State
from medsim.policies.protocol import Option
from medsim.policies.risk import patient_events, risk_report
from medsim.policies.rollout import rollout_many
from medsim.policies.spec_file import parse_spec
from medsim.population import PosteriorDraws, sample_population

MU, SIGMA, BOUND, HORIZON, EVERY = 0.5, 1.0, 1.0, 1.0, 0.25
Z = 4.0  # standard errors allowed: two-sided false-failure probability 6e-5


@dataclass(frozen=True)
class DriftingBrownian(PhysiologyModel):
    """dx = mu dt + sigma dW, x(0) = 0 (test model with a closed-form first-passage law)."""

    name: str = "drifting_brownian"
    time_unit: str = "h"
    states: tuple[State, ...] = (State("x", "1"),)
    parameters: tuple[Parameter, ...] = (
        Parameter("mu", "1/h", MU, kind="covariate_effect"),
        Parameter("sigma", "1/sqrt(h)", SIGMA, kind="process_noise"),
    )
    observables: tuple[Observable, ...] = (Observable("x", "1"),)
    # A dose compartment the policy never uses (the rollout expects at least one).
    dose_targets: Mapping[int, str] = field(default_factory=lambda: {1: "x"})

    def initial_state(self, theta):
        return {"x": jnp.zeros_like(jnp.asarray(theta["mu"], jnp.float32))}

    def drift(self, t, x, theta, rate):
        return {"x": jnp.zeros_like(x["x"]) + theta["mu"]}

    def diffusion(self, t, x, theta):
        return {"x": jnp.zeros_like(x["x"]) + theta["sigma"]}

    def observe(self, x, theta):
        return {"x": x["x"]}


@dataclass(frozen=True)
class EveryQuarterHour:
    """Look every 15 minutes, never treat."""

    name: str = "look_every_0.25h"

    def init(self, n: int, *, seed: int) -> None:
        return None

    def act(self, state, obs, *, rng):
        return state, Option(interval=np.full(obs.n, EVERY))


@pytest.fixture(scope="module")
def reports():
    model = DriftingBrownian()
    d = 50
    draws = PosteriorDraws(model=model, population={"mu": np.full(d, MU), "sigma": np.full(d, SIGMA)}, omega={})
    population = sample_population(draws, 4000, seed=0)
    spec = parse_spec(f"x<={BOUND:g};horizon={HORIZON:g}h;epsilon=0.6;delta=0.05", model=model)
    out = {}
    for dt in (EVERY / 16, EVERY):
        (res,) = rollout_many(
            model,
            population,
            [EveryQuarterHour()],
            bounds=spec.bounds,
            horizon=HORIZON,
            dt=dt,
            seed=1,
            measurement_noise=False,
            n_paths_saved=0,
            scheme="euler",
        )
        out[dt] = (res, patient_events(res, spec), risk_report([res], spec))
    return out


def test_simulated_bridge_estimate_matches_closed_form(reports):
    exact = bm_passage_probability(0.0, BOUND, MU, SIGMA, HORIZON)
    for dt, (res, _, rep) in reports.items():
        covered = np.where(res.mask, res.t_end - res.t_start, 0.0).sum(axis=1)
        assert covered == pytest.approx(np.full(res.n_patients, HORIZON))
        est = rep.policies[0].joint.bridge
        assert abs(est.value - exact) < Z * est.se, f"dt={dt}: {est} vs exact {exact:.4f}"
        # float32 simulation: the bridge probabilities are exact given the grid, so the
        # estimate is unbiased at one sub-step per interaction too.


def test_simulated_grid_estimate_is_biased_low_at_the_coarse_step(reports):
    exact = bm_passage_probability(0.0, BOUND, MU, SIGMA, HORIZON)
    _, events, rep = reports[EVERY]
    grid = rep.policies[0].joint.grid
    assert grid.upper < exact - 0.03  # 4 grid points: ~0.1 of probability missed (~15 SE)
    seen = rep.policies[0].joint.seen
    assert seen.value <= grid.value
    # bridge = seen + only-between, patient by patient
    assert events.joint_bridge == pytest.approx(events.joint_seen + events.joint_between_bridge)
