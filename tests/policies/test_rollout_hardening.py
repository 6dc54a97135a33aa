"""Rollouts and ``medsim risk``: unbounded work refused before simulating, non-finite patients named.

Reproduces the reported failures: ``horizon=1e9h`` ran 626 s and 4.7 GB before failing,
``fixed:every=1e-9`` ran past 300 s, ``--n 10000000000`` died in a numpy allocation.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from typer.testing import CliRunner

import medsim.cli.risk_cmds  # noqa: F401  (registers the command)
import medsim.models as registry
from medsim.cli.app import app
from medsim.policies.builtin import FixedDose
from medsim.policies.evaluate import evaluate_policies
from medsim.policies.rollout import rollout
from medsim.policies.spec_file import parse_spec
from medsim.population import VirtualPopulation
from medsim.simulate import NonFiniteStateError, UnstableStepError, WorkLimitError
from medsim.simulate.types import Bound

PK = registry.get("pk_oral_1cmt")
BOUNDS = (Bound("conc", 20.0, "upper"),)


def _typical(n: int, **override) -> VirtualPopulation:
    theta = PK.individual_parameters(PK.typical_parameters(), {}, PK.reference_covariates())
    params = {k: np.full(n, float(v)) for k, v in theta.items()}
    for k, (i, v) in override.items():
        params[k][i] = v
    return VirtualPopulation.from_parameters(PK, params)


def _run(pop, policy, **kw):
    options = {"bounds": BOUNDS, "horizon": 24.0, "dt": 0.05, "seed": 0, "n_paths_saved": 0, **kw}
    return rollout(PK, pop, policy, **options)


@pytest.mark.parametrize(
    ("policy", "horizon", "message"),
    [
        (FixedDose(dose=320.0, every=12.0), 1e9, r"about 8\.33e\+07 interaction intervals per patient"),
        (FixedDose(dose=320.0, every=1e-9), 24.0, r"an interaction every 1e-0\d h\): about 2\.4e\+0\d interaction"),
    ],
)
def test_unbounded_interactions_are_refused_before_simulating(policy, horizon, message):
    start = time.perf_counter()
    with pytest.raises(WorkLimitError, match=message) as err:
        _run(_typical(4), policy, horizon=horizon)
    assert "raise it with max_interactions (medsim risk: --max-interactions)" in str(err.value)
    # Refused at the first interaction, before any sub-step: seconds, not the minutes reported.
    assert time.perf_counter() - start < 10.0


def test_max_interactions_can_be_raised():
    hourly = FixedDose(dose=30.0, every=1.0)
    with pytest.raises(WorkLimitError, match="above the limit of 12"):
        _run(_typical(2), hourly, horizon=24.0, max_interactions=12)
    result = _run(_typical(2), hourly, horizon=24.0, max_interactions=24)
    assert result.mask.sum(axis=1).tolist() == [24, 24]


def test_memory_is_checked_against_max_memory():
    with pytest.raises(WorkLimitError, match=r"of memory, above the limit of 1 KiB.*max_memory") as err:
        _run(_typical(4), FixedDose(dose=320.0, every=12.0), max_memory=1024)
    assert err.value.what == "memory" and err.value.estimate > 1024


def test_ten_billion_patients_are_refused_before_sampling(pk_draws):
    spec = parse_spec("conc<=20;horizon=24h", model=PK)
    start = time.perf_counter()
    with pytest.raises(WorkLimitError, match=r"10000000000 virtual patients of pk_oral_1cmt: about .* TiB"):
        evaluate_policies(pk_draws, ["fixed:dose=320,every=12"], spec, n=10_000_000_000, seed=0)
    assert time.perf_counter() - start < 5.0  # nothing was allocated for them


def test_a_nan_patient_in_a_later_chunk_is_named_by_its_global_index():
    # Populations refuse non-finite parameters; an absurd noise scale overflows float32 instead.
    pop = _typical(12, sigma_central=(10, 1e20))
    with pytest.raises(NonFiniteStateError, match=r"patient 10: .* is (nan|inf|-inf) .*sigma_central=1e\+20") as err:
        _run(pop, FixedDose(dose=320.0, every=12.0), chunk_size=8)
    assert err.value.patient == 10


def test_a_step_beyond_the_stability_limit_is_refused():
    pop = _typical(6, ka=(4, 30.0))
    with pytest.raises(
        UnstableStepError,
        match=r"patient 4 \(ka=30.*largest stable step for these patients is 0\.03333",  # 1 / ka
    ):
        _run(pop, FixedDose(dose=320.0, every=12.0), dt=0.1)
    # The exponential scheme is stable for first-order absorption at any step.
    _run(pop, FixedDose(dose=320.0, every=12.0), dt=0.1, scheme="exponential")


def test_risk_cli_refuses_unbounded_work_with_its_options(tmp_path):
    base = ["risk", "--prior", "pk_oral_1cmt", "--prior-draws", "4", "--n", "4", "--out", str(tmp_path / "r")]
    runner = CliRunner()
    result = runner.invoke(app, [*base, "--policy", "fixed:dose=320,every=1e-9", "--spec", "conc<=20;horizon=24h"])
    assert result.exit_code == 2, result.output
    assert "--max-interactions" in " ".join(result.output.split())
    result = runner.invoke(
        app, [*base, "--policy", "fixed:dose=320", "--spec", "conc<=20;horizon=24h", "--max-memory", "1KiB"]
    )
    assert result.exit_code == 2, result.output
    assert "above the limit of 1 KiB" in " ".join(result.output.split())
    result = runner.invoke(app, [*base, "--policy", "fixed", "--spec", "conc<=20;horizon=24h", "--max-memory", "x"])
    assert result.exit_code == 2 and "expected a positive size" in result.output
