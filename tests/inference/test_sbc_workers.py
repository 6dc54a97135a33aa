"""SVI simulation-based calibration on Dask workers: the same ranks as one process; the fit tasks are data."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from medsim.inference.calibration import Design, narrowed_priors, run_calibration
from medsim.inference.calibration_svi import SviFitTask, describe, task_model
from medsim.models import get

distributed = pytest.importorskip("distributed")

MODEL = narrowed_priors(get("pk_oral_1cmt"))
DESIGN = Design(n_subjects=4, obs_time=(0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0))
SETTINGS = dict(n_cohorts=3, seed=5, draws=50, n_rank_draws=49, method="svi", svi_steps=300, n_predictive_draws=50)


def _task(model=MODEL) -> SviFitTask:
    return SviFitTask(
        model=model.name,
        parameters=tuple(model.parameters),
        description=describe(model),
        design=DESIGN,
        values=np.ones((4, 7)),
        names=("CL",),
        seed=1,
        draws=10,
        svi_steps=10,
        max_substep=None,
        process_noise=False,
        guide="mvn",
        learning_rate=0.01,
    )


def test_a_fit_task_is_plain_data_and_rebuilds_the_narrowed_model():
    task = pickle.loads(pickle.dumps(_task()))
    rebuilt = task_model(task)
    assert describe(rebuilt) == describe(MODEL) != describe(get("pk_oral_1cmt"))  # the narrowed priors travel
    # a worker whose registered model differs (another medsim) refuses instead of fitting another model
    other = dataclasses.replace(task, description=describe(get("pk_oral_1cmt")).replace("pk_oral_1cmt", "x"))
    with pytest.raises(ValueError, match="differs from the client's"):
        task_model(other)
    with pytest.raises(ValueError, match="calibration fit"):
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
        two = run_calibration(MODEL, DESIGN, map_tasks=lambda fn, tasks: map_on_cluster(client, fn, tasks), **SETTINGS)
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
