"""The filtered state at the end of each subject's record: where a personalized forecast starts.

The extended Kalman filter of :mod:`medsim.inference.likelihood.ekf` walks a subject's record and, after
its last event, holds the mean and covariance of the state given every measurement: the
conditional distribution ``p(x(t_last) | y_1..y_n, theta)`` under the filter's Gaussian
approximation. A digital twin that is to forecast from "now" starts there, not from the model's
``initial_state`` at time 0 (the basal steady state), which forgets everything the measurements
said about where the patient is (a glucose excursion under way, insulin on board, a drifted
disturbance state).

:func:`cohort_filter` runs the filter once per subject (vmapped) and returns both the pointwise
log predictive densities (what :func:`~medsim.inference.likelihood.ekf.cohort_loglik` computes) and the
final state, so storing the state with a fit costs no second pass. It is not differentiated
(no ``custom_vjp``): it serves fit assembly and forecasts, not samplers. The matrix layout is
used whatever the timeline's layout (both give the same numbers to round-off).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from medsim.inference.likelihood.ekf import subject_theta
from medsim.inference.likelihood.ekf_matrix import matrix_loglik
from medsim.inference.likelihood.filtering import SLOT_FIELDS
from medsim.inference.likelihood.timeline import Timeline
from medsim.models.base import PhysiologyModel

Array = jax.Array


@dataclass(frozen=True)
class FilteredState:
    """Filtered state of ``S`` subjects after their last event (states in ``state_names`` order).

    Attributes
    ----------
    time : (..., S)
        Time of each subject's last event (model time unit): its last measurement, or a later
        dose or infusion end of the record.
    mean : (..., S, n)
        Filtered mean of every state.
    cov : (..., S, n, n)
        Filtered covariance (0 for states no process noise reaches, all 0 in the ODE limit).
    state_names : tuple of str
    """

    time: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    state_names: tuple[str, ...]


def cohort_filter(
    model: PhysiologyModel,
    timeline: Timeline,
    individual_params: Mapping[str, Array],
    noise: Mapping[str, Array] | None,
    residual: Mapping[str, Array],
) -> tuple[Array, tuple[Array, Array, Array]]:
    """Pointwise log-likelihood ``(S, N)`` and the final ``(time (S,), mean (S, n), cov (S, n, n))``.

    Arguments as for :func:`~medsim.inference.likelihood.ekf.cohort_loglik` (``noise=None`` is the ODE
    limit: the covariance stays 0). Traceable (jit, vmap over draws).
    """
    dtype = timeline.time.dtype
    covariance = noise is not None
    theta = subject_theta(model, timeline, individual_params, noise)
    n_subjects = timeline.time.shape[0]
    residual = {k: jnp.broadcast_to(jnp.asarray(v, dtype), (n_subjects,)) for k, v in residual.items()}
    slots = {k: jnp.asarray(getattr(timeline, k)) for k in SLOT_FIELDS if getattr(timeline, k) is not None}

    def one(theta_s, residual_s, slots_s):
        return matrix_loglik(model, timeline, theta_s, residual_s, slots_s, covariance=covariance, final=True)

    per_slot, last = jax.vmap(one)(theta, residual, slots)
    pointwise = per_slot[jnp.arange(n_subjects)[:, None], jnp.asarray(timeline.obs_slot)]
    return jnp.where(jnp.asarray(timeline.obs_mask), pointwise, 0.0), last


def filtered_state(
    model: PhysiologyModel,
    timeline: Timeline,
    individual_params: Mapping[str, Array],
    noise: Mapping[str, Array] | None,
    residual: Mapping[str, Array],
) -> FilteredState:
    """The :class:`FilteredState` of every subject of ``timeline`` under one set of parameters."""
    _, (time, mean, cov) = jax.jit(lambda *a: cohort_filter(model, *a))(timeline, individual_params, noise, residual)
    return FilteredState(np.asarray(time), np.asarray(mean), np.asarray(cov), tuple(model.state_names))
