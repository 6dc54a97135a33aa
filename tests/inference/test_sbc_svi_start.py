"""Where the SVI fits of simulation-based calibration start (``run_calibration(svi_start=...)``).

medsim's recommended T1D set-up can start SVI from the prior and from the ODE limit's fit and keep
the better ELBO (``medsim fit --svi-start prior,ode``); SBC calibrates exactly the fits users run,
so it takes the same setting to every cohort's fit and records it (``settings["svi_start"]``,
checked in tests/inference/test_sbc_cli.py). That the better of both starts is kept, the "prior"
stage being the default fit bit for bit, is tests/inference/test_svi_starts.py's.
"""

from __future__ import annotations

import pytest

from medsim.inference.calibration import Design, narrowed_priors, run_calibration
from medsim.models import get

MODEL = narrowed_priors(get("pk_oral_1cmt"))
DESIGN = Design(n_subjects=3, obs_time=(0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0))
SMALL = dict(n_cohorts=2, seed=3, draws=20, n_rank_draws=19, method="svi", svi_steps=60, n_predictive_draws=20)


class _Stop(Exception):
    pass


def test_every_cohort_fit_gets_the_start():
    sent = []

    def capture(fn, tasks):
        sent.extend(tasks)
        raise _Stop  # the tasks are what is checked; nothing is fitted

    with pytest.raises(_Stop):
        run_calibration(MODEL, DESIGN, process_noise=True, svi_start="prior,ode", map_tasks=capture, **SMALL)
    assert len(sent) == 2 and len({t.seed for t in sent}) == 2
    assert all(dict(t.settings)["svi_start"] == "prior,ode" for t in sent)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"svi_start": "map", "process_noise": True}, "expected distinct names from prior, ode"),
        ({"svi_start": "ode", "process_noise": False}, "these fits are the ODE limit"),
        ({"svi_start": "ode", "process_noise": True, "method": "nuts"}, "applies to method 'svi', not 'nuts'"),
    ],
)
def test_a_start_that_cannot_apply_is_refused_before_any_work(settings, message):
    def never(fn, tasks):
        raise AssertionError("fits started")

    options = {**SMALL, **settings}
    with pytest.raises(ValueError, match=message):
        run_calibration(MODEL, DESIGN, map_tasks=never if options["method"] == "svi" else None, **options)
