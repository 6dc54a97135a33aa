"""Virtual populations on disk: netCDF via xarray, written atomically, validated on read.

Layout: one dimension ``patient``; variables ``draw`` and ``subject`` plus one variable per
parameter / covariate / random effect / residual parameter, named ``param__<name>``,
``covariate__<name>``, ``eta__<name>`` and ``residual__<name>``. Global attributes carry the
format marker, the model name and version, the sampling settings and the provenance as JSON.
Nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medsim.io import atomic_write
from medsim.models.base import PhysiologyModel
from medsim.population.virtual import VirtualPopulation

FORMAT = "medsim.virtual_population"
FORMAT_VERSION = 1
_GROUPS = ("param", "covariate", "eta", "residual")


class PopulationFormatError(ValueError):
    """A file is not a readable medsim virtual population; the message names the file and the problem."""


def save_population(population: VirtualPopulation, path: str | Path) -> Path:
    """Write ``population`` to ``path`` (netCDF4/HDF5) atomically.

    The file is written to a temporary name in the same folder and renamed over ``path``, so a
    reader never sees a half-written file.

    Returns
    -------
    Path
        The written path.
    """
    import xarray as xr

    path = Path(path)
    n = population.n_patients
    data = {
        "draw": ("patient", np.asarray(population.draw, np.int64)),
        "subject": ("patient", np.asarray(population.subject, dtype=object).astype(str)),
    }
    for group, values in zip(
        _GROUPS, (population.params, population.covariates, population.eta, population.residual), strict=True
    ):
        for name, arr in values.items():
            data[f"{group}__{name}"] = ("patient", np.asarray(arr, np.float64))
    attrs = {
        "medsim_format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": population.model.name,
        "model_version": population.model.version,
        "mode": population.mode,
        "seed": int(population.seed),
        "patients_per_draw": int(population.patients_per_draw),
        "provenance": json.dumps(population.provenance, default=str, sort_keys=True),
    }
    ds = xr.Dataset(data, coords={"patient": np.arange(n)}, attrs=attrs)
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))


def load_population(path: str | Path, model: PhysiologyModel | None = None) -> VirtualPopulation:
    """Read a virtual population written by :func:`save_population`.

    Parameters
    ----------
    path : str or Path
    model : PhysiologyModel, optional
        The model to attach; default: the registered model named in the file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    PopulationFormatError
        If the file is not a medsim virtual population, is of a newer format, names another or
        an unknown model, or lacks a required variable.
    """
    import xarray as xr

    import medsim.models as registry

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such virtual population file")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as handle:
            ds = handle.load()
    except (OSError, ValueError) as err:
        raise PopulationFormatError(f"{path}: not a readable netCDF file ({err})") from err
    attrs = ds.attrs
    if attrs.get("medsim_format") != FORMAT:
        raise PopulationFormatError(
            f"{path}: not a medsim virtual population (attribute medsim_format={attrs.get('medsim_format')!r}, "
            f"expected {FORMAT!r})"
        )
    if int(attrs.get("format_version", 0)) > FORMAT_VERSION:
        raise PopulationFormatError(
            f"{path}: format version {attrs.get('format_version')} is newer than this medsim reads ({FORMAT_VERSION})"
        )
    name = str(attrs.get("model", ""))
    if model is None:
        try:
            model = registry.get(name)
        except registry.UnknownModelError as err:
            raise PopulationFormatError(f"{path}: {err}") from None
    elif model.name != name:
        raise PopulationFormatError(f"{path}: population is for model {name!r}, not {model.name!r}")
    if str(attrs.get("model_version")) != str(model.version):
        raise PopulationFormatError(
            f"{path}: population is for {name} version {attrs.get('model_version')}, the model is version "
            f"{model.version}"
        )
    for required in ("draw", "subject"):
        if required not in ds:
            raise PopulationFormatError(f"{path}: missing variable {required!r}")
    groups: dict[str, dict[str, np.ndarray]] = {g: {} for g in _GROUPS}
    for var in ds.data_vars:
        group, sep, key = str(var).partition("__")
        if sep and group in groups:
            groups[group][key] = np.asarray(ds[var].values, np.float64)
    missing = [p.name for p in model.parameters if p.name not in groups["param"]]
    if missing:
        raise PopulationFormatError(f"{path}: missing parameter variables {['param__' + m for m in missing]}")
    try:
        provenance = json.loads(str(attrs.get("provenance", "{}")))
        return VirtualPopulation(
            model=model,
            draw=np.asarray(ds["draw"].values, np.int64),
            subject=np.asarray(ds["subject"].values).astype(str).astype(object),
            params=groups["param"],
            covariates=groups["covariate"],
            eta=groups["eta"],
            residual=groups["residual"],
            mode=str(attrs.get("mode")),
            seed=int(attrs.get("seed", 0)),
            patients_per_draw=int(attrs.get("patients_per_draw", 1)),
            provenance=provenance,
        )
    except (ValueError, json.JSONDecodeError) as err:
        raise PopulationFormatError(f"{path}: {err}") from err
