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

from dataclasses import dataclass
from typing import Any

import numpy as np
from medsim.policies.protocol import Observation, Option, Policy, PolicyContext

from medsim.population.streams import Stream, patient_uniform


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

    def init(self, n: int, *, seed: int) -> dict[str, Any]:
        """State: both components' states, the seed of the coin flips and the last choices."""
        seeds = np.random.SeedSequence([int(seed), int(Stream.POLICY)]).generate_state(2)
        return {
            "a": self.a.init(n, seed=int(seeds[0])),
            "b": self.b.init(n, seed=int(seeds[1])),
            "seed": int(seed),
            "chose_b": np.zeros(n, bool),
        }

    def act(self, state: dict[str, Any], obs: Observation, *, rng: np.random.Generator):
        state_a, opt_a = self.a.act(state["a"], obs, rng=rng)
        state_b, opt_b = self.b.act(state["b"], obs, rng=rng)
        u = patient_uniform(state["seed"], Stream.POLICY, obs.patient, obs.index)[:, 0]
        chose_b = u < self.q
        n = obs.n

        def mix(x: dict, y: dict) -> dict[int, np.ndarray]:
            zero = np.zeros(n)
            return {c: np.where(chose_b, y.get(c, zero), x.get(c, zero)) for c in sorted({*x, *y})}

        measure_a = np.ones(n, bool) if opt_a.measure_next is None else opt_a.measure_next
        measure_b = np.ones(n, bool) if opt_b.measure_next is None else opt_b.measure_next
        option = Option(
            interval=np.where(chose_b, opt_b.interval, opt_a.interval),
            bolus=mix(opt_a.bolus, opt_b.bolus),
            rate=mix(opt_a.rate, opt_b.rate),
            measure_next=np.where(chose_b, measure_b, measure_a),
        )
        return {"a": state_a, "b": state_b, "seed": state["seed"], "chose_b": chose_b}, option
