"""A linear SDE with additive noise and its exact Kalman filter (matrix exponential, Van Loan).

The model is a two-compartment oral PK system written as a PhysiologyModel::

    d gut     = (-ka gut + u_gut) dt + s_gut dW1                       (mg)
    d central = (ka gut - k central + u_central) dt + s_central dW2    (mg)
    conc      = central / V                                            (mg/L)

Between events the exact transition is ``m <- F m + c``, ``P <- F P F^T + Q`` with
``F = expm(A dt)``, ``c`` the integral of the constant input, and ``Q`` from Van Loan's block
matrix (Van Loan 1978, *IEEE Trans Autom Control* 23:395); the filter below implements that in
numpy/scipy, independently of the JAX filter under test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
from scipy.linalg import expm

from medsim.models.base import Observable, Parameter, PhysiologyModel, ResidualError, State


@dataclass(frozen=True)
class LinearOral(PhysiologyModel):
    """Linear two-state SDE with constant (additive) diffusion on both states."""

    name: str = "linear_oral_test"
    version: str = "1"
    states: tuple[State, ...] = (State("gut", "mg"), State("central", "mg"))
    parameters: tuple[Parameter, ...] = (
        Parameter("ka", "1/h", 1.2, bsv=0.3),
        Parameter("k", "1/h", 0.15, bsv=0.2),
        Parameter("V", "L", 20.0, bsv=0.1),
        Parameter("s_gut", "mg/sqrt(h)", 2.0, kind="process_noise", prior_sd=2.0),
        Parameter("s_central", "mg/sqrt(h)", 3.0, kind="process_noise", prior_sd=2.0),
    )
    observables: tuple[Observable, ...] = (Observable("conc", "mg/L"),)
    residual: dict = field(default_factory=lambda: {"conc": ResidualError("additive", add=0.3)})
    dose_targets: dict = field(default_factory=lambda: {1: "gut", 2: "central"})
    dose_scale: dict = field(default_factory=lambda: {1: 1.0, 2: 1.0})
    obs_targets: dict = field(default_factory=lambda: {2: "conc"})

    def initial_state(self, theta):
        zero = 0.0 * theta["V"]
        return {"gut": zero, "central": zero}

    def drift(self, t, x, theta, rate):
        return {
            "gut": -theta["ka"] * x["gut"] + rate.get("gut", 0.0),
            "central": theta["ka"] * x["gut"] - theta["k"] * x["central"] + rate.get("central", 0.0),
        }

    def diffusion(self, t, x, theta):
        return {"gut": theta["s_gut"] + 0.0 * x["gut"], "central": theta["s_central"] + 0.0 * x["central"]}

    def observe(self, x, theta):
        return {"conc": x["central"] / theta["V"]}


def exact_kalman_loglik(theta, residual_sd, obs_time, obs_value, doses):
    """Log predictive density of each observation, exactly (see :func:`exact_kalman_filter`)."""
    return exact_kalman_filter(theta, residual_sd, obs_time, obs_value, doses)[0]


def exact_kalman_filter(theta, residual_sd, obs_time, obs_value, doses):
    """Log predictive density of each observation, and the filtered mean and covariance after the
    last event (and its time), exactly.

    Parameters
    ----------
    theta : dict with ka, k, V, s_gut, s_central (floats)
    residual_sd : float
    obs_time, obs_value : (N,) arrays
    doses : list of (time, state index, amount, rate); rate > 0 is an infusion of amount/rate hours

    Same-time rule as the timeline: observations before doses.
    """
    a = np.array([[-theta["ka"], 0.0], [theta["ka"], -theta["k"]]])
    g = np.diag([theta["s_gut"], theta["s_central"]])
    h = np.array([0.0, 1.0 / theta["V"]])
    events = [(t, 0, i) for i, t in enumerate(obs_time)]
    infusions = []
    for i, (t, state, amount, rate) in enumerate(doses):
        events.append((t, 2, i))
        if rate > 0:
            infusions.append((t, t + amount / rate, state, rate))
    events.sort(key=lambda e: (e[0], e[1]))
    breakpoints = sorted({t for t, *_ in events} | {end for _, end, _, _ in infusions})
    m, p, t_now = np.zeros(2), np.zeros((2, 2)), 0.0
    out = np.zeros(len(obs_time))

    def propagate(m, p, t0, t1):
        # Piecewise-constant input between breakpoints; exact affine + Van Loan transition.
        cuts = [t0, *[b for b in breakpoints if t0 < b < t1], t1]
        for s0, s1 in pairwise(cuts):
            dt = s1 - s0
            if dt <= 0:
                continue
            u = np.zeros(2)
            for start, end, state, rate in infusions:
                if start <= s0 and end >= s1:
                    u[state] += rate
            aug = np.zeros((3, 3))
            aug[:2, :2], aug[:2, 2] = a, u
            e = expm(aug * dt)
            m = e[:2, :2] @ m + e[:2, 2]
            vl = np.zeros((4, 4))
            vl[:2, :2], vl[:2, 2:], vl[2:, 2:] = -a, g @ g.T, a.T
            ev = expm(vl * dt)
            f = ev[2:, 2:].T
            p = f @ p @ f.T + f @ ev[:2, 2:]
        return m, 0.5 * (p + p.T)

    for t, kind, i in events:
        m, p = propagate(m, p, t_now, t)
        t_now = t
        if kind == 0:
            s = h @ p @ h + residual_sd**2
            r = obs_value[i] - h @ m
            out[i] = -0.5 * (np.log(2 * np.pi * s) + r * r / s)
            gain = p @ h / s
            m = m + gain * r
            p = p - np.outer(gain, gain) * s
        else:
            _, state, amount, rate = doses[i]
            if rate == 0:
                m = m.copy()
                m[state] += amount
    last = max(breakpoints)
    m, p = propagate(m, p, t_now, last)  # an infusion may end after the last observation or dose
    return out, m, p, last
