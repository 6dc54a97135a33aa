"""Fitting posteriors of physiology models to cohorts.

Owns the hierarchical model built from a :class:`~medsim.models.base.PhysiologyModel`
(:mod:`medsim.inference.priors`, :mod:`medsim.inference.hierarchical`), the SDE likelihood (continuous–discrete
extended Kalman filter, :mod:`medsim.inference.likelihood`), the samplers (:mod:`medsim.inference.backends`),
diagnostics, and posterior files (:class:`Posterior`). May import ``medsim`` (models, data types,
population draws), jax, numpyro and ArviZ; never ``policies``. Never prints and never changes
global JAX configuration.

Layers, lower first: ``likelihood`` → ``priors``/``problem`` → ``hierarchical`` → ``backends`` →
``assemble``/``diagnostics``/``posterior`` → ``fitting``.

The public names below are imported on first use, so ``import inference.<subpackage>`` does
not pull in numpyro and ArviZ.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Diagnostics": "medsim.inference.diagnostics",
    "diagnose": "medsim.inference.diagnostics",
    "FitConfigError": "medsim.inference.fitting",
    "fit": "medsim.inference.fitting",
    "fit_seeds": "medsim.inference.fit_tasks",
    "Timeline": "medsim.inference.likelihood",
    "TimelineError": "medsim.inference.likelihood",
    "build_timeline": "medsim.inference.likelihood",
    "cohort_loglik": "medsim.inference.likelihood",
    "Posterior": "medsim.inference.posterior",
    "PosteriorFormatError": "medsim.inference.posterior",
    "PriorSpec": "medsim.inference.priors",
    "SitePrior": "medsim.inference.priors",
    "build_priors": "medsim.inference.priors",
    "FitData": "medsim.inference.problem",
    "FitDataError": "medsim.inference.problem",
    "prepare": "medsim.inference.problem",
    "SviDivergedError": "medsim.inference.backends.numpyro_svi",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medsim.inference' has no attribute {name!r}")
