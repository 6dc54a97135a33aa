"""Diagnostic figures of a posterior: trace and rank plots of the population parameters.

Each figure is written to a temporary file in the destination folder and renamed, so a reader
never sees a half-written image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from medsim.inference.assemble import import_arviz
from medsim.inference.summary import population_variables

from medsim.io import atomic_write


def _save(fig, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))


def write_figures(posterior, folder: str | os.PathLike) -> list[Path]:
    """Write ``trace.png`` (and, for NUTS, ``rank.png`` and ``energy.png``) into ``folder``.

    Returns
    -------
    list of Path
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    az = import_arviz()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = population_variables(posterior)
    written = []
    axes = az.plot_trace(posterior.idata, var_names=names, compact=True)
    written.append(_save(np.atleast_1d(axes).ravel()[0].figure, folder / "trace.png"))
    plt.close("all")
    if posterior.method == "nuts":
        axes = az.plot_rank(posterior.idata, var_names=names)
        written.append(_save(np.atleast_1d(axes).ravel()[0].figure, folder / "rank.png"))
        plt.close("all")
        ax = az.plot_energy(posterior.idata)
        written.append(_save(ax.figure, folder / "energy.png"))
        plt.close("all")
    return written
