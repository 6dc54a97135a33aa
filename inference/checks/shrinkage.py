"""Shrinkage: how much the data say about each subject's random effects and residuals.

``eta``-shrinkage of a random effect ``p`` (Savic & Karlsson 2009, *AAPS J* 11:558, eq. 1) is
``1 - SD_i(eta_hat_i) / omega_p``, with ``eta_hat_i`` the subject's conditional estimate (here its
posterior mean) and ``omega_p`` the posterior median BSV. Near 0 the data determine each
subject's effect; above about 30 % individual estimates are pulled to the typical value, and
plots of them against covariates or of IPRED against the data flatter the model.
``epsilon``-shrinkage is ``1 - SD(IWRES)`` over the measurements: near 1, IPRED follows the data
closely because the individual fits absorb the residual error (the IPRED panel then says little).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medsim.inference.checks.predictive import draws_of

MIN_SUBJECTS = 3
"""An SD across fewer subjects is not an estimate: shrinkage is then reported as not estimable."""


def eta_shrinkage(posterior: Any) -> dict[str, float | None]:
    """``eta``-shrinkage of each random effect (fraction; None where it cannot be estimated).

    It cannot be estimated with fewer than :data:`MIN_SUBJECTS` subjects or a posterior median
    ``omega`` of 0.
    """
    draws = draws_of(posterior)
    out: dict[str, float | None] = {}
    for p, eta in draws.eta.items():
        eta_hat = np.asarray(eta, float).mean(axis=0)
        omega = float(np.median(np.asarray(draws.omega[p], float)))
        if eta_hat.size < MIN_SUBJECTS or not omega > 0:
            out[p] = None
        else:
            out[p] = float(1.0 - np.std(eta_hat, ddof=1) / omega)
    return out


def epsilon_shrinkage(iwres: np.ndarray) -> float | None:
    """``1 - SD(IWRES)`` (fraction); None with fewer than :data:`MIN_SUBJECTS` finite residuals."""
    values = np.asarray(iwres, float)
    values = values[np.isfinite(values)]
    if values.size < MIN_SUBJECTS:
        return None
    return float(1.0 - np.std(values, ddof=1))
