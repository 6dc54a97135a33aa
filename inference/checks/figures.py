"""Write the predictive-check figures of a fit as PNG files.

``medsim check --figures`` writes these and the sampler plots through the fit report
(:func:`medsim.inference.checks.fit_report.fit_figures`); :func:`write_check_figures` is the same set
for a ``PosteriorDraws`` (no sampler to plot), e.g. in ``benchmarks/fit.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
from matplotlib.figure import Figure

from medsim.inference.checks.gof import goodness_of_fit, plot_goodness_of_fit
from medsim.inference.checks.individual import individual_fits, plot_individual_fits
from medsim.inference.checks.vpc import plot_vpc, vpc
from medsim.io import atomic_write


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 130) -> Path:
    """Save ``fig`` as PNG atomically: a temporary file in the same folder, then ``os.replace``.

    Returns
    -------
    Path
        ``path``; on failure no partial file is left behind.
    """

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            fig.savefig(out, format="png", dpi=dpi)

    return atomic_write(path, save)


def write_check_figures(
    posterior: Any,
    cohort: Any,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    n_draws: int = 200,
    log_y: bool = False,
) -> dict[str, Path]:
    """Individual fits, VPC and goodness of fit of a fit, as PNG files in ``out_dir`` (created if needed).

    Parameters
    ----------
    posterior : Posterior or PosteriorDraws
    cohort : Cohort
        The fitted cohort.
    out_dir : path
    seed : int
        Seed of the simulations (the same seed gives the same figures).
    n_draws : int
        Posterior draws simulated for the individual fits and replicate studies for the VPC.
    log_y : bool
        Logarithmic observable axis.

    Returns
    -------
    dict name -> Path
        ``{"individual_fits": ..., "vpc": ..., "goodness_of_fit": ...}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k_fits, k_vpc, k_gof = jax.random.split(jax.random.key(seed), 3)
    fits = individual_fits(posterior, cohort, key=k_fits, n_draws=n_draws)
    check = vpc(posterior, cohort, key=k_vpc, n_replicates=n_draws)
    gof = goodness_of_fit(posterior, cohort, key=k_gof, n_draws=n_draws)
    return {
        "individual_fits": save_figure(plot_individual_fits(fits, log_y=log_y), out / "individual_fits.png"),
        "vpc": save_figure(plot_vpc(check, log_y=log_y), out / "vpc.png"),
        "goodness_of_fit": save_figure(plot_goodness_of_fit(gof), out / "goodness_of_fit.png"),
    }
