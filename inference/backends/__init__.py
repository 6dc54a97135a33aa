"""Samplers for the hierarchical model: numpyro NUTS and SVI, and PyMC's NUTS.

Each backend takes a :class:`~inference.problem.FitData` and returns a
:class:`~inference.backends.numpyro_nuts.SamplerOutput` (draws grouped by chain, sampler
statistics, wall time, settings). The PyMC backend (``pymc_backend``, imported on use) mirrors
the numpyro model on top of :func:`inference.likelihood.cohort_loglik` and
:mod:`inference.priors`.
"""

from inference.backends.numpyro_nuts import SamplerOutput, run_nuts
from inference.backends.numpyro_svi import run_svi
from inference.backends.progress import Progress, ProgressCounter

BACKENDS = {"numpyro": ("nuts", "svi"), "pymc": ("nuts",)}

__all__ = ["BACKENDS", "Progress", "ProgressCounter", "SamplerOutput", "run_nuts", "run_svi"]
