"""Forecasting windows, control paths and dose filters: shapes, irregular sampling, exactness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsim.models.neural.config import NeuralConfig, NeuralConfigError
from medsim.models.neural.dose_filter import filter_values, propagate
from medsim.models.neural.interpolation import ControlPath
from medsim.models.neural.windows import make_windows


def test_windows_follow_each_subjects_irregular_record(cohort, config):
    windows = make_windows(cohort.subjects, config)
    per_subject = np.bincount(windows.subject, minlength=cohort.n_subjects)
    for s, subject in enumerate(cohort.subjects):
        # one window per forecast origin with a target within the horizon
        origins = [0.0, *subject.obs_time[:-1]]
        expected = sum(np.any((subject.obs_time > t) & (subject.obs_time <= t + config.horizon)) for t in origins)
        assert per_subject[s] == expected
    for w in range(len(windows)):
        subject = cohort.subjects[windows.subject[w]]
        h = windows.n_history[w]
        mask = windows.target_mask[w]
        rel = windows.target_time[w][mask]
        assert np.all(np.diff(rel) >= 0) and np.all(rel >= 0) and np.all(rel <= config.horizon)
        # targets are exactly the observations after the history, in order
        np.testing.assert_allclose(windows.target_value[w][mask], subject.obs_value[h : h + mask.sum()])
        np.testing.assert_array_equal(windows.target_rank[w][mask], np.arange(1, mask.sum() + 1))
        # the count channel at the forecast origin has seen exactly the history
        count = windows.knot_value[w, windows.cut_index[w], 2]
        assert count == pytest.approx(np.log1p(h), abs=1e-6)
        # doses before the origin are negative relative times, and none lies beyond the window
        d = windows.dose_time[w][windows.dose_mask[w]]
        assert np.all(d <= config.horizon + 1e-9)
        assert np.sum(d < 0) == np.sum(subject.dose_time < windows.cut_time[w])
    # subjects have different record lengths: padding repeats the last knot
    lengths = windows.last_index + 1
    assert len(set(lengths)) > 1
    w = int(np.argmin(lengths))
    np.testing.assert_array_equal(
        windows.knot_value[w, lengths[w] :],
        np.broadcast_to(windows.knot_value[w, lengths[w] - 1], windows.knot_value[w, lengths[w] :].shape),
    )


def test_batch_trims_to_the_history(cohort, config):
    windows = make_windows(cohort.subjects, config)
    index = np.flatnonzero(windows.n_history == 2)[:3]
    full = windows.batch(index)
    history = windows.batch(index, history_only=True)
    assert history.knot_value.shape[1] == int(windows.cut_index[index].max()) + 1
    assert full.knot_value.shape[1] >= history.knot_value.shape[1]
    assert full.target_mask.shape == full.target_time.shape == full.target_value.shape


def test_unknown_compartment_names_the_subject(cohort, config):
    from medsim.data.cohort import Cohort

    bad = Cohort.from_arrays(["x"], [[1.0]], [[2.0]], 7, covariates={"WT": [70.0]})
    with pytest.raises(KeyError, match=r"subject 'x'.*CMT 7"):
        make_windows(bad.subjects, config)


def test_config_round_trips_and_rejects_bad_values(config):
    again = NeuralConfig.from_dict(config.to_dict())
    assert again == config
    with pytest.raises(NeuralConfigError, match="latent_dim"):
        NeuralConfig.from_dict({**config.to_dict(), "latent_dim": 0})
    with pytest.raises(NeuralConfigError, match="unexpected keys"):
        NeuralConfig.from_dict({**config.to_dict(), "colour": "red"})


@pytest.mark.parametrize("kind", ["linear", "hermite"])
def test_control_path_interpolates_the_knots(kind):
    gen = torch.Generator().manual_seed(0)
    times = torch.tensor([[0.0, 0.5, 0.5, 2.0, 3.5]])  # a repeated time: a zero-length segment
    values = torch.randn(1, 5, 3, generator=gen)
    path = ControlPath.build(times, values, kind)
    for k in range(path.n_segments):
        torch.testing.assert_close(path.evaluate(k, 0.0), values[:, k])
        torch.testing.assert_close(path.evaluate(k, 1.0), values[:, k + 1])
        # The derivative integrates to the increment (Simpson's rule is exact for the
        # quadratic derivative of a cubic segment).
        mid = path.derivative(k, 0.5)
        integral = (path.derivative(k, 0.0) + 4 * mid + path.derivative(k, 1.0)) / 6
        torch.testing.assert_close(integral, values[:, k + 1] - values[:, k], atol=1e-6, rtol=1e-5)
    if kind == "hermite":
        # C1 in time: the end slope of segment 2 equals the start slope of segment 3 (per unit time).
        end = path.derivative(2, 1.0) / (times[0, 3] - times[0, 2])
        start = path.derivative(3, 0.0) / (times[0, 4] - times[0, 3])
        torch.testing.assert_close(end, start)


def test_dose_filter_closed_form_matches_exact_stepping():
    # A bolus at 0.3 and an infusion over [1.0, 3.0) filtered with T = 1.7: stepping the exact
    # update over 37 sub-steps must reproduce the closed form (both are exact: float64 rounding).
    tc = torch.tensor([[1.7]], dtype=torch.float64)
    dose_time = torch.tensor([[0.3, 1.0]], dtype=torch.float64)
    amount = torch.tensor([[50.0, 20.0]], dtype=torch.float64)
    rate = torch.tensor([[0.0, 10.0]], dtype=torch.float64)
    index = torch.zeros(1, 2, dtype=torch.long)
    mask = torch.ones(1, 2, dtype=torch.bool)
    t_end = 4.0
    closed = filter_values(torch.tensor([[t_end]], dtype=torch.float64), dose_time, index, amount, rate, mask, tc)
    value = torch.zeros(1, 1, dtype=torch.float64)
    h = torch.tensor([t_end / 37], dtype=torch.float64)
    now = torch.zeros(1, dtype=torch.float64)
    for _ in range(37):
        value = propagate(
            value,
            now,
            h,
            tc,
            bolus_time=dose_time[:, :1],
            bolus_index=index[:, :1],
            bolus_amount=amount[:, :1],
            window_end=torch.tensor([t_end + 1.0], dtype=torch.float64),
            infusion_start=dose_time[:, 1:],
            infusion_end=torch.tensor([[3.0]], dtype=torch.float64),
            infusion_index=index[:, 1:],
            infusion_rate=rate[:, 1:],
        )
        now = now + h
    torch.testing.assert_close(value[0, 0], closed[0, 0, 0], rtol=1e-12, atol=1e-12)
    # and the closed form is the textbook one: A e^{-(t-tau)/T} + R T (e^{-(t-3)/T} - e^{-(t-1)/T})
    expected = 50 * np.exp(-(4.0 - 0.3) / 1.7) + 10 * 1.7 * (np.exp(-(4.0 - 3.0) / 1.7) - np.exp(-(4.0 - 1.0) / 1.7))
    assert float(closed[0, 0, 0]) == pytest.approx(expected, rel=1e-12)
