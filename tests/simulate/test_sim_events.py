"""Dosing lands at exact event times; interval boundaries and input validation.

With the process noise off, one Euler sub-step of the IV model is ``x' = x (1 - k h) + u h``, so the
expected values can be written out step by step: float32 rounding (relative 1e-6) is the only
tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medsim.models import get
from medsim.models.base import Observable, Parameter, PhysiologyModel, State
from medsim.simulate import Bound, DoseEvents, Simulator

MODEL = get("pk_iv_1cmt")
CL, V = 0.6, 1.5
K = CL / V
SIM = Simulator(MODEL, dt=0.5, scheme="euler")
KEY = jax.random.key(0)


def _theta(n: int = 1) -> dict:
    theta = {k: float(v) for k, v in MODEL.typical_parameters().items()}
    theta.update(CL=CL, V=V, sigma_central=0.0)
    return {k: jnp.full((n,), v, jnp.float32) for k, v in theta.items()}


def _x(amount: float = 0.0, n: int = 1) -> dict:
    return {"central": jnp.full((n,), amount, jnp.float32)}


def _euler(x: float, h: float, u: float = 0.0) -> float:
    return x * (1 - K * h) + u * h


def test_bolus_mid_interval_splits_the_step():
    events = DoseEvents.from_arrays([[1.37]], [[1]], [[10.0]])
    res = SIM.advance(_x(), _theta(), 0.0, 3.0, key=KEY, events=events, save_every=1)
    t = np.asarray(res.path.time[0])
    np.testing.assert_array_equal(t[:6], np.float32([0.0, 0.5, 1.0, 1.37, 1.5, 2.0]))
    amount = np.asarray(res.path.values["conc"][0], np.float64) * V
    np.testing.assert_array_equal(amount[:3], 0.0)
    assert amount[3] == pytest.approx(10.0, rel=1e-6)  # the saved grid value is the post-dose one
    assert amount[4] == pytest.approx(_euler(10.0, 0.13), rel=1e-6)  # a 0.13 h sub-step
    assert amount[5] == pytest.approx(_euler(_euler(10.0, 0.13), 0.5), rel=1e-6)


def test_infusion_start_and_stop_inside_steps():
    # 2 mg at 4 mg/h from 0.2 h: runs over [0.2, 0.7), both ends inside 0.5 h steps.
    events = DoseEvents.from_arrays([[0.2]], [[1]], [[2.0]], [[4.0]])
    res = SIM.advance(_x(), _theta(), 0.0, 1.5, key=KEY, events=events, save_every=1)
    t = np.asarray(res.path.time[0])
    np.testing.assert_allclose(t[:6], [0.0, 0.2, 0.5, 0.7, 1.0, 1.5], rtol=1e-7)
    x = [0.0, 0.0]
    x.append(_euler(x[-1], 0.3, 4.0))
    x.append(_euler(x[-1], 0.2, 4.0))
    x.append(_euler(x[-1], 0.3))
    x.append(_euler(x[-1], 0.5))
    np.testing.assert_allclose(np.asarray(res.path.values["conc"][0, :6], np.float64) * V, x, rtol=1e-6)


def test_interval_ends_doses_at_t0_and_t1_and_running_infusions():
    theta = _theta()
    # Bolus exactly at t0 acts at the start; a bolus exactly at t1 is left to the next call.
    events = DoseEvents.from_arrays([[0.0, 1.0]], [[1, 1]], [[5.0, 7.0]])
    first = SIM.advance(_x(), theta, 0.0, 1.0, key=KEY, events=events)
    assert float(first.stats.obs_start["conc"][0]) * V == pytest.approx(5.0, rel=1e-6)
    assert float(first.state["central"][0]) == pytest.approx(_euler(_euler(5.0, 0.5), 0.5), rel=1e-6)
    second = SIM.advance(first.state, theta, 1.0, 1.5, key=KEY, events=events)
    before = float(first.state["central"][0])
    assert float(second.state["central"][0]) == pytest.approx(_euler(before + 7.0, 0.5), rel=1e-6)
    # An infusion that started before t0 keeps running; splitting an interval at a grid point
    # changes nothing (the grid is aligned to t0 + k dt).
    inf = DoseEvents.from_arrays([[0.3]], [[1]], [[3.0]], [[2.0]])  # [0.3, 1.8)
    whole = SIM.advance(_x(1.0), theta, 0.0, 2.5, key=KEY, events=inf)
    part = SIM.advance(_x(1.0), theta, 0.0, 1.0, key=KEY, events=inf)
    part = SIM.advance(part.state, theta, 1.0, 2.5, key=KEY, events=inf)
    assert float(part.state["central"][0]) == pytest.approx(float(whole.state["central"][0]), rel=1e-6)
    # A constant rate over the interval is the same input as an infusion covering it.
    as_rate = SIM.advance(_x(1.0), theta, 0.0, 1.0, key=KEY, rates={1: 2.0})
    as_event = SIM.advance(
        _x(1.0), theta, 0.0, 1.0, key=KEY, events=DoseEvents.from_arrays([[0.0]], [[1]], [[9.0]], [[2.0]])
    )
    assert float(as_rate.state["central"][0]) == pytest.approx(float(as_event.state["central"][0]), rel=1e-6)


def test_per_patient_intervals_and_events():
    n = 3
    t0 = np.array([0.0, 0.25, 1.0], np.float32)
    t1 = np.array([1.0, 0.25, 2.1], np.float32)  # the middle patient has an empty interval
    events = DoseEvents.from_arrays([[0.6], [0.1], [1.75]], [[1], [1], [1]], [[4.0], [4.0], [4.0]])
    res = SIM.advance(_x(2.0, n), _theta(n), t0, t1, key=KEY, events=events)
    x = np.asarray(res.state["central"], np.float64)
    assert x[0] == pytest.approx(_euler(_euler(_euler(2.0, 0.5), 0.1) + 4.0, 0.4), rel=1e-6)
    assert x[1] == 2.0
    expected = _euler(_euler(_euler(_euler(2.0, 0.5), 0.25) + 4.0, 0.25), 0.1)
    assert x[2] == pytest.approx(expected, rel=1e-6)


@dataclass(frozen=True)
class _Coupled(PhysiologyModel):
    """Two noisy states whose diffusions depend on each other (not diagonal noise)."""

    name: str = "coupled"
    states: tuple = (State("a", "1"), State("b", "1"))
    parameters: tuple = (Parameter("s", "1", 0.1, kind="process_noise"),)
    observables: tuple = (Observable("a_obs", "1"),)

    def initial_state(self, theta):
        return {"a": 1.0 + 0.0 * theta["s"], "b": 1.0 + 0.0 * theta["s"]}

    def drift(self, t, x, theta, rate):
        return {"a": 0.0 * x["a"], "b": 0.0 * x["b"]}

    def diffusion(self, t, x, theta):
        return {"a": theta["s"] * x["b"], "b": theta["s"] * x["a"]}

    def observe(self, x, theta):
        return {"a_obs": x["a"]}


def test_constructor_errors_are_specific():
    with pytest.raises(ValueError, match="dt"):
        Simulator(MODEL, dt=0.0)
    with pytest.raises(ValueError, match="scheme"):
        Simulator(MODEL, dt=0.1, scheme="heun")
    with pytest.raises(ValueError, match="no observable 'glucose'"):
        Simulator(MODEL, dt=0.1, bounds=(Bound("glucose", 70.0, "lower"),))
    with pytest.raises(ValueError, match="log scale"):
        Simulator(MODEL, dt=0.1, bounds=(Bound("conc", 0.0, "lower"),))
    with pytest.raises(ValueError, match="diagonal noise"):
        Simulator(_Coupled(), dt=0.1, scheme="milstein")
    Simulator(_Coupled(), dt=0.1, scheme="euler")  # Euler needs no diagonal noise


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"t1": -1.0}, r"t1\[0\] = -1.0 is before t0\[0\]"),
        ({"t1": np.zeros(3)}, r"t1: expected a scalar or shape \(2,\)"),
        ({"events": DoseEvents.from_arrays([[0.5], [0.5]], [[3], [1]], [[1.0], [1.0]])}, "no dose compartment 3"),
        ({"events": DoseEvents.from_arrays([[0.5], [0.5]], [[1], [1]], [[1.0], [-1.0]])}, r"events.amount\[1, 0\]"),
        ({"events": DoseEvents.from_arrays([[np.nan], [0.5]], [[1], [1]], [[1.0], [1.0]])}, r"events.time\[0, 0\]"),
        ({"events": DoseEvents.from_arrays([[0.5]], [[1]], [[1.0]])}, r"events.time: expected shape \(2, E\)"),
        ({"rates": {2: 1.0}}, r"rates\[2\]"),
        ({"rates": {1: -1.0}}, "finite rates >= 0"),
        ({"save_every": 0}, "save_every"),
        ({"state": {"depot": jnp.zeros(2)}}, r"missing \['central'\], unknown \['depot'\]"),
        ({"params": {"CL": jnp.ones(2)}}, "missing parameters"),
        ({"params_extra": {"CL": jnp.ones(3)}}, r"params\['CL'\]: expected a scalar or shape \(2,\)"),
    ],
)
def test_advance_errors_name_the_argument(kwargs, match):
    args = {"state": _x(0.0, 2), "params": _theta(2), "t0": 0.0, "t1": 1.0, "key": KEY}
    extra = kwargs.pop("params_extra", None)
    args.update(kwargs)
    if extra:
        args["params"] = {**args["params"], **extra}
    state, params, t0, t1 = args.pop("state"), args.pop("params"), args.pop("t0"), args.pop("t1")
    with pytest.raises(ValueError, match=match):
        SIM.advance(state, params, t0, t1, **args)
