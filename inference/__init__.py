"""Fitting posteriors of physiology models to cohorts.

Owns the hierarchical model built from a :class:`~medsim.models.base.PhysiologyModel`
(:mod:`inference.priors`, :mod:`inference.hierarchical`), the SDE likelihood (continuous–discrete
extended Kalman filter, :mod:`inference.likelihood`), the samplers (:mod:`inference.backends`),
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
    "Diagnostics": "inference.diagnostics",
    "diagnose": "inference.diagnostics",
    "FitConfigError": "inference.fitting",
    "fit": "inference.fitting",
    "Timeline": "inference.likelihood",
    "TimelineError": "inference.likelihood",
    "build_timeline": "inference.likelihood",
    "cohort_loglik": "inference.likelihood",
    "Posterior": "inference.posterior",
    "PosteriorFormatError": "inference.posterior",
    "PriorSpec": "inference.priors",
    "SitePrior": "inference.priors",
    "build_priors": "inference.priors",
    "FitData": "inference.problem",
    "FitDataError": "inference.problem",
    "prepare": "inference.problem",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'inference' has no attribute {name!r}")
