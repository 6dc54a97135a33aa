"""Fits on Dask workers (SBC's SVI fits, one cohort with several seeds): the numbers of one process; tasks are data."""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import pytest
from typer.testing import CliRunner

from medsim.inference.calibration import Design, narrowed_priors, run_calibration
from medsim.inference.fit_tasks import describe, fit_seeds, task_for, task_model
from medsim.models import get

distributed = pytest.importorskip("distributed")

MODEL = narrowed_priors(get("pk_oral_1cmt"))
DESIGN = Design(n_subjects=4, obs_time=(0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0))
SETTINGS = dict(n_cohorts=3, seed=5, draws=50, n_rank_draws=49, method="svi", svi_steps=300, n_predictive_draws=50)


def _task(model=MODEL):
    return task_for(model, DESIGN.cohort(np.ones((4, 7))), 1, {"method": "svi", "svi_steps": 10, "draws": 10})


def test_a_fit_task_is_plain_data_and_rebuilds_the_narrowed_model():
    from distributed.protocol import deserialize, serialize

    task = deserialize(*serialize(_task()))  # what Dask does to a task it sends to a worker
    rebuilt = task_model(task)
    assert describe(rebuilt) == describe(MODEL) != describe(get("pk_oral_1cmt"))  # the narrowed priors travel
    # a worker whose registered model differs (another medsim) refuses instead of fitting another model
    other = dataclasses.replace(task, description=describe(get("pk_oral_1cmt")).replace("pk_oral_1cmt", "x"))
    with pytest.raises(ValueError, match="differs from the client's"):
        task_model(other)
    with pytest.raises(ValueError, match="fit task"):
        task_model(dataclasses.replace(task, model="no_such_model"))


@pytest.mark.slow  # six small SVI fits (~30 s on 2 shared cores)
def test_svi_calibration_on_two_workers_equals_one_process():
    from medsim.policies.dask_workers import map_on_cluster

    one = run_calibration(MODEL, DESIGN, **SETTINGS)
    # two workers as threads of this process: the tasks, their order and the worker-side rebuild are a
    # process cluster's; the seeds do not depend on where a fit runs
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c,
        distributed.Client(c) as client,
    ):
        two = run_calibration(MODEL, DESIGN, map_tasks=partial(map_on_cluster, client), **SETTINGS)
    assert one.sites == two.sites
    for site in one.sites:
        np.testing.assert_array_equal(one.ranks[site], two.ranks[site], err_msg=site)
    np.testing.assert_array_equal(one.heldout_covered, two.heldout_covered)
    assert one.settings["elbo"] == two.settings["elbo"]


def test_workers_apply_to_svi_only():
    with pytest.raises(ValueError, match="method='svi'"):
        run_calibration(MODEL, DESIGN, n_cohorts=1, seed=0, method="nuts", map_tasks=lambda fn, tasks: [])
    import medsim.cli.sbc_cmds  # noqa: F401  (registers `medsim sbc`)
    from medsim.cli import app

    result = CliRunner().invoke(app, ["sbc", "pk_oral_1cmt", "--workers", "2"])
    assert result.exit_code == 2 and "--method svi" in result.output, result.output


@pytest.mark.slow  # four small SVI fits
def test_fits_with_several_seeds_on_workers_equal_those_here():
    from medsim.policies.dask_workers import map_on_cluster

    cohort = DESIGN.cohort(np.exp(np.linspace(1.0, 2.0, 28)).reshape(4, 7))
    settings = dict(method="svi", svi_steps=200, draws=40, process_noise=False)
    here = fit_seeds(cohort, MODEL, [3, 4], **settings)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c,
        distributed.Client(c) as client,
    ):
        there = fit_seeds(cohort, MODEL, [3, 4], map_tasks=partial(map_on_cluster, client), **settings)
    for a, b in zip(here, there, strict=True):
        np.testing.assert_array_equal(a.idata.posterior["CL"].values, b.idata.posterior["CL"].values)
    # another seed, another fit
    assert not np.array_equal(here[0].idata.posterior["CL"].values, here[1].idata.posterior["CL"].values)
    with pytest.raises(ValueError, match="distinct"):
        fit_seeds(cohort, MODEL, [1, 1], **settings)
