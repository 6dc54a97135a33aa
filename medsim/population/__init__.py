"""Virtual populations: patients drawn from a prior or a fitted posterior.

Owns the sampling of individual parameters, covariates and initial states for *personalized*
(digital twins of fitted subjects) and *population* (new subjects) virtual patients. May import
``medsim.models`` and ``medsim.data``; never ``inference`` or ``policies``.
"""

from medsim.population.draws import PosteriorDraws

__all__ = ["PosteriorDraws"]
