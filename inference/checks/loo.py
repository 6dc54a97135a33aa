"""PSIS-LOO comparison of fitted models, e.g. the SDE model against its ODE limit.

Uses the pointwise log-likelihood every medsim posterior stores (group ``log_likelihood``):
for the SDE model the extended Kalman filter's one-step-ahead predictive densities
``log p(y_ij | y_i,<j, theta)``, whose sum over a subject is the subject's marginal likelihood; for
the ODE limit plain ``log p(y_ij | theta)``. ArviZ's ``loo`` (Pareto-smoothed importance sampling,
Vehtari, Gelman & Gabry 2017, *Stat Comput* 27:1413) and ``compare`` then estimate each model's
expected log predictive density (ELPD) and the difference with its standard error.

Two units of "one left out":

* ``"observation"`` (default): one measurement. For the SDE model the left-out term is conditional
  on the subject's earlier measurements, so this is leave-one-out of one-step-ahead predictions
  (a sequential, not a fully exchangeable, LOO); it is the same quantity for the ODE limit, where
  the terms do not depend on the past.
* ``"subject"``: a whole subject (the sum of its terms). Its random effects are part of
  ``theta``, so the importance weights are often heavy-tailed: check the Pareto k values.

The pointwise values are read from the layout :mod:`medsim.inference.assemble` writes (observations
only, their subjects in ``constant_data``) or from a padded ``(subject, observation)`` array, whose
padding entries are exactly 0 for every draw and are dropped.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

Unit = Literal["observation", "subject"]
_SAMPLE_DIMS = ("chain", "draw")


class LooError(ValueError):
    """Posteriors that cannot be compared (no pointwise log-likelihood, different data)."""


@dataclass(frozen=True)
class LooComparison:
    """Result of :func:`loo_compare`.

    Attributes
    ----------
    table : pandas.DataFrame
        ``arviz.compare`` output, best model first: ``elpd_loo``, ``p_loo``, ``elpd_diff``,
        ``dse`` (SE of the difference), ``weight``, ``se``, ``warning``...
    loo : dict name -> arviz.ELPDData
        Each model's PSIS-LOO estimate, with pointwise values and Pareto k.
    pareto_k_above : dict name -> int
        Points with Pareto k above ArviZ's threshold ``min(1 - 1 / log10(draws), 0.7)``, where
        PSIS is unreliable (Vehtari et al. 2024, JMLR 25:72).
    unit : str
    n_points : int
    """

    table: Any
    loo: dict[str, Any]
    pareto_k_above: dict[str, int]
    unit: str
    n_points: int

    def best(self) -> str:
        """Name of the model with the highest ELPD."""
        return str(self.table.index[0])

    def difference(self, name: str) -> tuple[float, float]:
        """(ELPD of the best model minus ``name``'s, standard error of that difference)."""
        row = self.table.loc[name]
        return float(row["elpd_diff"]), float(row["dse"])


def inference_data_of(posterior: Any) -> Any:
    """The ArviZ InferenceData of a medsim ``Posterior`` (an InferenceData is returned as is)."""
    for attr in ("idata", "inference_data"):
        if hasattr(posterior, attr):
            return getattr(posterior, attr)
    if hasattr(posterior, "groups"):
        return posterior
    raise LooError(f"expected a medsim Posterior or arviz.InferenceData, got {type(posterior).__name__}")


def pointwise_log_likelihood(posterior: Any, *, unit: Unit = "observation", var_name: str | None = None):
    """(chain, draw, point) log-likelihood of ``posterior`` per left-out unit.

    Two layouts are read: medsim's (:mod:`medsim.inference.assemble`: one variable per observable with
    dims ``(chain, draw, <observable>_obs)`` and the subject of each observation in
    ``constant_data["<observable>_subject"]``), and a padded ``(chain, draw, subject, ...)`` array.

    Parameters
    ----------
    posterior : Posterior or arviz.InferenceData
    unit : {"observation", "subject"}
    var_name : str, optional
        Variable of the ``log_likelihood`` group (default: its only variable).

    Returns
    -------
    xarray.DataArray
        Dims ``(chain, draw, point)``; padding entries removed.

    Raises
    ------
    LooError
        No ``log_likelihood`` group, several variables and no ``var_name``, or no way to tell the
        subject of each observation.
    """
    idata = inference_data_of(posterior)
    if "log_likelihood" not in idata.groups():
        raise LooError("the posterior has no log_likelihood group (pointwise log-likelihood); refit to get one")
    group = idata.log_likelihood
    names = list(group.data_vars)
    if var_name is None:
        if len(names) != 1:
            raise LooError(f"log_likelihood has variables {names}: name the one to use (var_name=...)")
        var_name = names[0]
    if var_name not in names:
        raise LooError(f"log_likelihood has no variable {var_name!r}; it has {names}")
    if unit not in ("observation", "subject"):
        raise LooError(f"unit must be 'observation' or 'subject', got {unit!r}")
    ll = group[var_name]
    other = [d for d in ll.dims if d not in (*_SAMPLE_DIMS, "subject")]
    if "subject" in ll.dims:  # padded layout
        if unit == "subject":
            values = ll.sum(dim=other).transpose(*_SAMPLE_DIMS, "subject").values
        else:
            stacked = ll.stack(point=("subject", *other)).transpose(*_SAMPLE_DIMS, "point").values
            values = stacked[:, :, np.any(stacked != 0.0, axis=(0, 1))]  # padding is exactly 0 in every draw
        return xr.DataArray(values, dims=(*_SAMPLE_DIMS, "point"))
    if len(other) != 1:
        raise LooError(f"log_likelihood[{var_name!r}] has dims {ll.dims}; expected (chain, draw, observation)")
    values = ll.transpose(*_SAMPLE_DIMS, other[0]).values
    if unit == "subject":
        key = f"{var_name}_subject"
        if "constant_data" not in idata.groups() or key not in idata.constant_data:
            raise LooError(f"leaving out subjects needs constant_data[{key!r}] (the subject of each observation)")
        subject = np.asarray(idata.constant_data[key].values, int)
        sums = np.zeros((*values.shape[:2], subject.max() + 1))
        np.add.at(sums, (slice(None), slice(None), subject), values)
        values = sums[:, :, np.unique(subject)]
    return xr.DataArray(values, dims=(*_SAMPLE_DIMS, "point"))


@dataclass(frozen=True)
class LooSummary:
    """PSIS-LOO of one posterior.

    Attributes
    ----------
    elpd, se : float
        Expected log predictive density (sum over left-out units, nats) and its standard error.
    p_loo : float
        Effective number of parameters.
    n_points : int
    pareto_k_above : int
        Left-out units whose Pareto k exceeds ``k_threshold`` (their terms are unreliable).
    k_threshold : float
    unit : {"observation", "subject"}
    """

    elpd: float
    se: float
    p_loo: float
    n_points: int
    pareto_k_above: int
    k_threshold: float
    unit: str


def loo_summary(posterior: Any, *, unit: Unit = "observation", var_name: str | None = None) -> LooSummary:
    """PSIS-LOO of ``posterior``'s stored pointwise log-likelihood (see :func:`loo_compare`).

    Raises
    ------
    LooError
        No ``log_likelihood`` group or no way to tell the subject of each observation.
    """
    import arviz as az

    ll = pointwise_log_likelihood(posterior, unit=unit, var_name=var_name)
    groups = {"log_likelihood": xr.Dataset({"y": ll})}
    source = inference_data_of(posterior)
    if "posterior" in source.groups():
        groups["posterior"] = source.posterior
    with warnings.catch_warnings():  # ArviZ warns about high Pareto k; the count below reports it
        warnings.simplefilter("ignore", UserWarning)
        result = az.loo(az.InferenceData(**groups), pointwise=True, reff=None if "posterior" in groups else 1.0)
    threshold = float(getattr(result, "good_k", 0.7))
    return LooSummary(
        elpd=float(result.elpd_loo),
        se=float(result.se),
        p_loo=float(result.p_loo),
        n_points=int(ll.sizes["point"]),
        pareto_k_above=int(np.sum(np.asarray(result.pareto_k) > threshold)),
        k_threshold=threshold,
        unit=unit,
    )


def loo_compare(
    posteriors: Mapping[str, Any], *, unit: Unit = "observation", var_name: str | None = None
) -> LooComparison:
    """PSIS-LOO of each posterior and their comparison (``arviz.compare``).

    Parameters
    ----------
    posteriors : mapping name -> Posterior or arviz.InferenceData
        Fits of the same data, e.g. ``{"SDE": sde_fit, "ODE": ode_fit}``.
    unit : {"observation", "subject"}
        What is left out; see the module docstring.
    var_name : str, optional
        Variable of the ``log_likelihood`` groups.

    Returns
    -------
    LooComparison

    Raises
    ------
    LooError
        Fewer than two posteriors, or different numbers of points (not the same data).
    """
    import arviz as az

    if len(posteriors) < 2:
        raise LooError(f"need at least two posteriors to compare, got {len(posteriors)}")
    data, loo = {}, {}
    for name, posterior in posteriors.items():
        ll = pointwise_log_likelihood(posterior, unit=unit, var_name=var_name)
        groups = {"log_likelihood": xr.Dataset({"y": ll})}
        source = inference_data_of(posterior)
        if "posterior" in source.groups():
            groups["posterior"] = source.posterior  # ArviZ takes the relative efficiency from it
        data[name] = az.InferenceData(**groups)
    sizes = {name: idata.log_likelihood["y"].sizes["point"] for name, idata in data.items()}
    if len(set(sizes.values())) != 1:
        raise LooError(f"the posteriors were not fitted to the same data: points per model {sizes}")
    for name, idata in data.items():
        # Without draws to estimate it from, the relative efficiency is taken as 1 (independent draws).
        loo[name] = az.loo(idata, pointwise=True, reff=None if "posterior" in idata.groups() else 1.0)
    with warnings.catch_warnings():  # ArviZ 0.23 sorts with pandas' deprecated inplace=True
        warnings.filterwarnings("ignore", message="The inplace keyword")
        table = az.compare(loo, ic="loo")
    # ArviZ's reliability threshold for k depends on the number of draws S: min(1 - 1/log10 S, 0.7).
    above = {
        name: int(np.sum(np.asarray(result.pareto_k) > getattr(result, "good_k", 0.7))) for name, result in loo.items()
    }
    return LooComparison(table=table, loo=loo, pareto_k_above=above, unit=unit, n_points=next(iter(sizes.values())))


def plot_loo_compare(comparison: LooComparison) -> Figure:
    """ELPD of each model with its standard error, and the difference to the best one.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import arviz as az

    fig = Figure(figsize=(6.0, 1.2 + 0.6 * len(comparison.table)), layout="constrained")
    ax = fig.subplots()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The inplace keyword")
        az.plot_compare(comparison.table, ax=ax, insample_dev=False, legend=True, title=False)
    ax.set_title(f"PSIS-LOO ({comparison.n_points} {comparison.unit}s left out one at a time)", fontsize=9)
    return fig
