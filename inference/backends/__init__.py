"""Samplers for the hierarchical model: numpyro NUTS and SVI, and PyMC's NUTS.

Each backend takes a :class:`~medsim.inference.problem.FitData` and returns a
:class:`~medsim.inference.backends.numpyro_nuts.SamplerOutput` (draws grouped by chain, sampler
statistics, wall time, settings). The PyMC backend (``pymc_backend``, imported on use) mirrors
the numpyro model on top of :func:`medsim.inference.likelihood.cohort_loglik` and
:mod:`medsim.inference.priors`.
"""

from medsim.inference.backends.numpyro_nuts import SamplerOutput, run_nuts
from medsim.inference.backends.numpyro_svi import run_svi
from medsim.inference.backends.progress import Progress, ProgressCounter

BACKENDS = {"numpyro": ("nuts", "svi"), "pymc": ("nuts",)}

__all__ = ["BACKENDS", "Progress", "ProgressCounter", "SamplerOutput", "run_nuts", "run_svi"]
