"""Is the fitted SVI guide as wide as its optimum? A stationarity test of its spread.

The ELBO checks (:mod:`medsim.inference.svi_diagnostics`) look at the objective over the run.
With a learning rate that decays over the run they are easily satisfied: late steps are small,
so the ELBO stops moving whether or not the guide has reached its optimum. The guide's spread is
what converges slowest, because it starts small and is learnt from noisy gradients. A guide that
is still too narrow understates every posterior interval. On simulated glucose cohorts, 1500
steps left the spread of ``C_I``, ``S_I`` and ``EGP`` 2-3x narrower than 6000 steps did, while the
ELBO checks passed (``docs/fitting.md``, "SBC of the SVI glucose fit").

This test looks at the fitted guide directly. Scale coordinate ``i`` of the guide's draws
``z = loc + L eps`` by ``exp(s_i)``. The derivative of the ELBO in ``s_i`` at ``s = 0`` is

    g_i = 1 + E[ d log p(z) / d z_i * (L eps)_i ]

(the 1 is the entropy's derivative). At an optimum of the guide family every ``g_i`` is 0. For a
Gaussian posterior with precision ``Lambda``, ``g_i = 1 - (Lambda Sigma_q)_ii``: in one dimension
``1 - r^2``, with ``r`` the guide's SD over the posterior's. So ``g_i > 0.36`` means coordinate
``i`` is more than 20 % too narrow (``r < 0.8``), and ``g_i < -0.56`` that it is more than 25 %
too wide (``r > 1.25``). ``g`` is estimated from :data:`PARTICLES` antithetic pairs of draws
``loc +- L eps`` (the pair cancels the gradient's noisiest term). A coordinate is flagged when
its estimate is both significantly away from 0 (:data:`Z_MIN` = 4 standard errors, a Bonferroni
bound for about 300 coordinates at a 1 % family-wise level) and past the threshold by
:data:`Z_MARGIN` = 2 standard errors.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PARTICLES = 128
"""Antithetic pairs of guide draws used to estimate each coordinate's spread gradient."""
TOO_NARROW = 0.36
"""``g_i`` above this: the guide's SD is below 0.8 of the optimum's (Gaussian posterior)."""
TOO_WIDE = -0.56
"""``g_i`` below this: the guide's SD is above 1.25 of the optimum's."""
Z_MIN = 4.0
"""Standard errors an estimate must lie away from 0 (the optimum) to be flagged: a Bonferroni
bound for about 300 coordinates at a 1 % family-wise level."""
Z_MARGIN = 2.0
"""Standard errors an estimate must also lie past :data:`TOO_NARROW` or :data:`TOO_WIDE`."""


def deviations(params: dict, eps: jax.Array) -> jax.Array:
    """The guide's draws minus its location, ``L eps``, for standard normal ``eps`` (..., D) (full-rank
    guide) or (..., rank + D) (low-rank guide: ``W eps_1 + scale * eps_2``)."""
    if "auto_scale_tril" in params:
        return eps @ params["auto_scale_tril"].T
    factor, scale = params["auto_cov_factor"], params["auto_scale"]
    rank = factor.shape[-1]
    return eps[..., :rank] @ factor.T + eps[..., rank:] * scale


def spread_gradients(potential: Any, unpack: Any, params: dict, key: jax.Array, particles: int = PARTICLES):
    """Mean and standard error of ``g_i`` per latent coordinate (module docstring).

    ``potential`` is the model's potential energy on its unconstrained sites (a dict, which
    ``unpack`` makes from a flat latent vector: the autoguide's ``_unpack_latent``); ``params``
    the fitted guide's constrained parameters (``auto_loc`` and ``auto_scale_tril``, or
    ``auto_cov_factor`` and ``auto_scale``). Each of ``particles`` draws is an antithetic pair
    ``loc +- L eps``: the term of the potential's gradient at ``loc``, whose product with
    ``L eps`` averages to 0 but is noisy, cancels exactly within a pair.
    """
    loc = params["auto_loc"]
    width = loc.shape[-1] + (params["auto_cov_factor"].shape[-1] if "auto_cov_factor" in params else 0)
    grad = jax.grad(lambda z: potential(unpack(z)))

    def one(eps):
        dev = deviations(params, eps)
        # g_i = 1 - E[dU/dz_i * dev_i], U = -log p, averaged over the pair +-dev
        return 1.0 - 0.5 * (grad(loc + dev) * dev - grad(loc - dev) * dev)

    eps = jax.random.normal(key, (particles, width), loc.dtype)
    values = np.asarray(jax.lax.map(one, eps, batch_size=min(8, particles)), float)
    return values.mean(axis=0), values.std(axis=0, ddof=1) / np.sqrt(particles)


def coordinate_names(guide: Any, site_names: dict[str, str]) -> list[str]:
    """Names of the guide's latent coordinates, ``site[j]`` for vector sites, in the guide's order.

    ``site_names`` maps the sampled sites to the names users know (e.g. the typical value's name).
    """
    size = int(guide._init_latent.shape[-1])
    unpacked = guide._unpack_latent(jnp.arange(size, dtype=jnp.float32))
    names = [""] * size
    for site, index in unpacked.items():
        label = site_names.get(site, site)
        flat = np.asarray(index).reshape(-1).astype(int)
        for j, i in enumerate(flat):
            names[i] = label if flat.size == 1 else f"{label}[{j}]"
    return names


def spread_record(mean: np.ndarray, se: np.ndarray, names: list[str]) -> dict:
    """What a posterior stores about the test: every coordinate's ``g`` and its standard error."""
    return {
        "names": list(names),
        "gradient": [round(float(v), 4) for v in mean],
        "se": [round(float(v), 4) for v in se],
        "particles": PARTICLES,
    }


def spread_problems(record: dict | None) -> tuple[list[str], list[str]]:
    """(checks, problems) of a stored spread test (see the module docstring)."""
    if not record:
        return ["guide spread: not tested (fit stored before the test existed)"], []
    g = np.asarray(record["gradient"], float)
    se = np.asarray(record["se"], float)
    names = list(record["names"])
    finite = np.isfinite(g) & np.isfinite(se)
    if not finite.all():
        bad = [names[i] for i in np.flatnonzero(~finite)[:5]]
        return [], [f"guide spread test not finite for {int((~finite).sum())} coordinates (e.g. {', '.join(bad)})"]
    significant = np.abs(g) > Z_MIN * se
    narrow = np.flatnonzero(significant & (g - Z_MARGIN * se > TOO_NARROW))
    wide = np.flatnonzero(significant & (g + Z_MARGIN * se < TOO_WIDE))
    checks = [
        f"guide spread: d ELBO / d log spread in [{g.min():+.2f}, {g.max():+.2f}] over {g.size} coordinates "
        f"({record.get('particles', PARTICLES)} draws; 0 at the optimum, > {TOO_NARROW} too narrow, "
        f"< {TOO_WIDE} too wide)"
    ]
    problems = []

    def listed(index: np.ndarray) -> str:
        worst = index[np.argsort(-np.abs(g[index]))][:4]
        return ", ".join(f"{names[i]} {g[i]:+.2f} +- {se[i]:.2f}" for i in worst)

    if narrow.size:
        problems.append(
            f"SVI guide too narrow in {narrow.size} of {g.size} coordinates ({listed(narrow)}; d ELBO / d log "
            f"spread, > {TOO_NARROW} is an SD below 0.8 of the optimum's): the optimiser stopped before the "
            "guide's spread converged and its intervals are too short; run more steps (--svi-steps)"
        )
    if wide.size:
        problems.append(
            f"SVI guide too wide in {wide.size} of {g.size} coordinates ({listed(wide)}; < {TOO_WIDE} is an SD "
            "above 1.25 of the optimum's): not converged; run more steps (--svi-steps)"
        )
    return checks, problems
