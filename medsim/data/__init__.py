"""Cohort data: the Cohort type, NONMEM-style event tables, their validation, bundled datasets.

Owns the in-memory cohort (:class:`Cohort`, :class:`Subject`, :class:`PaddedCohort`), reading
and writing event tables (CSV, CSV.gz, Parquet; :func:`read_event_table`,
:func:`write_event_table`), checking them with messages that name the file, row, column and
value (:func:`validate_event_table`, :class:`ValidationReport`, :class:`CohortFormatError`,
:class:`CohortWarning`), and the real datasets shipped in ``bundled/`` (:func:`load`,
:func:`available`).

May import numpy, pandas and pyarrow; :mod:`medsim.models` only for a model's metadata during
validation (imported lazily there). Never prints, never loads pickles.

Module map: ``subject``/``cohort``/``padded`` (types), ``tablefile`` (raw cells, atomic
writes), ``columns`` (names and aliases), ``limits`` (the range of usable numbers), ``parse``
(numbers and NONMEM defaults), ``records`` (record rules), ``covariates`` (covariate rules),
``build`` (ADDL expansion, grouping), ``validate`` and ``eventtable`` (public entry points),
``datasets`` (bundled data).
"""

from medsim.data.cohort import Cohort, PaddedCohort, Subject
from medsim.data.datasets import DatasetInfo, UnknownDatasetError, available, load
from medsim.data.eventtable import read_event_table, write_event_table
from medsim.data.report import CohortFormatError, CohortWarning, Notice, Problem, ValidationReport
from medsim.data.validate import validate_event_table

__all__ = [
    "Cohort",
    "CohortFormatError",
    "CohortWarning",
    "DatasetInfo",
    "Notice",
    "PaddedCohort",
    "Problem",
    "Subject",
    "UnknownDatasetError",
    "ValidationReport",
    "available",
    "load",
    "read_event_table",
    "validate_event_table",
    "write_event_table",
]
