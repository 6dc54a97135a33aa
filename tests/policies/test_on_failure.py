"""Patients that cannot be simulated: ``on_failure="stop"`` names them, ``"count"`` counts them.

The reported failure: a 10^6-patient ``medsim risk`` run stopped at one prior patient whose glucose
passed the model's physical range under PID. Here one patient of six is engineered to run away:
its gut holds 30 kg of carbohydrate (``initial_gut1``), so its glucose passes 10,000 mg/dL 45 min
in (interaction 3 of a PID every 15 min), or at once from ``initial_gut2``. The other five are the
conftest's posterior-like patients; the reference run replaces the bad patient by a copy of
patient 0, so every other patient keeps its index and noise streams and its numbers must be
equal bit for bit (no tolerance: the same programs on the same inputs).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import medsim.models as registry
from medsim.policies.builtin import PID
from medsim.policies.evaluate import evaluate_policies
from medsim.policies.report.html import render_html
from medsim.policies.report.markdown import render_markdown
from medsim.policies.risk import RiskReport
from medsim.policies.risk.events import patient_events
from medsim.policies.rollout import rollout
from medsim.policies.rollout_device import streaming_rollout
from medsim.policies.spec import SafetySpec
from medsim.policies.streaming import sums_events
from medsim.population import sample_population
from medsim.simulate.checks import RunawayStateError
from medsim.simulate.types import Bound

GLUCOSE = registry.get("glucose_insulin")
BOUNDS = (Bound("glucose_mg_dL", 90.0, "lower"), Bound("glucose_mg_dL", 160.0, "upper"))
BAD = 2
RECORDED = ("t_start", "t_end", "mask", "log_survival", "grid_violation", "end_violation")
RECORDED += ("time_outside", "first_outside", "depth")
PER_OBS = ("measured", "true_start", "obs_min", "obs_max", "treatment", "efficacy", "trace")
# where the failure happens -> (gut state, amount, horizon, expected failure time): first interval,
# the middle (interaction 3 of 8), the last (interaction 3 of 4)
WHERE = {
    "first": ("gut2", 1e6, 120.0, 0.0),
    "middle": ("gut1", 3e4, 120.0, 45.0),
    "last": ("gut1", 3e4, 60.0, 45.0),
}


@pytest.fixture(scope="module")
def base():
    from conftest import concentrated_draws

    return sample_population(concentrated_draws(GLUCOSE, spread=0.05), 6, seed=2, covariates={"BASAL": 1.2})


def with_gut(pop, state: str, amount: float, bad: bool = True, at: int = BAD):
    """``pop`` with patient ``at``'s gut loaded (``bad``) or replaced by a copy of patient 0."""
    params = {k: np.array(v, copy=True) for k, v in pop.params.items()}
    for s in ("gut1", "gut2"):
        params[f"initial_{s}"] = np.zeros(pop.n_patients)
    if bad:
        params[f"initial_{state}"][at] = amount
    else:
        for v in params.values():
            v[at] = v[0]
    return replace(pop, params=params)


def options(horizon: float, **kw) -> dict:
    return dict(bounds=BOUNDS, horizon=horizon, dt=1.0, seed=3, scenario=None, **kw)


def assert_same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def assert_others_equal(counted, reference):
    """Every patient but BAD has the reference run's numbers (columns the reference has)."""
    keep = np.arange(counted.n_patients) != BAD
    k = reference.mask.shape[1]
    for name in RECORDED:
        assert_same(getattr(counted, name)[keep][:, :k], getattr(reference, name)[keep])
    for name in PER_OBS:
        for key, v in getattr(reference, name).items():
            got = getattr(counted, name)[key][keep]
            assert_same(got if got.ndim == 1 or name == "trace" else got[:, :k], v[keep])


def test_stop_names_the_patient_and_says_how_to_count_it(base):
    pop = with_gut(base, "gut1", 3e4)
    with pytest.raises(RunawayStateError, match="--on-failure count") as err:
        rollout(GLUCOSE, pop, PID(every=15.0), loop="host", n_paths_saved=0, **options(120.0))
    assert err.value.patient == BAD and f"patient {BAD}" in str(err.value)
    with pytest.raises(ValueError, match="on_failure"):
        rollout(GLUCOSE, pop, PID(every=15.0), loop="host", on_failure="skip", **options(120.0))


@pytest.mark.parametrize("where", sorted(WHERE))
def test_count_freezes_the_patient_where_it_failed(base, where):
    state, amount, horizon, t_fail = WHERE[where]
    pid = PID(every=15.0)
    run = dict(loop="host", n_paths_saved=0, **options(horizon))
    counted = rollout(GLUCOSE, with_gut(base, state, amount), pid, on_failure="count", **run)
    reference = rollout(GLUCOSE, with_gut(base, state, amount, bad=False), pid, **run)
    assert counted.provenance["on_failure"] == "count"
    assert_same(counted.failed, np.arange(6) == BAD)
    assert counted.failed_time[BAD] == t_fail and counted.failure_reason[BAD] == 2  # runaway state
    assert counted.mask[BAD].sum() == int(t_fail // 15)  # its intervals before the refused one
    assert np.isnan(counted.efficacy["time_in_range"][BAD]) and np.isnan(counted.trace["glucose_mg_dL"][BAD]).all()
    assert_others_equal(counted, reference)
    # Every bound violated by the failed patient; the others exactly as in the reference run.
    spec = SafetySpec(bounds=BOUNDS, horizon=horizon, time_unit=GLUCOSE.time_unit)
    ev, ref = patient_events(counted, spec), patient_events(reference, spec)
    keep = np.arange(6) != BAD
    for name in ("seen", "grid"):
        assert getattr(ev, name)[BAD].all()
        assert_same(getattr(ev, name)[keep], getattr(ref, name)[keep])
        assert getattr(ev, name).sum(axis=0).tolist() == (getattr(ref, name)[keep].sum(axis=0) + 1).tolist()
    assert (ev.bridge[BAD] == 1.0).all() and ev.joint_bridge[BAD] == 1.0
    assert_same(ev.bridge[keep], ref.bridge[keep])


@pytest.mark.slow
def test_compiled_loop_and_streaming_count_as_the_host_loop(base):
    # Two failures at different times: a frozen patient once came back to life in the compiled loop
    # at the next interaction, so two of them kept the 10^6 benchmark's loop running out of phase
    # (max_interactions, 8 intervals here, turns that into an error).
    pop, pid = with_gut(base, "gut1", 3e4), PID(every=15.0)
    pop = replace(pop, params={**pop.params, "initial_gut2": np.where(np.arange(6) == 4, 1e6, 0.0)})
    limit = {"max_interactions": 12}
    host = rollout(GLUCOSE, pop, pid, loop="host", on_failure="count", n_paths_saved=3, **options(120.0, **limit))
    device = rollout(GLUCOSE, pop, pid, loop="device", on_failure="count", n_paths_saved=3, **options(120.0, **limit))
    assert device.failed_time[[BAD, 4]].tolist() == [45.0, 0.0] and device.failed.sum() == 2
    assert device.provenance["loop"] == "device"
    for name in (*RECORDED, "failed_time", "failure_reason", "path_time"):
        assert_same(getattr(host, name), getattr(device, name))
    for name in (*PER_OBS, "path"):
        assert getattr(host, name).keys() == getattr(device, name).keys()
        for key in getattr(host, name):
            assert_same(getattr(host, name)[key], getattr(device, name)[key])
    with pytest.raises(RunawayStateError, match="--on-failure count"):  # "stop": the host loop names it
        rollout(GLUCOSE, pop, pid, loop="device", n_paths_saved=0, **options(120.0))
    sums = streaming_rollout(GLUCOSE, pop, pid, on_failure="count", **options(120.0, **limit))
    assert_same(sums.failed_time, device.failed_time)
    assert_same(sums.interactions, device.mask.sum(axis=1))
    spec = SafetySpec(bounds=BOUNDS, horizon=120.0, time_unit=GLUCOSE.time_unit)
    want, got = patient_events(device, spec), sums_events(sums, device.bounds, spec, device.draw, device.policy)
    for name in ("seen", "grid", "joint_seen", "joint_grid", "failed"):
        assert_same(getattr(got, name), getattr(want, name))
    # float64 sums of per-interval log-survivals in another order: rounding well below 1e-12
    np.testing.assert_allclose(got.bridge, want.bridge, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def counted_report(base):
    # wide bounds: only the failed patient violates them
    wide = (Bound("glucose_mg_dL", 40.0, "lower"), Bound("glucose_mg_dL", 400.0, "upper"))
    spec = SafetySpec(bounds=wide, horizon=120.0, time_unit=GLUCOSE.time_unit, epsilon=0.9, delta=0.1, rare="off")
    pop = with_gut(base, "gut1", 3e4)
    kw = dict(n=6, seed=3, scenario="none", population=pop, loop="host")
    return evaluate_policies(None, [PID(every=15.0)], spec, on_failure="count", **kw), spec


def test_the_report_leads_with_the_failed_patients(counted_report):
    (report, results), _ = counted_report
    p = report.policies[0]
    assert p.failed is not None and p.failed.count == 1 and p.failed.n_patients == 6
    assert p.failed.indices == (BAD,) and p.failed.times == (45.0,) and p.failed.reasons == ("runaway state",)
    assert p.warnings[0].startswith("1 of 6 patients could not be simulated (first indices 2 at t=45 min")
    assert "counted as violating every bound" in p.warnings[0] and "PASS" in p.warnings[0]
    assert report.provenance.settings["on_failure"] == "count"
    # counted in the risk (the only violator), left out of time outside, depth and efficacy
    ev = patient_events(results[0], report.spec)
    assert ev.grid.sum(axis=0).tolist() == [1, 1] and ev.grid[BAD].all()
    assert p.joint.grid.value == pytest.approx(1 / 6) and p.per_bound[0].bridge.value == pytest.approx(1 / 6)
    assert p.severity[0].expected_time_outside.n == 5 and p.cost.expected_time_outside.n == 5
    assert p.efficacy["time_in_range"].n == 5
    # A PASS is still possible with the failed patient counted as a violation (epsilon 0.9).
    assert p.verdict.decision == "PASS" and p.verdict.estimate.upper >= 1 / 6
    for text in (render_markdown(report), render_html(report)):
        first = text.split("WARNING", 2)[1]  # the first warning of the rendered report
        assert "1 of 6 patients could not be simulated" in first
    data = json.loads(report.to_json())
    assert data["policies"][0]["failed"]["count"] == 1 and data["policies"][0]["failed"]["indices"] == [BAD]
    back = RiskReport.from_json(report.to_json())  # the typed record survives the report file
    assert back.policies[0].failed == p.failed and back.to_json() == report.to_json()


def test_the_cli_hands_on_failure_to_the_evaluation(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import medsim.cli  # noqa: F401  registers every command on the app
    import medsim.policies.evaluate as evaluate
    from medsim.cli.app import app

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stopped here")

    monkeypatch.setattr(evaluate, "evaluate_policies", fake)
    args = ["risk", "--prior", "pk_oral_1cmt", "--policy", "fixed", "--spec", "conc<=20; horizon=24h", "--n", "8"]
    args += ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--on-failure", "count"])
    assert "stopped here" in result.output and seen["on_failure"] == "count"
    result = CliRunner().invoke(app, [*args, "--on-failure", "skip"])
    assert result.exit_code != 0 and "--on-failure: expected stop or count" in result.output


def test_workers_count_failures_as_one_process_does():
    distributed = pytest.importorskip("distributed")
    from conftest import concentrated_draws

    from medsim.policies.distribute import shard_bounds

    spec = SafetySpec(bounds=BOUNDS, horizon=60.0, time_unit=GLUCOSE.time_unit, rare="off")
    pop = sample_population(concentrated_draws(GLUCOSE, spread=0.05), 10, seed=2, covariates={"BASAL": 1.2})
    pop = with_gut(pop, "gut1", 3e4, at=9)  # in the second shard: its index stays the population's
    kw = dict(n=10, seed=3, scenario="none", population=pop, loop="host", on_failure="count")
    one, _ = evaluate_policies(None, ["pid:every=15"], spec, **kw)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c,
        distributed.Client(c) as client,
    ):
        two, _ = evaluate_policies(None, ["pid:every=15"], spec, client=client, **kw)
    assert shard_bounds(10, 2) == [(0, 8), (8, 10)]
    assert one.policies[0].failed.indices == two.policies[0].failed.indices == (9,)
    a, b = (json.loads(r.to_json()) for r in (one, two))
    for r in (a, b):
        r["provenance"].pop("created")  # the wall-clock time the report was made
    assert a == b and a["provenance"]["settings"]["on_failure"] == "count"


def test_an_unusable_option_is_counted_as_the_host_loop_refuses_it(base):
    from medsim.policies.protocol import Option, PolicyError
    from medsim.policies.user_code import FunctionPolicy

    def basal(broken: bool):
        def act(obs, *, rng):
            bolus = np.zeros(obs.time.shape)
            if broken:  # patient BAD's third option is unusable
                bolus[(obs.patient == BAD) & (obs.index == 2)] = np.nan
            return Option(interval=15.0, bolus={1: bolus}, rate={1: np.full(obs.time.shape, 0.02)})

        return FunctionPolicy(act, "basal")

    run = dict(loop="host", n_paths_saved=0, **options(60.0))
    pop = with_gut(base, "gut1", 0.0, bad=False)
    with pytest.raises(PolicyError, match="--on-failure count"):
        rollout(GLUCOSE, pop, basal(True), **run)
    counted = rollout(GLUCOSE, pop, basal(True), on_failure="count", **run)
    reference = rollout(GLUCOSE, pop, basal(False), **run)
    assert counted.failed_time[BAD] == 30.0 and counted.failure_reason[BAD] == 4  # unusable option
    assert counted.failed.sum() == 1 and counted.mask[BAD].sum() == 2
    assert_others_equal(counted, reference)
