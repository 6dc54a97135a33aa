"""The ``t1d_ou`` model: equations against an independent ODE solve, steady state, OU statistics, EKF."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from medsim.inference.likelihood import build_timeline, cohort_loglik
from medsim.inference.likelihood.filtering import covariance_block
from medsim.models import get
from medsim.simulate import Bound, DoseEvents, Simulator, simulate_schedule
from medsim.synthetic import glucose_cohort

NOISE = ("sigma_glucose", "sigma_SI", "sigma_EGP", "sigma_CGM")


@pytest.fixture(scope="module")
def model():
    return get("t1d_ou")


def subject(model, **overrides):
    theta = model.individual_parameters(model.typical_parameters(), {}, {"BASAL": 1.0})
    return {k: jnp.asarray(v, jnp.float32) for k, v in {**theta, **overrides}.items()}


def floor(u):
    """The hepatic suppression's smooth floor at 0: ``0.05 ln(1 + exp(u / 0.05))``."""
    return 0.05 * np.logaddexp(0.0, u / 0.05)


def reference_rhs(theta, basal_u_per_min):
    """The module docstring's noise-free equations, written again in numpy (independent of the model's code)."""
    p = {k: float(v) for k, v in theta.items()}

    def rhs(t, y):
        gut1, gut2, isc, ip, act, g, si, egp, ig, err, ih, ih1 = y
        ra = 1000.0 * gut2 / (p["V_G"] * p["tau_m"])
        production = p["EGP"] * np.exp(egp) * floor(1.0 - p["S_H"] * (ih - 10.0))
        return [
            -gut1 / p["tau_m"],
            (gut1 - gut2) / p["tau_m"],
            -isc / p["tau_1"] + basal_u_per_min,
            (1e6 * isc / (p["tau_1"] * p["C_I"]) - ip) / p["tau_2"],
            p["p_2"] * (p["S_I"] * ip - act),
            -(p["GEZI"] + np.exp(si) * act) * g + production + ra,
            -si / p["T_SI"],
            -egp / p["T_EGP"],
            (g - ig) / p["tau_ig"],
            -err / p["T_CGM"],
            (ih1 - ih) / (p["tau_h"] / 2),
            (ip - ih1) / (p["tau_h"] / 2),
        ]

    return rhs


def test_noise_free_simulation_matches_an_independent_ode_solve(model):
    """Meal, bolus and basal with every disturbance displaced from 0; process noise off."""
    theta = subject(model, **{n: 0.0 for n in NOISE})
    x0 = model.initial_state(theta)
    x0 = {**x0, "si_log": jnp.float32(0.3), "egp_log": jnp.float32(-0.2), "cgm_error": jnp.float32(8.0)}
    x0 = {**x0, "gut1": jnp.float32(60.0), "insulin_sc": x0["insulin_sc"] + 6.0}  # meal and bolus at t = 0
    times = np.arange(0.0, 481.0, 30.0)
    y0 = [float(x0[s]) for s in model.state_names]
    ref = solve_ivp(reference_rhs(theta, 1.0 / 60.0), (0.0, times[-1]), y0, t_eval=times, rtol=1e-10, atol=1e-10)
    basal = DoseEvents.from_arrays(np.zeros((1, 1)), np.ones((1, 1)), np.full((1, 1), 10.0), np.full((1, 1), 1 / 60))
    errors = {}
    for dt in (1.0, 0.5):
        out = simulate_schedule(
            model,
            {k: v[None] for k, v in theta.items()},
            basal,
            times[None],
            key=jax.random.key(0),
            dt=dt,
            x0={k: v[None] for k, v in x0.items()},
            scheme="euler",
        )
        at = {name: i for i, name in enumerate(model.state_names)}
        plasma, cgm = ref.y[at["glucose"]], ref.y[at["glucose_ig"]] + ref.y[at["cgm_error"]]
        errors[dt] = max(
            np.abs(np.asarray(out["glucose_mg_dL"][0]) - plasma).max(),
            np.abs(np.asarray(out["cgm_mg_dL"][0]) - cgm).max(),
        )
    # the solve_ivp error (rtol 1e-10) is negligible; Euler is first order, so halving the step
    # halves the error (ratio 0.5 up to O(dt) terms and float32 round-off, ~1e-5 of 200 mg/dL)
    assert errors[1.0] < 1.0, errors  # mg/dL on excursions of ~100 mg/dL (measured: 0.35)
    assert 0.4 < errors[0.5] / errors[1.0] < 0.6, errors


def test_initial_state_is_a_fixed_point_with_disturbances_at_zero(model):
    theta = subject(model)
    x = model.initial_state(theta)
    dx = model.drift(0.0, x, theta, {"insulin_sc": theta["BASAL"] / 60.0})
    for name, value in dx.items():
        # float32 cancellation in terms of size ~|x|/tau: relative 1e-6 of the largest term
        assert abs(float(value)) < 1e-5 * (1.0 + abs(float(x[name]))), name
    for name in ("si_log", "egp_log", "cgm_error"):
        assert float(x[name]) == 0.0
    assert float(x["glucose_ig"]) == float(x["glucose"])
    y = model.observe(x, theta)
    assert float(y["cgm_mg_dL"]) == float(y["glucose_mg_dL"])
    # the interstitial glucose (a simulator's subcutaneous glucose) is observable, without error
    assert float(y["interstitial_mg_dL"]) == float(x["glucose_ig"])
    assert "interstitial_mg_dL" not in model.residual and "interstitial_mg_dL" not in model.obs_targets.values()


def test_zero_noise_plasma_glucose_is_glucose_insulin(model):
    """In the ODE limit without hepatic suppression plasma glucose is the parent model's."""
    parent = get("glucose_insulin")
    theta = subject(model, S_H=jnp.float32(0.0), **{n: 0.0 for n in NOISE})
    x = model.initial_state(theta)
    x = {**x, "gut1": jnp.float32(50.0), "insulin_sc": x["insulin_sc"] + 5.0, "glucose_ig": jnp.float32(150.0)}
    dx = model.drift(0.0, x, theta, {"insulin_sc": jnp.float32(0.02)})
    dx_parent = parent.drift(0.0, {k: x[k] for k in parent.state_names}, theta, {"insulin_sc": jnp.float32(0.02)})
    for name in parent.state_names:
        assert float(dx[name]) == pytest.approx(float(dx_parent[name]), rel=1e-6), name
    assert set(model.diffusion(0.0, x, theta)) == {"glucose", "si_log", "egp_log", "cgm_error"}


@pytest.mark.parametrize("d_insulin", [20.0, 60.0])
def test_insulin_suppresses_production_whatever_the_glucose(model, d_insulin):
    """Delayed insulin ``dI`` above the reference scales production by ``1 - S_H dI``, floored
    smoothly at 0 (UVA/Padova's linear ``kp3 Id``): the same at 50 mg/dL as at 200."""
    theta = subject(model, **{n: 0.0 for n in NOISE})
    x = model.initial_state(theta)
    egp, s_h = float(theta["EGP"]), float(theta["S_H"])
    for glucose in (50.0, 200.0):
        at = {**x, "glucose": jnp.float32(glucose), "insulin_h": jnp.float32(10.0)}
        raised = {**at, "insulin_h": jnp.float32(10.0 + d_insulin)}
        change = float(model.drift(0.0, raised, theta, {})["glucose"]) - float(
            model.drift(0.0, at, theta, {})["glucose"]
        )
        # at the reference the floor adds 0.05 ln(1 + exp(-20)) ~ 1e-10 to 1
        expected = egp * (floor(1.0 - s_h * d_insulin) - 1.0)
        assert change == pytest.approx(expected, rel=1e-4), glucose
    if d_insulin == 60.0:  # S_H dI = 1.6: production is off (within the floor's 0.05 exp(-12) = 3e-7)
        assert floor(1.0 - s_h * d_insulin) < 1e-6
    # at steady state the liver sees plasma insulin, and basal glucose includes the suppression
    assert float(x["insulin_h"]) == float(x["insulin_h1"]) == float(x["insulin_p"])
    production = egp * floor(1.0 - s_h * (float(x["insulin_p"]) - 10.0))
    assert float(x["glucose"]) == pytest.approx(production / (float(theta["GEZI"]) + float(x["action"])), rel=1e-5)


@pytest.mark.parametrize("s_h", [0.0, 0.027, 0.08])
def test_basal_titration_inverts_the_steady_state_with_hepatic_suppression(model, s_h):
    """The titrated rate gives the target fasting glucose, the suppression of production included."""
    theta = {k: np.asarray(v, np.float64) for k, v in subject(model, S_H=jnp.float32(s_h)).items()}
    for target in (80.0, 120.0, 200.0):
        rate = model.basal_for_fasting_glucose(theta, target)
        assert isinstance(rate, np.ndarray) and 0.2 < float(rate) < 4.0, (target, rate)
        fasting = float(model.fasting_glucose({**theta, "BASAL": np.asarray(rate)}))
        # bisection to 4e-12 U/h; the steady state in float32 (jax's default): relative ~1e-6
        assert fasting == pytest.approx(target, rel=1e-4), (s_h, target)
    # outside the pump range the rate is clipped: below the lowest fasting glucose any rate gives
    # (at 4 U/h), or above the highest (at 0.2 U/h)
    lowest = float(model.fasting_glucose({**theta, "BASAL": np.asarray(4.0)}))
    highest = float(model.fasting_glucose({**theta, "BASAL": np.asarray(0.2)}))
    assert float(model.basal_for_fasting_glucose(theta, 0.5 * lowest)) == pytest.approx(4.0)
    assert float(model.basal_for_fasting_glucose(theta, 2.0 * highest)) == pytest.approx(0.2)
    # jax arrays, traced under jit included, stay in jax
    traced = jax.jit(lambda th: model.basal_for_fasting_glucose(th, 120.0))(
        {k: jnp.asarray(v) for k, v in theta.items()}
    )
    assert float(traced) == pytest.approx(float(model.basal_for_fasting_glucose(theta, 120.0)), rel=1e-5)


@pytest.mark.parametrize("scheme", ["milstein", "euler", pytest.param("exponential", marks=pytest.mark.slow)])
def test_simulator_runs_with_each_scheme(model, scheme):
    n = 64
    theta = {k: jnp.broadcast_to(v, (n,)) for k, v in subject(model).items()}
    sim = Simulator(model, dt=2.0, bounds=(Bound("glucose_mg_dL", 70.0, "lower"),), scheme=scheme)
    meal = DoseEvents.from_arrays(np.full((n, 1), 10.0), np.full((n, 1), 2), np.full((n, 1), 60.0), np.zeros((n, 1)))
    out = sim.advance(
        model.initial_state(theta), theta, 0.0, 120.0, key=jax.random.key(1), events=meal, rates={1: 1 / 60}
    )
    for name in model.state_names:
        assert np.isfinite(np.asarray(out.state[name])).all(), name
    # the meal raised glucose (noise-free: +75 mg/dL at its 2-h peak); the disturbances spread the
    # rise (production's stationary SD is 0.2 on the log scale), so a few patients may rise little
    rise = np.asarray(out.state["glucose"]) - np.asarray(model.initial_state(theta)["glucose"])
    assert np.median(rise) > 40.0 and np.mean(rise > 0) > 0.9, np.sort(rise)


def test_ou_states_have_their_stationary_variance(model):
    """Variance of each OU state after 8 time constants against ``sigma^2 T / 2``.

    Euler–Maruyama turns ``dz = -z/T dt + s dW`` into ``z' = (1 - h/T) z + s sqrt(h) xi``, whose
    stationary variance is ``s^2 h / (1 - (1 - h/T)^2)`` (exact for the recursion; ``s^2 T / 2``
    up to a factor ``1 + h / (2T)``). With ``n`` patients the sample variance has relative
    standard error ``sqrt(2 / (n - 1))``; the test allows 4 of them (false alarm ~6e-5 per state).
    The patients have ``lability`` 1.5: the physiological scales are 1.5 times the population's,
    the sensor's is not.
    """
    n, h, lability = 4000, 2.0, 1.5
    theta = {k: jnp.broadcast_to(v, (n,)) for k, v in subject(model, lability=jnp.float32(lability)).items()}
    sim = Simulator(model, dt=h, bounds=(), scheme="euler")
    horizon = 8.0 * max(float(theta[t][0]) for t in ("T_SI", "T_EGP", "T_CGM"))
    out = sim.advance(model.initial_state(theta), theta, 0.0, horizon, key=jax.random.key(2), rates={1: 1 / 60})
    rse = np.sqrt(2.0 / (n - 1))
    for state, sigma, tau, scale in (
        ("si_log", "sigma_SI", "T_SI", lability),
        ("egp_log", "sigma_EGP", "T_EGP", lability),
        ("cgm_error", "sigma_CGM", "T_CGM", 1.0),
    ):
        s, t = scale * float(theta[sigma][0]), float(theta[tau][0])
        expected = s**2 * h / (1.0 - (1.0 - h / t) ** 2)
        z = np.asarray(out.state[state], np.float64)
        assert abs(z.var(ddof=1) / expected - 1.0) < 4 * rse, (state, z.var(ddof=1), expected)
        assert abs(z.mean()) < 4 * np.sqrt(expected / n), state
        # the continuous-time value the docstring states, to the scheme's O(h / T)
        assert float(model.stationary_sd(s, t)) ** 2 == pytest.approx(expected, rel=h / t)


@pytest.fixture(scope="module")
def tiny_cohort():
    """2 subjects, 12 h, a reading every hour (CMT 3: the CGM compartment of ``t1d_ou``)."""
    return glucose_cohort(2, 0.5, seed=3, obs_every=60.0).cohort.padded()


def test_noise_reachable_block_is_the_disturbances_glucose_and_sensor(model, tiny_cohort):
    timeline = build_timeline(model, tiny_cohort)
    block = {model.state_names[i] for i in covariance_block(model, timeline, "reachable")}
    # insulin and meal states are deterministic given the inputs; action too (the S_I disturbance
    # multiplies it where it acts on glucose)
    assert block == {"glucose", "si_log", "egp_log", "glucose_ig", "cgm_error"}


@pytest.mark.slow  # 20-50 s: compiling the gradient of a 5-state covariance block
def test_ekf_loglik_and_gradient_are_finite(model, tiny_cohort):
    timeline = build_timeline(model, tiny_cohort)
    theta = subject(model)
    noise = {n: theta[n] for n in NOISE}
    structural = {p.name: theta[p.name] for p in model.structural}

    def total(structural, noise):
        return jnp.sum(cohort_loglik(model, timeline, {**theta, **structural}, noise, {}))

    value, (g_struct, g_noise) = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(structural, noise)
    assert np.isfinite(float(value))
    for name, g in {**g_struct, **g_noise}.items():
        assert np.isfinite(np.asarray(g)).all(), name
    # the disturbances are informed by the readings: their scales get a non-zero gradient
    assert all(float(jnp.abs(g_noise[n])) > 0 for n in ("sigma_SI", "sigma_EGP", "sigma_CGM"))


def test_body_weight_scales_volume_and_clearance_allometrically(model):
    """Exponents 1 (volume) and 0.75 (clearance) on WT / 70 kg; the reference weight changes nothing."""
    typical = model.typical_parameters()
    plain = model.individual_parameters(typical, {}, {"BASAL": 1.0})
    at_reference = model.individual_parameters(typical, {}, {"BASAL": 1.0, "WT": 70.0})
    child = model.individual_parameters(typical, {}, {"BASAL": 1.0, "WT": 35.0})
    for name in plain:
        assert float(at_reference[name]) == pytest.approx(float(plain[name]), rel=1e-6), name
    assert float(child["V_G"]) == pytest.approx(0.5 * float(plain["V_G"]), rel=1e-6)
    assert float(child["C_I"]) == pytest.approx(0.5**0.75 * float(plain["C_I"]), rel=1e-6)
    unchanged = set(plain) - {"V_G", "C_I"}
    assert all(float(child[n]) == pytest.approx(float(plain[n]), rel=1e-6) for n in unchanged)
    # a smaller patient on the same basal rate: higher plasma insulin in proportion to 1 / C_I
    ss_plain = model.steady_state(plain, 1.0 / 60.0)
    ss_child = model.steady_state(child, 1.0 / 60.0)
    assert float(ss_child["insulin_p"]) == pytest.approx(float(ss_plain["insulin_p"]) * 2**0.75, rel=1e-5)


def test_a_cohort_without_body_weight_is_fitted_at_the_reference_and_says_so(model, tiny_cohort):
    from medsim.inference.problem import prepare

    data = prepare(tiny_cohort, model)
    assert data.assumed_covariates == ("WT",)
    np.testing.assert_array_equal(data.covariates["WT"], np.full(data.n_subjects, 70.0))
