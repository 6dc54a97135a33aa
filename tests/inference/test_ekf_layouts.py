"""The two storage layouts of the extended Kalman filter (float64 throughout).

* On the PK models (Theoph and pheno subsets, with process noise) the ``"matrix"`` layout must
  reproduce the ``"entries"`` layout to round-off, values and reverse-mode gradients: the two run
  the same arithmetic in a different order. Likewise the filter that stores only the
  noise-reachable block of the covariance (the default) and the one that stores all of it.
* On the 6-state glucose model (where only the matrix layout's gradient compiles in seconds):
  values equal to the entries layout, the ODE limit against an independent scipy solution, and
  gradients against central finite differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import medsim.data
from medsim.inference.likelihood import TimelineError, build_timeline, cohort_loglik, default_max_substep
from medsim.inference.likelihood.filtering import (
    GRADIENTS,
    MATRIX_FROM_STATES,
    covariance_block,
    filter_layout,
    resolve_gradient,
    resolve_layout,
)
from medsim.inference.likelihood.reachable import input_dependencies, noise_reachable_states
from medsim.inference.problem import prepare
from medsim.models import get
from medsim.synthetic import glucose_cohort


@pytest.fixture(scope="module", autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def loglik_and_gradient(model, timeline, layout, weights, covariance_states="reachable", gradient="auto"):
    """Jitted ``(theta, noise, residual) -> (pointwise loglik (S, N), gradient of sum(weights * loglik))``."""

    def pointwise(theta, noise, residual):
        return cohort_loglik(
            model,
            timeline,
            theta,
            noise,
            residual,
            layout=layout,
            covariance_states=covariance_states,
            gradient=gradient,
        )

    @jax.jit
    def run(theta, noise, residual):
        ll, vjp = jax.vjp(pointwise, theta, noise, residual)
        return ll, vjp(jnp.asarray(weights))

    return run


# ----------------------------------------------------------------------------- PK models

PK_CASES = {
    # Theoph: oral dose into the depot, additive error, 2 states
    "theoph": ("pk_oral_1cmt", ("1", "2", "3"), {"sigma_central": 0.1}, {"conc_add": 0.7}),
    # pheno: repeated IV boluses (dose jumps), proportional error, weight/Apgar covariates, 1 state
    "pheno": ("pk_iv_1cmt", ("1", "2", "3", "4"), {"sigma_central": 0.05}, {"conc_prop": 0.12}),
}


@pytest.mark.parametrize("case", sorted(PK_CASES))
def test_matrix_layout_equals_entries_layout_on_pk_models(case):
    model_name, ids, noise, residual = PK_CASES[case]
    model = get(model_name)
    data = prepare(medsim.data.load(case).subset(ids), model, dtype=np.float64)
    covariates = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    theta = model.individual_parameters(model.typical_parameters(), {}, covariates)
    # subjects away from the typical values, so that every subject's path differs
    theta = {k: v * np.linspace(0.8, 1.25, len(ids)) for k, v in theta.items()}
    theta.pop("sigma_central", None)
    weights = np.random.default_rng(0).standard_normal(data.obs_value.shape)  # exercises every observation
    ll_e, grad_e = loglik_and_gradient(model, data.timeline, "entries", weights, "all")(theta, noise, residual)
    assert np.isfinite(np.asarray(ll_e)).all() and float(np.sum(ll_e)) < 0
    for layout, states in (("entries", "reachable"), ("matrix", "reachable"), ("matrix", "all")):
        ll, grad = loglik_and_gradient(model, data.timeline, layout, weights, states)(theta, noise, residual)
        # Same operations in a different order (and, for the reachable block, without terms that
        # are exactly 0): float64 round-off (eps 2.2e-16) accumulated over a few hundred
        # sequential filter steps stays far below 1e-10 (measured: ~1e-14 on these subsets).
        np.testing.assert_allclose(np.asarray(ll), np.asarray(ll_e), rtol=1e-10, atol=1e-10)
        for got, want in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_e), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("layout", ["entries", "matrix"])
def test_forward_and_reverse_gradients_agree(layout):
    model_name, ids, noise, residual = PK_CASES["theoph"]
    model = get(model_name)
    data = prepare(medsim.data.load("theoph").subset(ids), model, dtype=np.float64)
    theta = model.individual_parameters(model.typical_parameters(), {}, {})
    theta = {k: v * np.linspace(0.8, 1.25, len(ids)) for k, v in theta.items() if k != "sigma_central"}
    weights = np.random.default_rng(2).standard_normal(data.obs_value.shape)
    runs = {g: loglik_and_gradient(model, data.timeline, layout, weights, gradient=g) for g in GRADIENTS}
    ll_f, grad_f = runs["forward"](theta, noise, residual)
    for g in ("reverse", "auto"):
        ll, grad = runs[g](theta, noise, residual)
        # the same filter differentiated two ways: float64 round-off only (measured ~1e-15)
        np.testing.assert_allclose(np.asarray(ll), np.asarray(ll_f), rtol=1e-12, atol=1e-12)
        for got, want in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_f), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-10)


def test_auto_gradient_is_reverse_in_the_matrix_layout_and_bad_modes_are_named():
    assert resolve_gradient("auto", "matrix") == "reverse" and resolve_gradient("auto", "entries") == "forward"
    assert resolve_gradient("forward", "matrix") == "forward" and resolve_gradient("reverse", "entries") == "reverse"
    with pytest.raises(ValueError, match=r"EKF gradient must be one of .*'sideways'"):
        resolve_gradient("sideways", "matrix")
    cohort = medsim.data.load("theoph").subset(("1",))
    with pytest.raises(TimelineError, match=r"EKF gradient must be one of .*'sideways'"):
        prepare(cohort, get("pk_oral_1cmt"), gradient="sideways")
    assert prepare(cohort, get("pk_oral_1cmt"), gradient="reverse").timeline.gradient == "reverse"


def test_noise_reachable_states_follow_the_couplings():
    # pk_oral_1cmt: noise on the central amount; the depot's drift reads only the depot
    assert noise_reachable_states(get("pk_oral_1cmt"), (1, 2)) == (1,)
    # glucose: insulin and meal states never read glucose, so only glucose carries variance
    glucose = get("glucose_insulin")
    assert noise_reachable_states(glucose, tuple(glucose.dose_targets)) == (glucose.state_names.index("glucose"),)
    # a dependency shows even where it is numerically 0 (a where-branch not taken at the probe)
    deps = input_dependencies(lambda a, b, c: [jnp.where(b > 1e9, c, 0.0) + a, b], 3)
    assert deps == [frozenset({0, 1, 2}), frozenset({1})]
    with pytest.raises(ValueError, match="covariance_states"):
        oral = get("pk_oral_1cmt")
        covariance_block(oral, build_timeline(oral, medsim.data.load("theoph").subset(("1",)).padded()), "some")


def test_auto_layout_follows_the_states_and_the_covariance_and_bad_layouts_are_named():
    assert resolve_layout("auto", 2) == "entries"
    assert resolve_layout("auto", MATRIX_FROM_STATES) == "matrix"
    assert resolve_layout("auto", 6, covariance=False) == "entries"  # the ODE limit
    assert resolve_layout("matrix", 1, covariance=False) == "matrix"  # an explicit choice stands
    oral = get("pk_oral_1cmt")
    padded = medsim.data.load("theoph").subset(("1",)).padded()
    assert build_timeline(oral, padded).layout == "auto"
    assert build_timeline(oral, padded, layout="matrix").layout == "matrix"
    # what counts is the stored covariance block, not the number of states
    sim = medsim.data.load("t1d_sim").subset(("adult#001",)).padded()
    glucose, ou = get("glucose_insulin"), get("t1d_ou")
    assert filter_layout(glucose, build_timeline(glucose, sim)) == "entries"  # block: glucose only
    assert filter_layout(glucose, build_timeline(glucose, sim), covariance_states="all") == "matrix"
    assert filter_layout(ou, build_timeline(ou, sim)) == "matrix"  # block of 5 states
    with pytest.raises(TimelineError, match=r"layout.*'dense'"):
        build_timeline(oral, padded, layout="dense")
    with pytest.raises(ValueError, match=r"layout.*'dense'"):
        cohort_loglik(oral, build_timeline(oral, padded), oral.typical_parameters(), None, {}, layout="dense")


# ----------------------------------------------------------------------------- glucose

GLUCOSE_RESIDUAL = {"glucose_mg_dL_add": 5.0, "glucose_mg_dL_prop": 0.05}
# the log-scale factors of these parameters are what the gradient test differentiates
GLUCOSE_PARAMS = ("tau_1", "tau_2", "C_I", "p_2", "S_I", "GEZI", "EGP", "V_G", "tau_m", "BASAL")


@pytest.fixture(scope="module")
def glucose():
    """3 subjects, one day, meals with boluses and a basal infusion, glucose every 3 h."""
    model = get("glucose_insulin")
    synthetic = glucose_cohort(3, 1.0, seed=4, obs_every=180.0)
    padded = synthetic.cohort.padded()
    # the step from the fastest rate (<= 2 min), not the model's declared 10 min: the ODE-limit
    # test below bounds the integrator's error at this step
    timeline = build_timeline(model, padded, dtype=np.float64, max_substep=default_max_substep(model))
    truth = {k: np.asarray(v, np.float64) for k, v in synthetic.truth.items() if k in GLUCOSE_PARAMS}
    weights = np.random.default_rng(1).standard_normal(padded.obs_value.shape)
    return {
        "model": model,
        "padded": padded,
        "timeline": timeline,
        "truth": truth,
        "weights": weights,
        "matrix": loglik_and_gradient(model, timeline, "matrix", weights),
    }


def scaled(truth, log_factors):
    """Subject parameters ``truth * exp(log_factor)``, one factor per parameter."""
    return {k: truth[k] * jnp.exp(log_factors[i]) for i, k in enumerate(GLUCOSE_PARAMS)}


@pytest.mark.slow  # the entries layout alone takes 10-20 s to compile at 6 states
def test_glucose_matrix_layout_equals_entries_layout(glucose):
    model, timeline = glucose["model"], glucose["timeline"]
    noise = {"sigma_glucose": 0.02}  # 5x the default, so that the covariance shapes every density
    ll_m, _ = glucose["matrix"](glucose["truth"], noise, GLUCOSE_RESIDUAL)
    # the entries layout's value (not its gradient, which takes minutes to compile at 6 states)
    entries = jax.jit(lambda th: cohort_loglik(model, timeline, th, noise, GLUCOSE_RESIDUAL, layout="entries"))
    ll_e = entries(glucose["truth"])
    assert np.isfinite(np.asarray(ll_m)).all()
    # round-off only, as on the PK models (measured: ~1e-13)
    np.testing.assert_allclose(np.asarray(ll_m), np.asarray(ll_e), rtol=1e-10, atol=1e-10)


def test_glucose_reachable_block_equals_the_full_covariance(glucose):
    model, timeline = glucose["model"], glucose["timeline"]
    noise = {"sigma_glucose": 0.02}
    ll_block, _ = glucose["matrix"](glucose["truth"], noise, GLUCOSE_RESIDUAL)  # default: 1 x 1 block
    full = jax.jit(
        lambda th: cohort_loglik(model, timeline, th, noise, GLUCOSE_RESIDUAL, layout="matrix", covariance_states="all")
    )
    # the 6 x 6 filter's extra entries stay exactly 0, so only round-off differs
    np.testing.assert_allclose(np.asarray(ll_block), np.asarray(full(glucose["truth"])), rtol=1e-10, atol=1e-10)


def ode_reference_loglik(model, padded, theta, residual) -> np.ndarray:
    """(S, N) ODE log-likelihood from scipy's DOP853 between events (independent of the filter).

    Same conventions as the timeline: boluses are jumps applied after any observation at the same
    time; infusion rates are constant on [start, start + amount / rate).
    """
    names = model.state_names
    drift = jax.jit(
        lambda t, x, th, rates: jnp.stack(
            [model.drift(t, dict(zip(names, x, strict=True)), th, rates)[s] for s in names]
        )
    )
    out = np.zeros(padded.obs_value.shape)
    for s in range(len(padded.ids)):
        th = {k: float(v[s]) for k, v in theta.items()}
        doses = [
            (padded.dose_time[s, d], padded.dose_cmt[s, d], padded.dose_amount[s, d], padded.dose_rate[s, d])
            for d in np.nonzero(padded.dose_mask[s])[0]
        ]
        infusions = [(t, t + a / r, model.dose_targets[c], r) for t, c, a, r in doses if r > 0]
        boluses = [(t, c, a) for t, c, a, r in doses if r == 0]
        obs = np.nonzero(padded.obs_mask[s])[0]
        stops = sorted(
            {
                0.0,
                *padded.obs_time[s, obs],
                *(b[0] for b in boluses),
                *(i[0] for i in infusions),
                *(i[1] for i in infusions),
            }
        )
        x = np.array([float(model.initial_state(th)[n]) for n in names])
        for t0, t1 in zip([0.0, *stops[:-1]], stops, strict=True):
            rates = {}
            for start, end, target, rate in infusions:
                if start <= t0 < end:
                    rates[target] = rates.get(target, 0.0) + rate
            if t1 > t0:
                sol = solve_ivp(
                    lambda t, y, th=th, rates=rates: np.asarray(drift(t, y, th, rates)),
                    (t0, t1),
                    x,
                    "DOP853",
                    rtol=1e-11,
                    atol=1e-9,
                )
                x = sol.y[:, -1]
            state = dict(zip(names, x, strict=True))
            for j in obs[padded.obs_time[s, obs] == t1]:
                observable = model.obs_targets[int(padded.obs_cmt[s, j])]
                h = float(model.observe(state, th)[observable])
                sd = float(
                    model.residual[observable].sd(
                        h, residual.get(f"{observable}_add"), residual.get(f"{observable}_prop")
                    )
                )
                out[s, j] = -0.5 * (np.log(2 * np.pi * sd**2) + (padded.obs_value[s, j] - h) ** 2 / sd**2)
            for time, cmt, amount in boluses:
                if time == t1:
                    state = {k: float(v) for k, v in model.dose(state, int(cmt), amount).items()}
            x = np.array([state[n] for n in names])
    return out


def test_glucose_zero_process_noise_is_the_ode_likelihood(glucose):
    ll, _ = glucose["matrix"](glucose["truth"], {"sigma_glucose": 0.0}, GLUCOSE_RESIDUAL)
    exact = ode_reference_loglik(glucose["model"], glucose["padded"], glucose["truth"], GLUCOSE_RESIDUAL)
    # With P = 0 only the integrator's error remains: Lawson-RK4 at the default step (<= 2 min)
    # differs from a 4x finer step by < 1e-6 nats per observation on this model (4th order;
    # docs/fitting.md), and DOP853 at rtol 1e-11 adds nothing visible, so 1e-5 bounds it.
    np.testing.assert_allclose(np.asarray(ll), exact, atol=1e-5)


def test_glucose_gradients_match_central_finite_differences(glucose):
    run, truth, weights = glucose["matrix"], glucose["truth"], glucose["weights"]

    def total(x):
        ll, _ = run(scaled(truth, x[:-3]), {"sigma_glucose": x[-3]}, dict(zip(GLUCOSE_RESIDUAL, x[-2:], strict=True)))
        return float(np.sum(weights * np.asarray(ll)))

    x0 = np.concatenate([np.zeros(len(GLUCOSE_PARAMS)), [0.01, 5.0, 0.05]])
    _, (g_theta, g_noise, g_residual) = run(
        truth, {"sigma_glucose": x0[-3]}, dict(zip(GLUCOSE_RESIDUAL, x0[-2:], strict=True))
    )
    # chain rule for theta = truth * exp(x): d/dx = truth * d/dtheta at x = 0
    grad = np.array(
        [float(np.sum(truth[k] * g_theta[k])) for k in GLUCOSE_PARAMS]
        + [float(g_noise["sigma_glucose"])]
        + [float(g_residual[k]) for k in GLUCOSE_RESIDUAL]
    )
    fd = np.zeros_like(x0)
    for i in range(len(x0)):
        h = 1e-5 * max(abs(x0[i]), 1.0) if i >= len(GLUCOSE_PARAMS) else 1e-5
        up, down = x0.copy(), x0.copy()
        up[i] += h
        down[i] -= h
        fd[i] = (total(up) - total(down)) / (2 * h)
    # central differences: truncation O(h^2 f''') ~ 1e-10 |f|, round-off ~ eps |f| / h ~ 1e-9
    # (|f| ~ 50 nats); rtol 1e-6 leaves a wide margin over both
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6)
