"""Streamed evaluation: per-patient sums for every patient, every interaction for the first few.

A streamed report must say the same as the recorded one. With every patient recorded, the two
reports agree entry for entry; floats may differ in the last bits only, because the compiled loop
adds each patient's interval log-survivals and doses in float64 in another order than numpy's sums
over the recorded rows (relative tolerance 1e-12: a few ulps of sums over <= 24 intervals). With
fewer recorded patients, the sections a report takes from recorded patients equal those of the
recorded report of exactly those patients, and the rest equal the full recorded report.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

import medsim.models as registry
from medsim.policies.builtin import PID
from medsim.policies.evaluate import evaluate_policies
from medsim.policies.report.html import render_html
from medsim.policies.report.markdown import render_markdown
from medsim.policies.scenarios import MealScenario
from medsim.policies.spec import SafetySpec, TargetRange
from medsim.population import PosteriorDraws, sample_population
from medsim.simulate.budget import WorkLimitError
from medsim.simulate.types import Bound

GLUCOSE = registry.get("glucose_insulin")
SPEC = SafetySpec(
    bounds=(Bound("glucose_mg_dL", 70.0, "lower"), Bound("glucose_mg_dL", 180.0, "upper")),
    horizon=360.0,
    epsilon=0.2,
    delta=0.05,
    target=TargetRange("glucose_mg_dL", 70.0, 180.0),
)
N, FEW = 48, 12
POLICIES = (PID(every=15.0), PID(every=30.0))
# Sections a streamed report takes from its recorded patients (PolicyRisk fields).
FROM_RECORDED = ("curve", "curves_per_bound", "margins", "support", "glucose", "agp")
RTOL = 1e-12


@pytest.fixture(scope="module")
def setting():
    draws = PosteriorDraws.from_prior(GLUCOSE, 6, seed=0)
    pop = sample_population(draws, N, seed=1)
    kw = dict(seed=3, scenario=MealScenario(seed=3, cmt=GLUCOSE.meal_cmt), on_failure="count")
    return draws, pop, kw


def report_dict(report) -> dict:
    d = json.loads(report.to_json())
    d["provenance"].pop("created")  # wall-clock time
    d["provenance"]["settings"].pop("statistics")  # says how each was computed
    d["provenance"]["settings"].pop("loop")  # sums come from the compiled loop; 48 recorded patients run on the host
    for p in d["policies"]:
        p.pop("recorded_patients")
    return d


def assert_close(a, b, path=""):
    """Equal structures; floats equal to RTOL (module docstring)."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-300), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.fixture(scope="module")
def reports(setting):
    draws, pop, kw = setting
    rows, _ = evaluate_policies(draws, POLICIES, SPEC, n=N, population=pop, statistics="rows", **kw)
    every, _ = evaluate_policies(draws, POLICIES, SPEC, n=N, population=pop, statistics="stream", recorded=N, **kw)
    streamed = dict(n=N, population=pop, statistics="stream")
    few, results = evaluate_policies(draws, POLICIES, SPEC, recorded=FEW, **streamed, **kw)
    first = pop.take(np.arange(FEW))
    head, _ = evaluate_policies(draws, POLICIES, SPEC, n=FEW, population=first, statistics="rows", **kw)
    return rows, every, few, head, results


@pytest.mark.slow
def test_streamed_with_every_patient_recorded_is_the_recorded_report(reports):
    rows, every, *_ = reports
    assert [p.recorded_patients for p in every.policies] == [N, N]
    assert [p.recorded_patients for p in rows.policies] == [None, None]
    assert rows.provenance.settings["statistics"] == "pid:every=15: rows; pid:every=30: rows"
    assert every.provenance.settings["statistics"].startswith(f"pid:every=15: streamed; {N} of {N} patients recorded")
    a, b = report_dict(rows), report_dict(every)
    assert a["policies"][0]["per_bound"][0]["detected_true"] is not None  # known from the sums too
    assert_close(a, b)


@pytest.mark.slow
def test_streamed_sections_come_from_the_recorded_patients_and_the_rest_from_all(reports):
    rows, _, few, head, results = reports
    assert [p.recorded_patients for p in few.policies] == [FEW, FEW]
    assert [r.rows.n_patients for r in results] == [FEW, FEW] and [r.n_patients for r in results] == [N, N]
    full, part, first = report_dict(rows), report_dict(few), report_dict(head)
    assert_close(full["comparisons"], part["comparisons"])
    for p_full, p_part, p_first in zip(full["policies"], part["policies"], first["policies"], strict=True):
        for key in p_full:
            if key in FROM_RECORDED:
                assert_close(p_first[key], p_part[key], key)
            elif key != "warnings":
                assert_close(p_full[key], p_part[key], key)
        assert p_part["n_patients"] == N and p_first["n_patients"] == FEW
    # the curves really differ between 12 and 48 patients: the test can fail
    assert full["policies"][0]["curve"] != first["policies"][0]["curve"]


@pytest.mark.slow
def test_the_report_says_which_sections_come_from_recorded_patients(reports):
    few = reports[2]
    note = few.policies[0].recorded_note
    assert f"first {FEW} of {N} patients" in note
    md, html = render_markdown(few), render_html(few)
    assert note in md and note in html
    assert "first 48 of 48" not in render_markdown(reports[0])


def test_auto_streams_when_the_rows_would_not_fit(setting):
    draws, pop, kw = setting
    # rows: ~24 interactions x 48 patients x ~0.5 KB each; sums and the population need far less
    report, results = evaluate_policies(
        draws, POLICIES[:1], SPEC, n=N, population=pop, statistics="auto", recorded=FEW, max_memory=200_000, **kw
    )
    assert report.policies[0].recorded_patients == FEW and results[0].rows.n_patients == FEW
    with pytest.raises(WorkLimitError, match="memory"):
        evaluate_policies(draws, POLICIES[:1], SPEC, n=N, population=pop, statistics="rows", max_memory=200_000, **kw)


def test_auto_says_why_it_cannot_stream(setting):
    from medsim.policies.user_code import FunctionPolicy

    draws, pop, kw = setting

    def basal(obs, *, rng):
        from medsim.policies.protocol import Option

        return Option(interval=np.full(obs.time.shape, 30.0))

    python_policy = FunctionPolicy(basal, name="python-basal")
    with pytest.raises(WorkLimitError, match=r"not possible here: .*no array step"):
        evaluate_policies(draws, [python_policy], SPEC, n=N, population=pop, max_memory=200_000, **kw)
    window = replace(SPEC, monitor_from=60.0)
    with pytest.raises(ValueError, match="monitors from 60 min on, but streamed statistics cover the whole"):
        evaluate_policies(draws, POLICIES[:1], window, n=N, population=pop, statistics="stream", **kw)


def test_bad_statistics_are_refused_before_any_work(setting):
    draws, pop, kw = setting
    with pytest.raises(ValueError, match=r"statistics: expected one of \('auto', 'rows', 'stream'\), got 'sums'"):
        evaluate_policies(draws, POLICIES[:1], SPEC, n=N, population=pop, statistics="sums", **kw)
    with pytest.raises(ValueError, match="recorded: expected at least 1"):
        evaluate_policies(draws, POLICIES[:1], SPEC, n=N, population=pop, statistics="stream", recorded=0, **kw)


@pytest.mark.slow
def test_dask_workers_give_the_one_process_streamed_report(setting, reports):
    """Workers send back per-patient sums only; the report equals the one-process streamed report."""
    distributed = pytest.importorskip("distributed")
    draws, pop, kw = setting
    few = reports[2]
    specs = [p.name for p in POLICIES]
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c,
        distributed.Client(c) as client,
    ):
        two, results = evaluate_policies(
            draws, specs, SPEC, n=N, population=pop, statistics="stream", recorded=FEW, client=client, **kw
        )
        # auto decides for the whole population on the client: rows of 48 patients exceed 200 kB
        auto, _ = evaluate_policies(
            draws, specs[:1], SPEC, n=N, population=pop, recorded=FEW, client=client, max_memory=200_000, **kw
        )
    assert [r.rows.n_patients for r in results] == [FEW, FEW]
    a, b = json.loads(few.to_json()), json.loads(two.to_json())
    for r in (a, b):
        r["provenance"].pop("created")
    assert a == b
    assert auto.policies[0].recorded_patients == FEW
