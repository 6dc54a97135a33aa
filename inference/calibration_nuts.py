"""The NUTS fits of simulation-based calibration: every cohort x chain in one vmapped program.

:func:`medsim.inference.calibration.run_calibration` (``method="nuts"``) simulates cohorts of one
:class:`~medsim.inference.calibration.Design`, so every cohort shares the compiled likelihood and
only the observed values differ; numpyro's ``hmc`` kernel runs under ``jax.vmap`` over them.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from medsim.inference.hierarchical import hierarchical_model
from medsim.inference.problem import FitData


def vectorised_nuts(
    data: FitData,
    obs_slots: np.ndarray,
    *,
    key: jax.Array,
    chains: int,
    warmup: int,
    draws: int,
    target_accept: float,
    max_tree_depth: int,
    init_radius: float,
) -> tuple[dict, np.ndarray]:
    """NUTS on every cohort (C of them) x chain in one vmapped program.

    Returns constrained draws site -> (C, chains * draws, ...) (``eta_<p>`` included) and
    sampler statistics: divergent transitions per cohort (C,), the mean number of leapfrog steps
    per iteration and the mean over iterations of the batch's largest number (the cost).
    """
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import potential_energy

    def model(obs_value):
        timeline = dataclasses.replace(data.timeline, obs_value=obs_value)
        hierarchical_model(dataclasses.replace(data, timeline=timeline))

    n_cohorts = obs_slots.shape[0]
    batch = n_cohorts * chains
    k_init, k_run = jax.random.split(key)
    obs = jnp.asarray(np.repeat(obs_slots, chains, axis=0), data.timeline.time.dtype)
    priors = data.priors
    transforms = {s.site: biject_to(s.numpyro().support) for s in priors.sites}
    keys = jax.random.split(k_init, len(priors.sites) + 1)
    # Start like the numpyro backend: prior medians plus a uniform jitter on the unconstrained scale.
    init = {
        s.site: transforms[s.site].inv(jnp.asarray(s.median(), jnp.float32))
        + jax.random.uniform(k, (batch,), minval=-init_radius, maxval=init_radius)
        for s, k in zip(priors.sites, keys, strict=False)
    }
    for i, p in enumerate(priors.random_effects):
        init[f"eta_{p}_decentered"] = jax.random.uniform(
            jax.random.fold_in(keys[-1], i), (batch, data.n_subjects), minval=-init_radius, maxval=init_radius
        )

    def potential_fn_gen(y):  # the potential of one cohort's data, as numpyro's MCMC builds it
        return partial(potential_energy, model, (y,), {})

    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")

    def one_chain(rng, z0, y):
        state = init_kernel(
            z0, warmup, target_accept_prob=target_accept, max_tree_depth=max_tree_depth, model_args=(y,), rng_key=rng
        )

        def step(state, _):
            state = sample_kernel(state, model_args=(y,))
            return state, (state.z, state.diverging, state.num_steps)

        _, (z, diverging, steps) = jax.lax.scan(step, state, None, length=warmup + draws)
        return jax.tree.map(lambda a: a[warmup:], z), diverging[warmup:], steps

    z, diverging, steps = jax.jit(jax.vmap(one_chain))(jax.random.split(k_run, batch), init, obs)
    out = {}
    for name, value in z.items():
        value = transforms[name](value) if name in transforms else value
        value = np.asarray(value).reshape(n_cohorts, chains * draws, *np.shape(value)[2:])
        out[name] = value
    for p in priors.random_effects:
        out[f"eta_{p}"] = out[f"omega_{p}"][..., None] * out[f"eta_{p}_decentered"]
    steps = np.asarray(steps)  # (batch, iterations) leapfrog steps
    stats = {
        "divergences": np.asarray(diverging).reshape(n_cohorts, -1).sum(axis=1),
        "mean_steps": float(steps.mean()),
        # every iteration of the vmapped program costs the batch's longest trajectory
        "mean_batch_max_steps": float(steps.max(axis=0).mean()),
    }
    return out, stats
