"""Behaviour of the built-in policies on tiny batches (no simulation)."""

from __future__ import annotations

import numpy as np
import pytest

import medsim.models as registry
from medsim.policies.builtin import PID, TDM, BasalBolus, FixedDose, Flip
from medsim.policies.protocol import Option, PolicyError

GLUCOSE = registry.get("glucose_insulin")


def walk(make_obs, policy, until, measured=None, **obs_kwargs):
    """Interact with one patient at the times the policy asks for; returns (t, option) pairs."""
    state, t, out = policy.init(1, seed=0), 0.0, []
    while t < until:
        state, option = policy.act(state, make_obs(t, measured, **obs_kwargs), rng=np.random.default_rng(0))
        out.append((t, option))
        t = t + float(np.asarray(option.interval)[0])
    return out


def test_fixed_bolus_schedule_with_troughs(make_obs):
    steps = walk(make_obs, FixedDose(dose=400, every=12, n_doses=2), until=30)
    assert [t for t, _ in steps] == [0.0, 12.0]
    assert [float(o.bolus[1][0]) for _, o in steps] == [400.0, 400.0]
    assert np.isinf(steps[-1][1].interval[0])  # regimen over: nothing until the horizon
    assert bool(steps[0][1].measure_next[0])  # the next interaction (t=12) is a pre-dose trough


def test_fixed_infusion_stops_and_measures_on_its_own_schedule(make_obs):
    steps = walk(make_obs, FixedDose(dose=300, every=12, duration=2, measure_at=(1.0, 6.0)), until=24)
    times = [t for t, _ in steps]
    assert times == [0.0, 1.0, 2.0, 6.0, 12.0, 14.0]
    rates = [float(o.rate[1][0]) for _, o in steps]
    assert rates == [150.0, 150.0, 0.0, 0.0, 150.0, 0.0]  # 300 mg over 2 h, off after the infusion
    measure = [bool(o.measure_next[0]) for _, o in steps]
    # measurements at 1 and 6 only: the interaction before each of them asks for it
    assert measure == [True, False, True, False, False, False]


def test_fixed_rejects_bad_parameters():
    with pytest.raises(ValueError, match="duration"):
        FixedDose(every=12, duration=12)
    with pytest.raises(ValueError, match="every"):
        FixedDose(every=0)


def test_tdm_scales_the_dose_toward_the_target_trough(make_obs):
    tdm = TDM(target=10, dose=400, min_change=0.5, max_change=2.0, adjust_after=1)
    state = tdm.init(5, seed=0)
    state = state._replace(doses_given=np.ones(5, np.int64))
    troughs = [5.0, 8.0, 40.0, np.nan, -0.3]
    state, option = tdm.act(state, make_obs(np.zeros(5), {"conc": troughs}), rng=np.random.default_rng(0))
    # 10/5 = 2 -> x2; 10/8 -> x1.25; 10/40 = 0.25 clipped to 0.5; no trough -> unchanged;
    # a non-positive reading counts as far too low -> largest increase.
    np.testing.assert_allclose(option.bolus[1], [800.0, 500.0, 200.0, 400.0, 800.0])
    np.testing.assert_allclose(option.interval, 12.0)


def test_tdm_waits_for_steady_state_and_doses_only_when_due(make_obs):
    tdm = TDM(target=10, dose=400, adjust_after=3)
    state = tdm.init(1, seed=0)
    doses = []
    for t in (0.0, 12.0, 18.0, 24.0, 36.0):  # t=18 is an extra look (e.g. under safe_timing): no dose
        state, option = tdm.act(state, make_obs(t, {"conc": 5.0}), rng=np.random.default_rng(0))
        doses.append(float(option.bolus[1][0]))
    assert doses == [400.0, 400.0, 0.0, 400.0, 800.0]


def test_tdm_proportional_rule_hits_target_for_linear_pk(make_obs):
    # One-compartment IV bolus at steady state: trough = D / V * r / (1 - r), r = exp(-CL/V tau)
    # (Gibaldi & Perrier, Pharmacokinetics, ch. 3) is linear in D, so one proportional step lands
    # exactly on target when the change is within the clip range.
    cl, v, tau = 2.75, 31.9, 12.0
    r = np.exp(-cl / v * tau)

    def trough(dose):
        return dose / v * r / (1 - r)

    tdm = TDM(target=10.0, dose=400.0, every=tau, adjust_after=1, max_change=3.0)
    state = tdm.init(1, seed=0)._replace(doses_given=np.ones(1, np.int64))
    _, option = tdm.act(state, make_obs(0.0, {"conc": trough(400.0)}), rng=np.random.default_rng(0))
    assert trough(float(option.bolus[1][0])) == pytest.approx(10.0, rel=1e-12)


def test_basal_bolus_calculator(make_obs):
    bb = BasalBolus(target=120.0).for_model(GLUCOSE)  # measures the model's glucose_mg_dL
    basal_h = 1.2
    tdd = 24 * basal_h / 0.5  # 500/1800 rules with basal = half the daily dose
    cr, cf = 500 / tdd, 1800 / tdd
    state = bb.init(3, seed=0)
    obs = make_obs(
        [0.0, 0.0, 0.0],
        {"glucose_mg_dL": [120.0, 220.0, 120.0]},
        announced={2: [60.0, 60.0, 0.0]},
        covariates={"BASAL": basal_h},
        time_unit="min",
    )
    state, option = bb.act(state, obs, rng=np.random.default_rng(0))
    np.testing.assert_allclose(option.rate[1], basal_h / 60.0)  # U/h -> U/min
    np.testing.assert_allclose(option.bolus[1], [60 / cr, 60 / cr + 100 / cf, 0.0])
    # 30 min later, another meal: insulin on board (first-order decay, tau 90 min) is subtracted.
    obs2 = make_obs(
        [30.0] * 3, {"glucose_mg_dL": 200.0}, announced={2: 30.0}, covariates={"BASAL": basal_h}, time_unit="min"
    )
    _, option2 = bb.act(state, obs2, rng=np.random.default_rng(0))
    iob = option.bolus[1] * np.exp(-30 / 90)
    np.testing.assert_allclose(option2.bolus[1], np.maximum(30 / cr + 80 / cf - iob, 0.0))


def test_pid_cuts_insulin_on_low_glucose_and_raises_it_on_high(make_obs):
    pid = PID(target=120.0, kp=1 / 60).for_model(GLUCOSE)
    state = pid.init(3, seed=0)
    obs = make_obs(np.zeros(3), {"glucose_mg_dL": [60.0, 120.0, 180.0]}, covariates={"BASAL": 1.2}, time_unit="min")
    state, option = pid.act(state, obs, rng=np.random.default_rng(0))
    basal = 1.2 / 60
    # error -60, 0, +60 mg/dL with gain 1/60 per mg/dL of basal: suspend, basal, twice basal.
    np.testing.assert_allclose(option.rate[1], [0.0, basal, 2 * basal])
    # A falling reading 5 min later lowers the rate below the proportional-only value (derivative).
    obs2 = make_obs(
        np.full(3, 5.0), {"glucose_mg_dL": [55.0, 110.0, 170.0]}, covariates={"BASAL": 1.2}, time_unit="min"
    )
    _, option2 = pid.act(state, obs2, rng=np.random.default_rng(0))
    proportional = basal * np.clip(1 + (np.array([55.0, 110.0, 170.0]) - 120) / 60, 0, 5)
    assert option2.rate[1][0] == 0.0
    assert (option2.rate[1][1:] < proportional[1:]).all()


def test_pid_suspends_below_threshold_despite_windup(make_obs):
    pid = PID(target=120.0, kp=1 / 60, ti=450.0, td=0.0).for_model(GLUCOSE)
    state = pid.init(1, seed=0)
    for t in range(0, 600, 30):  # ten hours at 250 mg/dL wind the integral up to its clamp
        obs = make_obs([float(t)], {"glucose_mg_dL": [250.0]}, covariates={"BASAL": 1.2}, time_unit="min")
        state, high = pid.act(state, obs, rng=np.random.default_rng(0))
    assert state.integral[0] == pytest.approx(450.0 * 60.0)  # kp * I / ti = +1: the anti-windup clamp
    assert high.rate[1][0] == pytest.approx((1 + 130 / 60 + 1) * 1.2 / 60)  # basal + P + clamped I
    obs = make_obs([600.0], {"glucose_mg_dL": [65.0]}, covariates={"BASAL": 1.2}, time_unit="min")
    _, low = pid.act(state, obs, rng=np.random.default_rng(0))
    assert low.rate[1][0] == 0.0  # 1 - 55/60 + 1 > 0, but below 70 mg/dL the pump is suspended


def test_pid_holds_its_rate_without_a_measurement_and_sets_its_sampling(make_obs):
    cgm, fingerstick = PID(every=5.0).for_model(GLUCOSE), PID(every=180.0).for_model(GLUCOSE)
    obs = make_obs([0.0], {"glucose_mg_dL": [200.0]}, covariates={"BASAL": 1.0}, time_unit="min")
    state, first = cgm.act(cgm.init(1, seed=0), obs, rng=np.random.default_rng(0))
    blind = make_obs([5.0], {"glucose_mg_dL": [np.nan]}, covariates={"BASAL": 1.0}, time_unit="min")
    _, second = cgm.act(state, blind, rng=np.random.default_rng(0))
    assert second.rate[1][0] == first.rate[1][0]
    _, sparse = fingerstick.act(fingerstick.init(1, seed=0), obs, rng=np.random.default_rng(0))
    assert first.interval[0] == 5.0 and sparse.interval[0] == 180.0


def test_flip_follows_b_with_probability_q(make_obs):
    n, q = 20_000, 0.3
    flip = Flip(a=FixedDose(dose=100.0), b=FixedDose(dose=200.0), q=q)
    state = flip.init(n, seed=7)
    state, option = flip.act(state, make_obs(np.zeros(n)), rng=np.random.default_rng(0))
    share = np.mean(option.bolus[1] == 200.0)
    # Binomial(n, q) share: SE sqrt(q (1 - q) / n); 4 SE.
    assert abs(share - q) < 4 * np.sqrt(q * (1 - q) / n)
    # Fresh coins at the next interaction: the two choices are independent (correlation SE 1/sqrt(n)).
    _, option1 = flip.act(state, make_obs(np.zeros(n), index=1), rng=np.random.default_rng(0))
    corr = np.corrcoef(option.bolus[1] == 200.0, option1.bolus[1] == 200.0)[0, 1]
    assert abs(corr) < 4 / np.sqrt(n)
    # Monotone coupling: who follows b under q also does under a larger q (same seed).
    larger = Flip(a=flip.a, b=flip.b, q=0.6)
    _, option_l = larger.act(larger.init(n, seed=7), make_obs(np.zeros(n)), rng=np.random.default_rng(0))
    assert ((option.bolus[1] == 200.0) <= (option_l.bolus[1] == 200.0)).all()
    # Chunk invariance: a sub-batch of patients flips the same coins.
    sub = make_obs(np.zeros(5), patient=np.arange(100, 105))
    _, option_s = flip.act(flip.init(5, seed=7), sub, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(option_s.bolus[1], option.bolus[1][100:105])


def test_option_validation_names_the_problem():
    model = registry.get("pk_oral_1cmt")
    active = np.ones(2, bool)
    with pytest.raises(PolicyError, match=r"option.interval must be > 0; patient 1 got -1"):
        Option(interval=[1.0, -1.0]).validated(2, model, active, "p")
    with pytest.raises(PolicyError, match=r"compartment 7; model 'pk_oral_1cmt' doses into \[1, 2\]"):
        Option(interval=1.0, bolus={7: 1.0}).validated(2, model, active, "p")
    with pytest.raises(PolicyError, match=r"option.rate\[1\] must be finite and >= 0; patient 0 got nan"):
        Option(interval=1.0, rate={1: [np.nan, 1.0]}).validated(2, model, active, "p")
    with pytest.raises(PolicyError, match=r"shape \(3,\), expected \(2,\)"):
        Option(interval=np.ones(3)).validated(2, model, active, "p")
    # Inactive patients may return anything: their options are ignored.
    ok = Option(interval=[1.0, -1.0]).validated(2, model, np.array([True, False]), "p")
    assert ok.measure_next.all()
