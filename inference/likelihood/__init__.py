"""SDE likelihoods: event timelines and the continuous–discrete extended Kalman filter.

``timeline`` turns padded cohort arrays into one rectangular event grid (numpy, once);
``ekf`` is the pure JAX filter that returns pointwise log predictive densities, with its
covariance written out entry by entry (few states) or, in ``ekf_matrix``, as an ``(n, n)`` array
(many states); ``filtering`` holds what the two layouts share. All of them depend on
``medsim.models`` only, so other backends (PyMC through a JAX op) can reuse them unchanged.
"""

from medsim.inference.likelihood.ekf import cohort_loglik, subject_loglik
from medsim.inference.likelihood.timeline import Timeline, TimelineError, build_timeline, default_max_substep

__all__ = ["Timeline", "TimelineError", "build_timeline", "cohort_loglik", "default_max_substep", "subject_loglik"]
