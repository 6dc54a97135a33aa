"""A torch reference stepper for the neural patient model, with the mechanistic ``advance`` contract.

medsim simulates neural patients through their JAX export in :class:`medsim.simulate.Simulator`;
this independent torch implementation lives with the tests to check that export against.

``NeuralSimulator(model, dt=, bounds=).advance(state, params, t0, t1, *, key, events, rates,
save_every)`` advances a batch of virtual patients through the *prior* latent SDE
``dz = f_p(z, u, e; delta) dt + g(z) dW`` by Euler-Maruyama sub-steps (the scheme the model was
trained with) and returns the end state and the same :class:`IntervalStats` as
:class:`medsim.simulate.Simulator`, with numpy arrays at the boundary, so the rollout and the
risk estimators consume either simulator unchanged.

Interval statistics are fused into the stepping loop. For a bound ``b`` on observable ``y`` the
Brownian-bridge crossing probability of a sub-step is evaluated on the decoder's link scale
``l`` (``log y`` for positive observables, ``y`` otherwise; see
:mod:`medsim.models.neural.decoder`)::

    p = exp(-2 (l_b - l_0)(l_b - l_1) / (s^2 h)),   s^2 = sum_i (dl/dz_i * g_i(z_0))^2

with ``l_0, l_1`` the link values at the sub-step ends, ``l_b`` the bound on that scale and
``s`` the latent diffusion pushed through the decoder at the sub-step start (Glasserman 2003,
*Monte Carlo Methods in Financial Engineering*, §6.4; the local linearisation is exact as the
sub-step shrinks). ``p = 1`` when an end point is outside. ``log(1 - p)`` is accumulated with a
floor of -100 (so ``1 - exp`` is exactly 1 in float64 when a grid point is outside).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import torch

from medsim.models.neural.dose_filter import propagate
from medsim.models.neural.model import NeuralPatientModel
from medsim.simulate.simulator import AdvanceResult
from medsim.simulate.types import Bound, DoseEvents, IntervalStats, SavedPath
from tests.neural.torch_stepping import StepPlan, brownian_normals, plan_steps

_LOG_SURVIVAL_FLOOR = -100.0


class NeuralSimulator:
    """Batched stepping of a trained :class:`NeuralPatientModel` (see the module docstring).

    Parameters
    ----------
    model : NeuralPatientModel
    dt : float
        Largest sub-step (model time unit). Use the training ``config.dt`` or smaller.
    bounds : sequence of Bound
        Monitored bounds on the model's observables (``K`` of them, in this order).
    chunk_size : int
        Patients stepped together (memory grows with it; results do not depend on it).

    Raises
    ------
    ValueError
        If a bound names an observable the model does not decode, or ``dt``/``chunk_size``
        are not positive.
    """

    scheme = "euler"

    def __init__(
        self, model: NeuralPatientModel, *, dt: float, bounds: Sequence[Bound] = (), chunk_size: int = 65536
    ) -> None:
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"NeuralSimulator: dt must be a positive number, got {dt}")
        if chunk_size < 1:
            raise ValueError(f"NeuralSimulator: chunk_size must be >= 1, got {chunk_size}")
        names = model.observable_names
        for b in bounds:
            if b.observable not in names:
                raise ValueError(f"bound {b.name!r}: neural model {model.config.name!r} decodes {list(names)} only")
        self.model = model.eval()
        self.dt = float(dt)
        self.bounds = tuple(bounds)
        self.chunk_size = int(chunk_size)
        self.device = next(model.parameters()).device
        positive = {o.name: o.positive for o in model.config.observables}
        self._bound_obs = [names.index(b.observable) for b in self.bounds]
        self._bound_link = []
        for b in self.bounds:
            if positive[b.observable]:
                self._bound_link.append(math.log(b.value) if b.value > 0 else -math.inf)
            else:
                self._bound_link.append(b.value)

    # ------------------------------------------------------------------ boundary checks
    def _collect(self, values: Mapping[str, np.ndarray], names: Sequence[str], what: str, batch: int | None):
        missing = [n for n in names if n not in values]
        if missing:
            raise KeyError(f"advance: {what} lacks {missing}; the neural model needs {list(names)}")
        arrays = [np.asarray(values[n], np.float32).reshape(-1) for n in names]
        if batch is None:
            batch = max([a.shape[0] for a in arrays], default=1)
        out = np.zeros((batch, len(names)), np.float32)
        for j, (n, a) in enumerate(zip(names, arrays, strict=True)):
            if a.shape[0] not in (1, batch):
                raise ValueError(f"advance: {what}[{n!r}] has {a.shape[0]} entries, expected {batch}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"advance: {what}[{n!r}] has non-finite values")
            out[:, j] = a
        return out, batch

    def advance(
        self,
        state: Mapping[str, np.ndarray],
        params: Mapping[str, np.ndarray],
        t0: np.ndarray | float,
        t1: np.ndarray | float,
        *,
        key: jax.Array,
        events: DoseEvents | None = None,
        rates: Mapping[int, np.ndarray] | None = None,
        save_every: int | None = None,
    ) -> AdvanceResult:
        """Advance every patient from ``t0`` to ``t1`` (see :class:`medsim.simulate.Simulator`).

        Parameters
        ----------
        state : mapping name -> (B,)
            ``latent_*`` and ``dose_cmt*`` values (``model.state_names``).
        params : mapping name -> (B,)
            ``embedding_*`` and ``weight_delta_*`` values (``model.parameter_names``); other
            entries are ignored.
        t0, t1 : (B,) or scalar
            Interval ends (model time unit, absolute), ``t1 >= t0``.
        key : jax PRNG key
            One key (patient ``b`` gets ``fold_in(key, b)``) or ``B`` keys.
        events : DoseEvents, optional
            Boluses in ``[t0, t1)`` act (one exactly at ``t0`` at the start); infusions act
            where they overlap the interval.
        rates : mapping CMT -> (B,), optional
            Constant extra input rates over the interval (amount per time unit).
        save_every : int, optional
            Save the observables every this many sub-steps (and at both ends).

        Returns
        -------
        AdvanceResult
        """
        model = self.model
        latent, batch = self._collect(state, model.latent_names, "state", None)
        filters, _ = self._collect(state, model.filter_names, "state", batch)
        embedding, _ = self._collect(params, model.embedding_names, "params", batch)
        delta, _ = self._collect(params, model.delta_names, "params", batch)
        plan = plan_steps(model.config, batch, t0, t1, dt=self.dt, events=events, rates=rates)
        noise = brownian_normals(key, batch, plan.max_steps, model.config.latent_dim)
        if save_every is not None and save_every < 1:
            raise ValueError(f"advance: save_every must be >= 1, got {save_every}")
        parts = []
        for start in range(0, batch, self.chunk_size):
            rows = slice(start, min(start + self.chunk_size, batch))
            parts.append(
                self._run(
                    latent[rows],
                    filters[rows],
                    embedding[rows],
                    delta[rows],
                    plan.take(rows),
                    noise[:, rows],
                    save_every,
                )
            )
        return _concatenate(parts, model, self.bounds, save_every is not None)

    # ------------------------------------------------------------------ the loop
    @torch.inference_mode()
    def _run(self, latent, filters, embedding, delta, plan: StepPlan, noise, save_every):
        model, dev = self.model, self.device
        dyn = model.dynamics

        def t(a, dtype=torch.float32):
            return torch.as_tensor(np.asarray(a), dtype=dtype, device=dev)

        z, a, e = t(latent), t(filters), t(embedding)
        perturbation = dyn.perturbation(t(delta))
        tc = model.filter_time_constants  # (D, 1)
        n_steps = t(plan.n_steps, torch.long)
        step64 = t(plan.step, torch.float64)
        step, sqrt_step = step64.float(), torch.sqrt(step64).float()
        now = t(plan.t0, torch.float64)
        bolus = dict(
            bolus_time=t(plan.bolus_time, torch.float64),
            bolus_index=t(plan.bolus_index, torch.long),
            bolus_amount=t(plan.bolus_amount),
        )
        # Boluses exactly at t0 act at the start (the mechanistic simulator's convention).
        at_start = (bolus["bolus_time"] == now[:, None]).float() * bolus["bolus_amount"]
        one_hot = torch.nn.functional.one_hot(bolus["bolus_index"], tc.shape[0]).float()
        a = a + torch.einsum("be,bed->bd", at_start, one_hot)
        if plan.needs_general:
            general = dict(
                window_end=t(plan.t1, torch.float64),
                infusion_start=t(plan.infusion_start, torch.float64),
                infusion_end=t(plan.infusion_end, torch.float64),
                infusion_index=t(plan.infusion_index, torch.long),
                infusion_rate=t(plan.infusion_rate),
                **bolus,
            )
            tc64 = tc.double()
        else:
            # Only infusions running through the whole interval: every sub-step has the same
            # closed-form update a <- a exp(-h/T) + R T (1 - exp(-h/T)).
            decay = torch.exp(-step64[:, None] / tc[:, 0].double()[None]).float()
            gain = t(plan.steady_rate) * tc[:, 0][None] * (1.0 - decay)
        link, jac = model.decoder.link_and_jacobian(z, e)
        y = model.decoder.natural(link)
        acc = _Accumulator(self.bounds, self._bound_obs, self._bound_link, y, link)
        saved_t, saved_y = [now.clone()], [y.clone()]
        xi = t(np.array(noise))
        for k in range(plan.max_steps):
            active = k < n_steps
            act = active[:, None]
            g = dyn.diffusion(z)
            drift = dyn.prior_drift_perturbed(z, model.inputs(a), e, perturbation)
            var_rate = torch.sum((jac * g[:, None, :]) ** 2, dim=-1)  # (B, n_obs) link variance per time
            z = torch.where(act, z + drift * step[:, None] + g * sqrt_step[:, None] * xi[k], z)
            if plan.needs_general:
                h = torch.where(active, step64, 0.0)
                a = propagate(a, now, h, tc64, **general).float()
            else:
                a = torch.where(act, a * decay + gain, a)
            now = torch.where(active, now + step64, now)
            link_next, jac = model.decoder.link_and_jacobian(z, e)
            y_next = model.decoder.natural(link_next)
            acc.step(link, link_next, y, y_next, var_rate, step, now, active)
            link, y = link_next, y_next
            if save_every is not None and ((k + 1) % save_every == 0 or k + 1 == plan.max_steps):
                saved_t.append(now.clone())
                saved_y.append(y.clone())
        end_state = torch.cat([z, a], dim=1).cpu().numpy()
        names = model.state_names
        state = {n: end_state[:, i].astype(np.float32) for i, n in enumerate(names)}
        path = None
        if save_every is not None:
            path = (torch.stack(saved_t, 1).cpu().numpy(), torch.stack(saved_y, 1).cpu().numpy())
        return state, acc.finish(y, model.observable_names), path


class _Accumulator:
    """Running interval statistics of one chunk (torch tensors, batch ``B``, ``K`` bounds)."""

    def __init__(self, bounds, bound_obs, bound_link, y0: torch.Tensor, link0: torch.Tensor) -> None:
        self.bounds, self.obs = bounds, bound_obs
        dev = y0.device
        self.upper = torch.tensor([b.side == "upper" for b in bounds], device=dev, dtype=torch.bool)
        self.value = torch.tensor([b.value for b in bounds], device=dev, dtype=torch.float32)
        self.link_bound = torch.tensor(bound_link, device=dev, dtype=torch.float32)
        batch, k = y0.shape[0], len(bounds)
        self.start = y0.clone()
        self.lo, self.hi = y0.clone(), y0.clone()
        self.log_survival = torch.zeros(batch, k, dtype=torch.float64, device=dev)
        self.grid = torch.zeros(batch, k, dtype=torch.bool, device=dev)
        self.time_outside = torch.zeros(batch, k, dtype=torch.float64, device=dev)
        self.first = torch.full((batch, k), math.inf, dtype=torch.float64, device=dev)
        self.depth = torch.zeros(batch, k, dtype=torch.float32, device=dev)

    def _outside(self, y: torch.Tensor) -> torch.Tensor:
        v = y[:, self.obs]
        return torch.where(self.upper, v > self.value, v < self.value)

    def _exceedance(self, y: torch.Tensor) -> torch.Tensor:
        v = y[:, self.obs]
        return torch.where(self.upper, v - self.value, self.value - v).clamp(min=0.0)

    def step(self, link0, link1, y0, y1, var_rate, h, t1, active) -> None:
        """Fold in one sub-step of length ``h`` (B,) for the ``active`` patients."""
        act = active[:, None]
        self.lo = torch.where(act, torch.minimum(self.lo, y1), self.lo)
        self.hi = torch.where(act, torch.maximum(self.hi, y1), self.hi)
        if not self.bounds:
            return
        out0, out1 = self._outside(y0), self._outside(y1)
        x0, x1 = link0[:, self.obs], link1[:, self.obs]
        s2h = (var_rate[:, self.obs] * h[:, None]).clamp(min=1e-30)
        b = self.link_bound
        p = torch.exp(-2.0 * (b - x0) * (b - x1) / s2h).clamp(max=1.0)
        p = torch.where(out0 | out1, 1.0, p)
        p = torch.where(act, p, 0.0)
        log_keep = torch.log1p(-p).clamp(min=_LOG_SURVIVAL_FLOOR)
        self.log_survival = (self.log_survival + log_keep.double()).clamp(min=_LOG_SURVIVAL_FLOOR)
        newly = out1 & act
        self.grid |= newly
        self.first = torch.where(newly & torch.isinf(self.first), t1[:, None].expand_as(self.first), self.first)
        outside_time = 0.5 * h[:, None] * (out0.float() + out1.float())
        self.time_outside += torch.where(act, outside_time, 0.0).double()
        self.depth = torch.where(act, torch.maximum(self.depth, self._exceedance(y1)), self.depth)

    def finish(self, y_end: torch.Tensor, names: Sequence[str]) -> IntervalStats:
        def per_obs(x: torch.Tensor) -> dict[str, np.ndarray]:
            arr = x.cpu().numpy()
            return {n: arr[:, j].astype(np.float32) for j, n in enumerate(names)}

        return IntervalStats(
            obs_start=per_obs(self.start),
            obs_end=per_obs(y_end),
            obs_min=per_obs(self.lo),
            obs_max=per_obs(self.hi),
            log_survival=self.log_survival.cpu().numpy(),
            grid_violation=self.grid.cpu().numpy(),
            end_violation=self._outside(y_end).cpu().numpy() if self.bounds else self.grid.cpu().numpy(),
            time_outside=self.time_outside.cpu().numpy(),
            first_outside=self.first.cpu().numpy(),
            depth=self.depth.cpu().numpy(),
        )


def _concatenate(parts, model: NeuralPatientModel, bounds, saved: bool) -> AdvanceResult:
    names = model.state_names
    state = {n: np.concatenate([p[0][n] for p in parts]) for n in names}
    stats = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *[p[1] for p in parts])
    path = None
    if saved:
        width = max(p[2][0].shape[1] for p in parts)

        def pad(x: np.ndarray) -> np.ndarray:
            return np.pad(x, ((0, 0), (0, width - x.shape[1])) + ((0, 0),) * (x.ndim - 2), mode="edge")

        times = np.concatenate([pad(p[2][0]) for p in parts])
        values = np.concatenate([pad(p[2][1]) for p in parts])
        path = SavedPath(time=times, values={n: values[:, :, j] for j, n in enumerate(model.observable_names)})
    return AdvanceResult(state=state, stats=stats, path=path)
