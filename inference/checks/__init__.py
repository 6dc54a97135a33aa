"""Predictive checks of fitted models: posterior predictive simulation, individual fits, VPC, LOO.

Owns simulation of replicate measurements from a posterior (:func:`posterior_predictive`),
individual-fit small multiples (:func:`individual_fits`), visual predictive checks (:func:`vpc`),
PSIS-LOO model comparison on the stored pointwise log-likelihood (:func:`loo_compare`), the
held-out calibration check judged by the calibration gate (:func:`heldout_check` on a
:func:`split_after` / :func:`window_mask` split; forecast scores in :mod:`medsim.inference.checks.scores`),
goodness of fit with CWRES (:func:`goodness_of_fit`), shrinkage, and the pharmacometric fit report
``medsim check --report`` and ``--figures`` write (:func:`build_fit_report`, :func:`write_fit_report`;
:func:`write_check_figures` writes the simulated figures for draws without a sampler).
Functions return frozen dataclasses of numpy arrays; ``plot_*`` functions turn them into
matplotlib figures (never pyplot state).

May import ``medsim`` (models, simulator, posterior draws), ``medsim.inference.likelihood``, jax, numpy,
arviz and matplotlib; nothing in ``inference`` imports this package except the CLI entry points.
"""

from medsim.inference.checks.calibration_gate import heldout_check
from medsim.inference.checks.figures import save_figure, write_check_figures
from medsim.inference.checks.fit_report import FitReport, build_fit_report, fit_figures, write_fit_report
from medsim.inference.checks.gof import GoodnessOfFit, goodness_of_fit, plot_goodness_of_fit
from medsim.inference.checks.heldout import split_after, window_mask
from medsim.inference.checks.individual import IndividualFits, individual_fits, plot_individual_fits
from medsim.inference.checks.loo import LooComparison, LooError, loo_compare, plot_loo_compare, pointwise_log_likelihood
from medsim.inference.checks.predictive import PredictiveError, PredictiveSample, posterior_predictive
from medsim.inference.checks.vpc import VPCResult, plot_vpc, vpc

__all__ = [
    "FitReport",
    "GoodnessOfFit",
    "IndividualFits",
    "LooComparison",
    "LooError",
    "PredictiveError",
    "PredictiveSample",
    "VPCResult",
    "build_fit_report",
    "fit_figures",
    "goodness_of_fit",
    "heldout_check",
    "individual_fits",
    "loo_compare",
    "plot_goodness_of_fit",
    "plot_individual_fits",
    "plot_loo_compare",
    "plot_vpc",
    "pointwise_log_likelihood",
    "posterior_predictive",
    "save_figure",
    "split_after",
    "vpc",
    "window_mask",
    "write_check_figures",
    "write_fit_report",
]
