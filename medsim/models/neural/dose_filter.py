"""Dose filters: how planned treatments enter the latent SDE.

Each dose compartment ``c`` drives one exponential filter (a dose compartment, like the depot
of a one-compartment oral PK model) with a trained time constant ``T_c``::

    d a_c / dt = -a_c / T_c + rate_c(t)        (a in the compartment's amount unit)

A bolus of amount ``A`` at time ``tau`` is a *jump map*: ``a_c += A`` at ``tau``. A zero-order
infusion adds its rate while it runs. The filter is linear, so it is integrated exactly (no
step-size error) and the drift of the latent SDE reads ``a / amount_scale`` as its treatment
input ``u(t)``. This keeps the networks' inputs bounded and smooth while boluses stay exact in
time and amount, and it is the mechanistic models' dosing contract (one target state per dose
compartment), so the trained model can also be stepped by the JAX simulator
(:mod:`medsim.models.neural.export`). The functions below take time constants of shape
``(D, J)`` with ``J = 1``.

Conventions (the same as the mechanistic simulator's): the filter value at ``t`` includes every
bolus with ``tau <= t``; a bolus exactly at the start of an ``advance`` interval acts at its start
and one exactly at its end belongs to the next interval.
"""

from __future__ import annotations

import torch


def filter_values(
    times: torch.Tensor,
    dose_time: torch.Tensor,
    dose_index: torch.Tensor,
    dose_amount: torch.Tensor,
    dose_rate: torch.Tensor,
    dose_mask: torch.Tensor,
    time_constants: torch.Tensor,
    *,
    inclusive: bool = True,
) -> torch.Tensor:
    """Filter values at ``times`` from a dose history, in closed form.

    Parameters
    ----------
    times : (B, T) tensor
        Evaluation times (model time unit).
    dose_time, dose_amount, dose_rate : (B, E) tensors
        Dose (start) times, amounts (compartment unit) and rates (0 = bolus, else amount per
        time unit).
    dose_index : (B, E) long tensor
        Position of each dose's compartment in the model's dose list.
    dose_mask : (B, E) bool tensor
        True for real doses.
    time_constants : (D, J) tensor
        Filter time constants per dose compartment (model time unit).
    inclusive : bool
        Whether a bolus exactly at ``t`` counts (right limit, True) or not (left limit).

    Returns
    -------
    (B, T, D * J) tensor
        Filter values in amount units.
    """
    n_doses, n_tau = time_constants.shape
    batch, n_times = times.shape
    if dose_time.shape[1] == 0 or n_doses == 0:
        return times.new_zeros(batch, n_times, n_doses * n_tau)
    tc = time_constants[dose_index]  # (B, E, J)
    lag = times[:, :, None] - dose_time[:, None, :]  # (B, T, E)
    started = lag >= 0 if inclusive else lag > 0
    started = started & dose_mask[:, None, :]
    lag = lag.clamp(min=0.0)[..., None]  # (B, T, E, 1)
    tc = tc[:, None]  # (B, 1, E, J)
    is_bolus = (dose_rate <= 0)[:, None, :, None]
    bolus = dose_amount[:, None, :, None] * torch.exp(-lag / tc)
    rate = torch.where(dose_rate > 0, dose_rate, torch.ones_like(dose_rate))
    duration = (dose_amount / rate)[:, None, :, None]
    # Infusion: integral of rate * exp(-(t - s)/T) over s in [tau, min(t, tau + duration)].
    since_end = (lag - duration).clamp(min=0.0)
    infusion = rate[:, None, :, None] * tc * (torch.exp(-since_end / tc) - torch.exp(-lag / tc))
    contribution = torch.where(is_bolus, bolus, infusion) * started[..., None]
    one_hot = torch.nn.functional.one_hot(dose_index, n_doses).to(times.dtype)  # (B, E, D)
    per_dose = torch.einsum("btej,bed->btdj", contribution, one_hot)
    return per_dose.reshape(batch, n_times, n_doses * n_tau)


def propagate(
    values: torch.Tensor,
    t_start: torch.Tensor,
    step: torch.Tensor,
    time_constants: torch.Tensor,
    *,
    bolus_time: torch.Tensor,
    bolus_index: torch.Tensor,
    bolus_amount: torch.Tensor,
    window_end: torch.Tensor,
    infusion_start: torch.Tensor,
    infusion_end: torch.Tensor,
    infusion_index: torch.Tensor,
    infusion_rate: torch.Tensor,
) -> torch.Tensor:
    """Exact filter update over one sub-step ``(t, t + h]``.

    Parameters
    ----------
    values : (B, D * J) tensor
        Filter values at ``t_start``.
    t_start, step : (B,) tensors
        Sub-step start and length ``h >= 0`` (``h = 0`` is a no-op).
    time_constants : (D, J) tensor
    bolus_time, bolus_amount : (B, E) tensors; bolus_index : (B, E) long
        Boluses (padding: amount 0). A bolus acts in this sub-step when
        ``t < tau <= t + h`` and ``tau < window_end``.
    window_end : (B,) tensor
        End of the ``advance`` interval (boluses at or after it belong to the next call).
    infusion_start, infusion_end, infusion_rate : (B, I) tensors; infusion_index : (B, I) long
        Infusions (including constant interval rates), active on ``[start, end)``; padding:
        rate 0.

    Returns
    -------
    (B, D * J) tensor
        Filter values at ``t_start + step``.
    """
    n_doses, n_tau = time_constants.shape
    batch = values.shape[0]
    t_end = t_start + step
    decay = torch.exp(-step[:, None, None] / time_constants[None])  # (B, D, J)
    out = values.reshape(batch, n_doses, n_tau) * decay
    if bolus_time.shape[1]:
        inside = (bolus_time > t_start[:, None]) & (bolus_time <= t_end[:, None]) & (bolus_time < window_end[:, None])
        lag = (t_end[:, None] - bolus_time).clamp(min=0.0)[..., None]  # (B, E, 1)
        tc = time_constants[bolus_index]  # (B, E, J)
        jump = bolus_amount[..., None] * torch.exp(-lag / tc) * inside[..., None]
        one_hot = torch.nn.functional.one_hot(bolus_index, n_doses).to(out.dtype)
        out = out + torch.einsum("bej,bed->bdj", jump, one_hot)
    if infusion_start.shape[1]:
        lo = torch.maximum(infusion_start, t_start[:, None])
        hi = torch.minimum(infusion_end, t_end[:, None])
        active = hi > lo
        tc = time_constants[infusion_index]  # (B, I, J)
        to_end = (t_end[:, None] - hi).clamp(min=0.0)[..., None]
        to_start = (t_end[:, None] - lo).clamp(min=0.0)[..., None]
        gain = infusion_rate[..., None] * tc * (torch.exp(-to_end / tc) - torch.exp(-to_start / tc))
        gain = gain * active[..., None]
        one_hot = torch.nn.functional.one_hot(infusion_index, n_doses).to(out.dtype)
        out = out + torch.einsum("bij,bid->bdj", gain, one_hot)
    return out.reshape(batch, n_doses * n_tau)
