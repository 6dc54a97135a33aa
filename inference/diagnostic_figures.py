"""Diagnostic figures of a posterior: trace, rank and energy plots of the population parameters.

:func:`diagnostic_pngs` renders them as PNG bytes (the fit report embeds them);
:func:`write_figures` writes them into a folder, each file to a temporary name and renamed, so a
reader never sees a half-written image.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from medsim.inference.assemble import import_arviz
from medsim.inference.summary import population_variables
from medsim.io import write_bytes


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, bbox_inches="tight", format="png")
    return buffer.getvalue()


def diagnostic_pngs(posterior, *, max_draws: int | None = None) -> dict[str, bytes]:
    """``trace`` (and, for NUTS, ``rank`` and ``energy``) plots as PNG bytes, by name.

    ``max_draws`` thins the trace plot to at most that many draws per chain (a trace of thousands
    of draws is a block of ink and a large image); rank and energy plots use every draw.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    az = import_arviz()
    names = population_variables(posterior)
    out = {}
    try:
        draws = posterior.idata.posterior.sizes["draw"]
        step = 1 if max_draws is None else max(1, -(-draws // max_draws))
        thinned = posterior.idata.posterior.isel(draw=slice(None, None, step))
        layout = {"constrained_layout": True}  # titles clear of the tick labels above them
        axes = az.plot_trace(thinned, var_names=names, compact=True, backend_kwargs=layout)
        out["trace"] = _png(np.atleast_1d(axes).ravel()[0].figure)
        plt.close("all")
        if posterior.method == "nuts":
            axes = az.plot_rank(posterior.idata, var_names=names)
            out["rank"] = _png(np.atleast_1d(axes).ravel()[0].figure)
            plt.close("all")
            ax = az.plot_energy(posterior.idata)
            out["energy"] = _png(ax.figure)
    finally:
        plt.close("all")
    return out


def write_figures(posterior, folder: str | os.PathLike) -> list[Path]:
    """Write ``trace.png`` (and, for NUTS, ``rank.png`` and ``energy.png``) into ``folder``.

    Returns
    -------
    list of Path
        The files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_bytes(folder / f"{stem}.png", png) for stem, png in diagnostic_pngs(posterior).items()]
