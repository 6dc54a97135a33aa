"""``flip``: a stochastic policy that follows policy ``b`` with probability ``q`` and ``a`` otherwise.

Optimal policies under joint chance constraints may randomise between two actions (flipping-based
policies, arXiv 2410.06474); ``flip`` makes that available for any two policies. At every
interaction each patient flips its own coin: the uniform comes from the counter-based stream
``(seed, POLICY, patient, interaction)`` (:func:`medsim.population.patient_uniform`), so the
flips do not depend on how the population is chunked, and two ``flip`` policies with different
``q`` evaluated with the same seed use the same uniforms (a monotone coupling: every patient
that follows ``b`` under ``q`` also does under any larger ``q``).

Both component policies see every observation and keep their own state; each believes its own
option was applied.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from medsim.models.base import PhysiologyModel
from medsim.policies.protocol import Observation, Option, Policy, PolicyContext, for_model
from medsim.population.streams import Stream, patient_uniform


class FlipState(NamedTuple):
    """Memory of :class:`Flip`: both components' states, the seed of the coin flips and the last
    choices ``(n,)``."""

    a: Any
    b: Any
    seed: int
    key: Any  # (2,) uint32 key data of the (seed, POLICY) stream, for the array step
    chose_b: Any


@dataclass(frozen=True)
class Flip:
    """Randomise per patient and interaction between policies ``a`` and ``b``.

    Parameters
    ----------
    a, b : Policy
    q : float
        Probability of following ``b``, in [0, 1].
    """

    a: Policy
    b: Policy
    q: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.q <= 1.0:
            raise ValueError(f"flip: q must be in [0, 1], got {self.q}")

    def for_model(self, model: PhysiologyModel) -> Flip:
        """Both components with what they take from ``model`` (:func:`~medsim.policies.protocol.for_model`)."""
        a, b = for_model(self.a, model), for_model(self.b, model)
        return self if a is self.a and b is self.b else replace(self, a=a, b=b)

    @classmethod
    def from_spec(cls, raw: dict[str, str], context: PolicyContext) -> Flip:
        """``flip:q=0.3,a=fixed,a.dose=400,b=fixed,b.dose=600`` (component keys prefixed ``a.``/``b.``)."""
        from medsim.policies.loading import PolicySpecError, build_component, split_components

        own, parts = split_components(raw, ("a", "b"))
        unknown = [k for k in own if k not in ("q", "a", "b")]
        if unknown:
            raise PolicySpecError(
                f"policy 'flip': unknown parameter {unknown[0]!r}; valid parameters: q, a, b, a.*, b.*"
            )
        for side in ("a", "b"):
            if side not in own:
                raise PolicySpecError(f"policy 'flip' needs {side}=<policy> (e.g. {side}=fixed,{side}.dose=400)")
        try:
            q = float(own.get("q", 0.5))
        except ValueError:
            raise PolicySpecError(f"policy 'flip': parameter q={own['q']!r} is not a number") from None
        a = build_component(own["a"], parts["a"], context)
        b = build_component(own["b"], parts["b"], context)
        try:
            return cls(a=a, b=b, q=q)
        except ValueError as err:
            raise PolicySpecError(str(err)) from None

    @property
    def name(self) -> str:
        return f"flip:q={self.q:g},a=({self.a.name}),b=({self.b.name})"

    @property
    def array_capable(self) -> bool:
        """Both components have an array step (then so does ``flip``: the compiled loop runs it)."""
        from medsim.policies.device_loop import supports_device

        return supports_device(self.a) and supports_device(self.b)

    def init(self, n: int, *, seed: int) -> FlipState:
        """State: both components' states, the seed of the coin flips and the last choices."""
        import jax

        seeds = np.random.SeedSequence([int(seed), int(Stream.POLICY)]).generate_state(2)
        root = jax.random.fold_in(jax.random.key(int(seed) % 2**32), int(Stream.POLICY))
        return FlipState(
            a=self.a.init(n, seed=int(seeds[0])),
            b=self.b.init(n, seed=int(seeds[1])),
            seed=int(seed),
            key=np.asarray(jax.random.key_data(root)),
            chose_b=np.zeros(n, bool),
        )

    def prepare(self, state: FlipState, patient, covariates, subject) -> FlipState:
        """Both components' states prepared from the patients (components with a ``prepare``, such
        as ``safe_timing``; :func:`medsim.policies.array_step.prepare_state`)."""
        from medsim.policies.array_step import prepare_state

        a = prepare_state(self.a, state.a, patient, covariates, subject)
        b = prepare_state(self.b, state.b, patient, covariates, subject)
        return state._replace(a=a, b=b)

    def act(self, state: FlipState, obs: Observation, *, rng: np.random.Generator) -> tuple[FlipState, Option]:
        if self.array_capable:
            from medsim.policies.array_step import host_step

            return host_step(self, state, obs)
        state_a, opt_a = self.a.act(state.a, obs, rng=rng)
        state_b, opt_b = self.b.act(state.b, obs, rng=rng)
        u = patient_uniform(state.seed, Stream.POLICY, obs.patient, obs.index)[:, 0]
        return self._mix(state, state_a, opt_a, state_b, opt_b, u, np)

    def array_step(self, state: FlipState, obs: Observation, xp: Any) -> tuple[FlipState, Option]:
        """Both components' array steps and the per-patient coin (``xp`` is ``jax.numpy``: the
        uniform is drawn inside the trace from the same counter-based stream)."""
        import jax

        state_a, opt_a = self.a.array_step(state.a, obs, xp)
        state_b, opt_b = self.b.array_step(state.b, obs, xp)
        root = jax.random.wrap_key_data(xp.asarray(state.key, xp.uint32))
        patient, index = xp.asarray(obs.patient).astype(xp.uint32), xp.asarray(obs.index).astype(xp.uint32)
        keys = jax.vmap(lambda p, c: jax.random.fold_in(jax.random.fold_in(root, p), c))(patient, index)
        # as patient_uniform draws it: float32 on [1e-7, 1)
        draw = jax.vmap(lambda k: jax.random.uniform(k, (1,), xp.float32, minval=1e-7, maxval=1.0))
        u = draw(keys)[:, 0].astype(xp.float64)
        return self._mix(state, state_a, opt_a, state_b, opt_b, u, xp)

    def _mix(self, state, state_a, opt_a, state_b, opt_b, u, xp) -> tuple[FlipState, Option]:
        chose_b = u < self.q
        n = u.shape[0]

        def mix(x: dict, y: dict) -> dict:
            zero = xp.zeros(n)
            return {c: xp.where(chose_b, y.get(c, zero), x.get(c, zero)) for c in sorted({*x, *y})}

        measure_a = xp.ones(n, bool) if opt_a.measure_next is None else opt_a.measure_next
        measure_b = xp.ones(n, bool) if opt_b.measure_next is None else opt_b.measure_next
        option = Option(
            interval=xp.where(chose_b, opt_b.interval, opt_a.interval),
            bolus=mix(opt_a.bolus, opt_b.bolus),
            rate=mix(opt_a.rate, opt_b.rate),
            measure_next=xp.where(chose_b, measure_b, measure_a),
        )
        return FlipState(a=state_a, b=state_b, seed=state.seed, key=state.key, chose_b=chose_b), option
