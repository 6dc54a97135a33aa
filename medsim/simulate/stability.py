"""The largest stable step of an explicit scheme, from the drift's Jacobian, checked before simulating.

Euler–Maruyama and Milstein share the deterministic step ``x' = x + h f(x)``. Linearised around a
state, a mode with eigenvalue ``lambda`` of the Jacobian ``J = df/dx`` is multiplied by ``1 + h
lambda`` per step, which decays only while ``|1 + h lambda| < 1``, i.e. (for ``Re lambda < 0``)

    h < -2 Re(lambda) / |lambda|^2          (= 2 / k for a first-order rate k = -lambda)

(absolute stability of the explicit Euler method: Hairer & Wanner, *Solving ODEs II*, 1996,
sec. IV.2). Past it the state oscillates with growing amplitude and, in float32, ends as finite
nonsense or NaN. Modes with ``Re lambda >= 0`` (growth the model itself describes) set no limit.

States that cannot be negative (a declared physical range starting at 0: amounts,
concentrations) need more: the step multiplies such a state's own part by ``1 + h J_ii``, which
turns negative once ``h > 1 / |J_ii|`` (a depot emptied past zero and refilled with a negative
amount). For compartment models, whose Jacobian has nonnegative off-diagonal entries, ``h <= 1 /
|J_ii|`` for every such state is exactly the condition for the explicit step to keep them
nonnegative (Horváth, *Appl. Numer. Math.* 28:309, 1998). The limit reported is the smaller of
the two.
The Jacobian is taken with :func:`jax.jacfwd` at each patient's start state and parameters, so
the check knows nothing about any particular model: for linear kinetics (the PK models) it is
exact; for nonlinear ones it is the limit at the start state, and
:func:`medsim.simulate.checks.check_physical` catches a state that runs away later.

The exponential scheme integrates each state's own decay ``J_ii`` exactly; when the Jacobian is
triangular (up to the order of the states: first-order transfer chains such as depot -> central)
those diagonal entries are its eigenvalues and the scheme is stable at any step. That is when an
error suggests it. When it is not (feedback loops such as plasma <-> liver insulin next to a fast
absorption), its linearised step is ``x' = A x`` with ``A_ii = 1 + h phi1(a_i) J_ii`` and ``A_ij =
h J_ij E(a_i, a_j)`` (``a_i = h min(J_ii, 0)``; :mod:`medsim.simulate.schemes`), and
:func:`exponential_stable` checks that ``A``'s spectral radius is at most 1 at the requested step:
the fast decays are then exact and only the coupled modes limit the step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.simulate.checks import NonFiniteStateError, describe_patient, patient_params

# Schemes whose deterministic part is the explicit Euler step.
EXPLICIT = ("euler", "milstein")


class UnstableStepError(ValueError):
    """``dt`` is beyond the scheme's stability limit for some patient.

    Attributes
    ----------
    dt, max_stable_dt : float
        The step asked for and the largest stable one (model time unit).
    patient : int
        The patient that sets the limit.
    params : dict
        Its parameters.
    """

    def __init__(self, message: str, *, dt: float, max_stable_dt: float, patient: int, params: Mapping[str, float]):
        super().__init__(message)
        self.dt, self.max_stable_dt, self.patient, self.params = dt, max_stable_dt, patient, dict(params)


@dataclass(frozen=True)
class StepLimit:
    """The stability limit of an explicit step for a batch of patients.

    Attributes
    ----------
    max_dt : float
        Largest stable step over the batch (``inf`` when no mode decays).
    patient : int
        Index (or global index) of the patient with the smallest limit.
    reason : str
        What sets the limit for that patient (its rate and the criterion), for messages.
    triangular : bool
        Every patient's Jacobian has its diagonal as its eigenvalues (the exponential scheme is
        then stable at any step).
    params : dict
        The limiting patient's parameters.
    jacobians : (B, n, n) array, optional
        The drift's Jacobian of every patient at its start state (for :func:`exponential_stable`).
    """

    max_dt: float
    patient: int
    reason: str
    triangular: bool
    params: dict
    jacobians: np.ndarray | None = None


def jacobian_fn(model: PhysiologyModel) -> Callable:
    """A jitted ``(X (B, n), theta {name: (B,)}) -> J (B, n, n)``: the drift's Jacobian per patient.

    Inputs enter the drift additively (``rate``), so the Jacobian is taken without them.
    """
    names = model.state_names

    def drift(xv, th):
        out = model.drift(jnp.float32(0.0), {s: xv[i] for i, s in enumerate(names)}, th, {})
        return jnp.stack([jnp.asarray(out[s], xv.dtype) for s in names])

    return jax.jit(jax.vmap(jax.jacfwd(drift)))


def step_limit(
    model: PhysiologyModel,
    state: Mapping[str, object],
    params: Mapping[str, object],
    *,
    patients: Sequence[int] | np.ndarray | None = None,
    jacobian: Callable | None = None,
) -> StepLimit:
    """The largest stable explicit step for these patients at their state ``state`` (module docstring).

    Raises
    ------
    NonFiniteStateError
        When a patient's Jacobian is not finite (a non-finite or non-physical parameter), naming it.
    """
    names = model.state_names
    x = jnp.stack([jnp.asarray(state[s], jnp.float32) for s in names], axis=1)
    batch = x.shape[0]
    theta = {k: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (batch,)) for k, v in params.items()}
    jac = np.asarray((jacobian or jacobian_fn(model))(x, theta), np.float64)  # (B, n, n)
    finite = np.isfinite(jac).all(axis=(1, 2))
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        who = int(patients[i]) if patients is not None else i
        p = patient_params(params, i)
        raise NonFiniteStateError(
            f"patient {who}: the drift's Jacobian at the start state is not finite ({describe_patient(p)}); "
            "check that the parameters are finite and physical",
            patient=who,
            name="drift Jacobian",
            value=float("nan"),
            params=p,
        )
    lam = np.linalg.eigvals(jac)  # (B, n)
    re, mag2 = lam.real, np.abs(lam) ** 2
    stable = np.where(re < 0, -2.0 * re / np.where(mag2 > 0, mag2, 1.0), np.inf)  # per mode
    diag = np.diagonal(jac, axis1=1, axis2=2)  # (B, n)
    nonneg = np.array([s.physical_range[0] == 0 for s in model.states])
    positive = np.where(nonneg & (diag < 0), 1.0 / np.where(diag < 0, -diag, 1.0), np.inf)  # per state
    per_patient = np.minimum(stable.min(axis=1), positive.min(axis=1))
    i = int(np.argmin(per_patient))
    unit = model.time_unit
    if positive[i].min() <= stable[i].min():
        j = int(np.argmin(positive[i]))
        reason = (
            f"a first-order rate of {-diag[i, j]:.4g} /{unit} on {names[j]}, which an explicit step keeps "
            "nonnegative only while rate x dt <= 1"
        )
    else:
        mode = lam[i, int(np.argmin(stable[i]))]
        rate = f"a first-order rate of {-mode.real:.4g} /{unit}" if mode.imag == 0 else f"a mode {mode:.4g} /{unit}"
        reason = f"{rate} (drift Jacobian), which an explicit step follows stably only while rate x dt < 2"
    eig, sdiag = np.sort(lam.real, axis=1), np.sort(diag, axis=1)
    scale = np.maximum(np.abs(sdiag).max(axis=1, keepdims=True), 1e-30)
    triangular = bool(np.all(np.abs(lam.imag) <= 1e-6 * scale) and np.all(np.abs(eig - sdiag) <= 1e-6 * scale))
    who = int(patients[i]) if patients is not None else i
    return StepLimit(
        max_dt=float(per_patient[i]),
        patient=who,
        reason=reason,
        triangular=triangular,
        params=patient_params(params, i),
        jacobians=jac,
    )


def check_step(model: PhysiologyModel, scheme: str, dt: float, limit: StepLimit) -> None:
    """Raise :class:`UnstableStepError` when ``dt`` is at or beyond ``limit`` for an explicit scheme.

    The message gives the largest stable step and, when the Jacobian is triangular, suggests the
    exponential scheme. The exponential scheme itself is not limited here (module docstring).
    """
    if scheme not in EXPLICIT or dt <= limit.max_dt:
        return
    unit = model.time_unit
    advice = f"use dt <= {limit.max_dt:.4g} {unit}"
    if limit.triangular:
        advice += " or the exponential scheme, which integrates first-order decay exactly at any step"
    raise UnstableStepError(
        f"dt = {dt:g} {unit} is beyond the stability limit of the {scheme} scheme: patient {limit.patient} "
        f"({describe_patient(limit.params)}) has {limit.reason} (at its start state); the largest stable step "
        f"for these patients is {limit.max_dt:.4g} {unit}: {advice}",
        dt=dt,
        max_stable_dt=limit.max_dt,
        patient=limit.patient,
        params=limit.params,
    )


def exponential_stable(limit: StepLimit, dt: float) -> bool:
    """Whether the exponential scheme's linearised step at ``dt`` is stable for every patient (module docstring).

    True when the Jacobian is triangular; False when no Jacobians were kept.
    """
    if limit.triangular:
        return True
    if limit.jacobians is None:
        return False
    jac = np.asarray(limit.jacobians, np.float64)
    n = jac.shape[-1]
    a = dt * np.minimum(np.diagonal(jac, axis1=1, axis2=2), 0.0)  # (B, n)
    phi1 = np.where(a < 0, np.expm1(a) / np.where(a < 0, a, 1.0), 1.0)
    ai, aj = a[:, :, None], a[:, None, :]
    same = np.isclose(ai, aj, rtol=1e-9, atol=1e-12)
    e = np.where(same, np.exp(ai), (np.exp(ai) - np.exp(aj)) / np.where(same, 1.0, ai - aj))
    amp = dt * jac * e
    idx = np.arange(n)
    amp[:, idx, idx] = 1.0 + dt * phi1 * np.diagonal(jac, axis1=1, axis2=2)
    radius = np.abs(np.linalg.eigvals(amp)).max(axis=1)
    return bool(np.all(radius <= 1.0 + 1e-9))


def choose_scheme(model: PhysiologyModel, dt: float, limit: StepLimit, preferred: str = "milstein") -> str:
    """``preferred`` when ``dt`` is stable for it, else ``"exponential"`` where that is stable.

    Raises
    ------
    UnstableStepError
        When neither is stable at ``dt`` (the message is :func:`check_step`'s).
    """
    if dt <= limit.max_dt:
        return preferred
    if exponential_stable(limit, dt):
        return "exponential"
    check_step(model, preferred, dt, limit)
    return preferred
