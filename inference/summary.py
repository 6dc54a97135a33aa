"""Per-parameter posterior summaries (what ``medsim check --json`` prints)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medsim.inference.assemble import import_arviz
from medsim.inference.diagnostics import sampled_variables

HDI_PROB = 0.94


def population_variables(posterior) -> list[str]:
    """Population-level posterior variables (no per-subject arrays), in file order."""
    post = posterior.idata.posterior
    return [n for n in sampled_variables(posterior.idata) if "subject" not in post[n].dims]


def summarize(posterior, var_names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Mean, median, SD, 94 % HDI and (for NUTS) R-hat and bulk/tail ESS of each variable.

    Parameters
    ----------
    posterior : Posterior
    var_names : list of str, optional
        Default: the population-level variables.

    Returns
    -------
    dict name -> dict
        Keys ``mean``, ``median``, ``sd``, ``hdi_low``, ``hdi_high``, ``hdi_prob``, ``r_hat``,
        ``ess_bulk``, ``ess_tail`` (the last three ``None`` for SVI), ``unit``.
    """
    az = import_arviz()
    idata = posterior.idata
    names = population_variables(posterior) if var_names is None else list(var_names)
    nuts = posterior.method == "nuts"
    hdi = az.hdi(idata, var_names=names, hdi_prob=HDI_PROB)
    if nuts:
        rhat = az.rhat(idata, var_names=names)
        bulk = az.ess(idata, var_names=names, method="bulk")
        tail = az.ess(idata, var_names=names, method="tail")
    units = {s.site: s.unit for s in posterior.priors.sites}
    out = {}
    for n in names:
        values = np.asarray(idata.posterior[n].values, float)
        flat = values.reshape(-1, *values.shape[2:])
        interval = np.asarray(hdi[n].values, float)
        row = {
            "mean": _scalar(flat.mean(axis=0)),
            "median": _scalar(np.median(flat, axis=0)),
            "sd": _scalar(flat.std(axis=0, ddof=1)),
            "hdi_prob": HDI_PROB,
            "hdi_low": _scalar(interval[..., 0]),
            "hdi_high": _scalar(interval[..., 1]),
            "r_hat": _scalar(rhat[n].values) if nuts else None,
            "ess_bulk": _scalar(bulk[n].values) if nuts else None,
            "ess_tail": _scalar(tail[n].values) if nuts else None,
            "unit": units.get(n, ""),
        }
        out[n] = row
    return out


def _scalar(value: Any) -> Any:
    array = np.asarray(value, float)
    return float(array) if array.ndim == 0 else array.tolist()
