"""SDE likelihoods: event timelines and the continuous–discrete extended Kalman filter.

``timeline`` turns padded cohort arrays into one rectangular event grid (numpy, once);
``ekf`` is the pure JAX filter that returns pointwise log predictive densities. Both depend on
``medsim.models`` only, so other backends (PyMC through a JAX op) can reuse them unchanged.
"""

from inference.likelihood.ekf import cohort_loglik, subject_loglik
from inference.likelihood.timeline import Timeline, TimelineError, build_timeline, default_max_substep

__all__ = ["Timeline", "TimelineError", "build_timeline", "cohort_loglik", "default_max_substep", "subject_loglik"]
