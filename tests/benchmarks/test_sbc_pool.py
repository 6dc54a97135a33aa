"""``benchmarks/sbc_pool.py``: summaries of the same SBC command with other seeds pool; others are refused."""

from __future__ import annotations

import json

import pytest

from benchmarks.sbc_pool import PoolError, _load, pool


def _summary(seed: int, counts: list[int], **settings) -> dict:
    n = sum(counts)
    site = {"rank_test": {"counts": counts}, "coverage_50": {"hits": n // 2}, "coverage_90": {"hits": n - 1}}
    recorded = {"model": "pk_oral_1cmt", "design": {"n_subjects": 3}, "method": "svi", "svi_steps": 300}
    recorded |= {"max_substep": None, "draws": 50, "process_noise": True, "seed": seed, "wall_time_s": 10.0}
    return {
        "n_cohorts": n,
        "n_rank_draws": 49,
        "heldout_coverage_90": {"hits": n, "n": n},
        "settings": recorded | settings,
        "sites": {"CL": site},
    }


def _write(tmp_path, *summaries) -> list:
    paths = []
    for i, summary in enumerate(summaries):
        path = tmp_path / f"sbc_{i}.json"
        path.write_text(json.dumps(summary))
        paths.append(path)
    return paths


def test_runs_of_one_command_pool_their_counts(tmp_path):
    old = _summary(1, [1, 0, 2, 0, 1])  # written before the start and step size were recorded
    new = _summary(2, [0, 1, 1, 1, 1], svi_start="prior", svi_learning_rate=0.01)
    result = pool(_load(_write(tmp_path, old, new)))
    assert result["n_cohorts"] == 8 and result["seeds"] == [1, 2]
    assert result["sites"]["CL"]["counts"] == [1, 1, 3, 1, 2]
    assert result["sites"]["CL"]["coverage_90"]["n"] == 8


@pytest.mark.parametrize(
    "other",
    [{"svi_start": "prior,ode"}, {"svi_learning_rate": 0.02}, {"svi_steps": 600}, {"process_noise": False}],
)
def test_runs_of_another_setting_are_refused_by_name(tmp_path, other):
    paths = _write(tmp_path, _summary(1, [1, 0, 2, 0, 1]), _summary(2, [0, 1, 1, 1, 1], **other))
    with pytest.raises(PoolError, match=f"{paths[1]}: settings .*{next(iter(other))}"):
        _load(paths)
