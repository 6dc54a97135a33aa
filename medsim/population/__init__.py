"""Virtual populations: patients drawn from a prior or a fitted posterior.

Owns the sampling of individual parameters, covariates and initial states for *personalized*
(digital twins of fitted subjects) and *population* (new subjects) virtual patients, their
netCDF files, and the per-patient counter-based random streams every rollout draws from. Every
sampler draws its individuals with :func:`draw_individuals` (random effects by
:func:`normal_effects`), so patient ``i`` does not depend on how many patients are drawn. May
import ``medsim.models`` and ``medsim.data``; never ``inference`` or ``policies``.
"""

from medsim.population.draws import PosteriorDraws
from medsim.population.individuals import Individuals, draw_individuals, normal_effects
from medsim.population.io import PopulationFormatError, load_population, save_population
from medsim.population.prior import prior_population
from medsim.population.sampling import default_patients_per_draw, sample_population
from medsim.population.streams import Stream, patient_keys, patient_named_normal, patient_normal, patient_uniform
from medsim.population.virtual import VirtualPopulation

__all__ = [
    "Individuals",
    "PopulationFormatError",
    "PosteriorDraws",
    "Stream",
    "VirtualPopulation",
    "default_patients_per_draw",
    "draw_individuals",
    "load_population",
    "normal_effects",
    "patient_keys",
    "patient_named_normal",
    "patient_normal",
    "patient_uniform",
    "prior_population",
    "sample_population",
    "save_population",
]
