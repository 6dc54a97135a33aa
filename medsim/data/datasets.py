"""Real cohorts shipped with medsim as event-table CSVs (``medsim/data/bundled/``).

Sources, licences and what was checked are in ``bundled/SOURCES.md``; the CSVs were written
once by ``bundled/extract.py``. Loading reads the CSV with :func:`read_event_table`, so a
bundled cohort passes the same checks as a user's table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

from medsim.data.cohort import Cohort
from medsim.data.eventtable import read_event_table


@dataclass(frozen=True)
class DatasetInfo:
    """A bundled dataset.

    Attributes
    ----------
    name : str
        What :func:`load` takes.
    description : str
    n_subjects, n_observations, n_doses : int
    model : str
        The registered model it is meant for (``medsim models``).
    source : str
        Where the data come from (publication and R package).
    licence : str
    filename : str
        CSV in ``medsim/data/bundled/``.
    units : mapping
        Units of the columns.
    covariates : tuple of str
        Covariate columns (each constant within a subject).
    """

    name: str
    description: str
    n_subjects: int
    n_observations: int
    n_doses: int
    model: str
    source: str
    licence: str
    filename: str
    units: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    covariates: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, MappingProxyType) else v) for k, v in vars(self).items()}


_DATASETS: tuple[DatasetInfo, ...] = (
    DatasetInfo(
        name="theoph",
        description="theophylline, single oral dose, 11 samples over 25 h per subject (CMT 1 depot, CMT 2 plasma)",
        n_subjects=12,
        n_observations=132,
        n_doses=12,
        model="pk_oral_1cmt",
        source="Boeckmann, Sheiner & Beal (1994) NONMEM Users Guide Part V; R datasets::Theoph",
        licence="GPL-2 | GPL-3 (R datasets package)",
        filename="theoph.csv",
        units=MappingProxyType({"TIME": "h", "DV": "mg/L", "AMT": "mg", "RATE": "mg/h", "WT": "kg"}),
        covariates=("WT",),
    ),
    DatasetInfo(
        name="pheno",
        description="phenobarbital in 59 neonates, repeated IV boluses, 1-6 routine levels each (CMT 1)",
        n_subjects=59,
        n_observations=155,
        n_doses=589,
        model="pk_iv_1cmt",
        source="Grasela & Donn (1985) Dev Pharmacol Ther 8:374; R nlme::Phenobarb",
        licence="GPL (>= 2) (R nlme package)",
        filename="pheno.csv",
        units=MappingProxyType({"TIME": "h", "DV": "mg/L", "AMT": "mg", "RATE": "mg/h", "WGT": "kg", "APGR": "1"}),
        covariates=("WGT", "APGR"),
    ),
    DatasetInfo(
        name="t1d_sim",
        description=(
            "6 type-1 patients (2 adults, 2 adolescents, 2 children) simulated for 3 days by simglucose's "
            "UVA/Padova model: CGM every 15 min (CMT 3), pump insulin (CMT 1: basal infusions, boluses), "
            "meal carbohydrate (CMT 2)"
        ),
        n_subjects=6,
        n_observations=1734,
        n_doses=150,
        model="glucose_insulin",
        source="simglucose 0.2.11 (Xie 2018; UVA/Padova T1D simulator), benchmarks/t1d_cohort.py bundled_cohort()",
        licence="simglucose is MIT; the simulated data are distributed with medsim (BSD-3-Clause)",
        filename="t1d_sim.csv",
        units=MappingProxyType(
            {
                "TIME": "min",
                "DV": "mg/dL",
                "AMT": "U insulin (CMT 1) / g carbohydrate (CMT 2)",
                "RATE": "U/min",
                "BASAL": "U/h",
            }
        ),
        covariates=("BASAL",),
    ),
)


class UnknownDatasetError(KeyError):
    """Raised for a dataset name that is not bundled."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def available() -> tuple[DatasetInfo, ...]:
    """The bundled datasets."""
    return _DATASETS


def info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; :class:`UnknownDatasetError` (a KeyError) listing the bundled names."""
    for d in _DATASETS:
        if d.name == name:
            return d
    raise UnknownDatasetError(f"no bundled dataset {name!r}; bundled datasets: {', '.join(d.name for d in _DATASETS)}")


def load(name: str) -> Cohort:
    """Load a bundled dataset as a :class:`Cohort` (``source`` = ``"medsim:<name>"``).

    Raises
    ------
    UnknownDatasetError
        A KeyError, if ``name`` is not bundled (the message lists the bundled names).
    """
    d = info(name)
    with resources.as_file(resources.files("medsim.data") / "bundled" / d.filename) as path:
        cohort = read_event_table(path, units=d.units, covariates=d.covariates)
    return Cohort(
        cohort.subjects,
        name=d.name,
        units=cohort.units,
        covariate_names=cohort.covariate_names,
        source=f"medsim:{d.name}",
    )
