"""The per-bound statistic names and the interaction record: one declaration, every loop uses it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import medsim.models as registry
import medsim.policies
from medsim.policies import device_program, rollout_assemble
from medsim.policies.builtin import FixedDose
from medsim.policies.interaction import INTERACTION_FIELDS, Interaction
from medsim.policies.result import PER_BOUND, PER_BOUND_FILL, RolloutResult
from medsim.policies.rollout import rollout
from medsim.population import VirtualPopulation
from medsim.simulate.types import Bound, IntervalStats


def test_per_bound_names_are_the_simulators_per_bound_statistics():
    stats = [f.name for f in dataclasses.fields(IntervalStats) if not f.name.startswith("obs_")]
    assert PER_BOUND == tuple(stats)
    assert set(PER_BOUND) <= {f.name for f in dataclasses.fields(RolloutResult)}
    assert INTERACTION_FIELDS[-len(PER_BOUND) :] == PER_BOUND
    assert Interaction._fields == INTERACTION_FIELDS


def test_per_bound_names_are_declared_once():
    # The assembly and the compiled loop read the result's list; no module spells the names as strings.
    assert rollout_assemble.PER_BOUND_FILL is PER_BOUND_FILL
    assert device_program.PER_BOUND is PER_BOUND
    root = Path(medsim.policies.__file__).parent
    spelled = [p.relative_to(root).as_posix() for p in root.rglob("*.py") if '"end_violation"' in p.read_text()]
    assert spelled == ["result.py"]


def _result(k: int, value: float) -> RolloutResult:
    n, j = 2, 1
    per_bound = {name: np.full((n, k, j), value) for name in PER_BOUND}  # values that are no fill
    return RolloutResult(
        policy="p",
        bounds=(Bound("x", 1.0),),
        horizon=1.0,
        time_unit="h",
        draw=np.zeros(n, int),
        subject=np.full(n, ""),
        t_start=np.zeros((n, k)),
        t_end=np.ones((n, k)),
        mask=np.ones((n, k), bool),
        measured={},
        true_start={},
        obs_min={},
        obs_max={},
        **per_bound,
    )


def test_merge_pads_every_per_bound_statistic_with_its_declared_fill():
    merged = _result(1, 0.5).merge(_result(3, 0.5))
    for name, fill in PER_BOUND_FILL.items():
        padded = getattr(merged, name)[:2, 1:, :]  # the 1-interaction part, padded to 3
        assert padded.shape == (2, 2, 1)
        np.testing.assert_array_equal(padded, fill, err_msg=name)


def test_compiled_and_host_loops_record_the_same_support_fraction():
    # The compiled loop's records carry the support bounds' time outside; the host turns it into
    # the fraction. Both loops use the same seed and sub-step grid, so the fractions agree to
    # float32 rounding of the simulator's time outside (rtol 1e-5).
    model = registry.get("pk_iv_1cmt")
    theta = model.individual_parameters(model.typical_parameters(), {}, model.reference_covariates())
    pop = VirtualPopulation.from_parameters(model, {k: np.full(2, float(v)) for k, v in theta.items()})
    options = dict(
        bounds=(Bound("conc", 30.0),),
        horizon=40.0,
        dt=0.5,
        seed=0,
        support={"conc": (0.0, 10.0), "bolus_cmt1": (0.0, 25.0)},
        n_paths_saved=0,
    )
    policy = FixedDose(dose=20.0, every=10.0)
    host = rollout(model, pop, policy, loop="host", **options)
    device = rollout(model, pop, policy, loop="device", **options)
    assert device.provenance["loop"] == "device"
    assert host.out_of_support is not None and np.any(host.out_of_support > 0)
    np.testing.assert_allclose(device.out_of_support, host.out_of_support, rtol=1e-5)
