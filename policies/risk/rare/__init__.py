"""Rare-event estimators: violation probabilities far below what plain Monte Carlo can see.

Owns estimators of ``p = E[q(X)]``, the bridge-corrected probability that a path leaves the safe
set, for probabilities down to 1e-8, all generic over a :class:`PathProblem` (a pure JAX function
from a batch of standard-normal increments to per-step scores and the path's crossing
probability):

* adaptive multilevel splitting (:mod:`.ams`; Cérou & Guyader 2007, Bréhier et al.
  2016): kill-and-clone in the space of increments, unbiased;
* subset simulation (:mod:`.subset`; Au & Beck 2001) with preconditioned Crank–Nicolson moves;
* importance sampling by a change of drift (:mod:`.importance`; Girsanov weights, a
  cross-entropy-fitted constant or linear control);
* the reference problems with exact answers they are validated on (:mod:`.references`), and the
  closed-loop glucose problem (:mod:`.closed_loop`).

Every estimator returns a frozen :class:`RareEstimate` around the package's
:class:`~medsim.policies.risk.estimate.Estimate`; :func:`rare_epistemic` runs one per posterior draw.
Pure JAX/numpy; may import ``medsim``, the rest of ``medsim.policies.risk``, ``medsim.policies.protocol`` and
(for the closed loop only) the option loop's modules (``medsim.policies.rollout``, ``rollout_setup``,
``rollout_device``, ``device_loop``, ``device_program``, ``device_interval``, ``array_step``, ``noise_index``); never
rendering code.
"""

from medsim.policies.risk.rare.ams import AMSFailure, PathFailure, ams
from medsim.policies.risk.rare.closed_loop import closed_loop_problem
from medsim.policies.risk.rare.epistemic import RareEpistemic, rare_epistemic
from medsim.policies.risk.rare.importance import importance_sampling
from medsim.policies.risk.rare.problem import PathProblem, path_crossing_probability
from medsim.policies.risk.rare.result import RareEstimate, RareRisk
from medsim.policies.risk.rare.subset import SubsetFailure, subset_simulation

__all__ = [
    "AMSFailure",
    "PathFailure",
    "PathProblem",
    "RareEpistemic",
    "RareEstimate",
    "RareRisk",
    "SubsetFailure",
    "ams",
    "closed_loop_problem",
    "importance_sampling",
    "path_crossing_probability",
    "rare_epistemic",
    "subset_simulation",
]
