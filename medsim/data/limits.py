"""The range of numbers an event table may hold: what medsim's numerics can represent.

medsim simulates and fits in float32 (largest finite value ~3.4e38, smallest normal ~1.2e-38).
A cell that is a valid float64 but not a usable float32 (``DV = 1e308`` becomes ``inf``;
``AMT = 1e-300`` becomes 0) does not fail where it is read: it turns a fit into hundreds of
divergent transitions or a dose into nothing. So the table checks refuse such cells up front,
naming the row and column.

Limits
------
* Every numeric cell of TIME, DV, AMT, RATE, II and DUR, every covariate and the derived
  infusion rate AMT / DUR must be finite with magnitude at most :data:`MAX_MAGNITUDE` (1e15):
  the square of such a value (a squared residual, a variance) summed over a million records
  stays below float32's maximum (1e15² x 1e6 = 1e36 < 3.4e38), so no likelihood term overflows.
  The last additional dose TIME + ADDL x II obeys the same limit.
* A non-zero magnitude must be at least :data:`MIN_MAGNITUDE` (1e-30): below it a value is a
  float32 subnormal or zero, its logarithm (log-normal errors, log-scale bounds) is -inf or
  inaccurate and its reciprocal overflows. Exact zeros are fine.
* CMT is a whole number from 1 to :data:`MAX_CMT` (compartment numbers index model states).
* ADDL is a whole number from 0 to :data:`MAX_ADDL` (each additional dose becomes a record in
  memory; a year of five-minute insulin pulses is ~105,000).
* A :class:`~medsim.data.Subject` built in Python refuses magnitudes above
  :data:`MAX_MAGNITUDE` too (the lower limit applies to tables only: a simulated float32
  value may legitimately be subnormal).
* Signs are checked by the record rules (:mod:`medsim.data.records`): TIME >= 0, AMT > 0 on
  doses, RATE, DUR and II >= 0. DV may be negative (a change from baseline).
"""

from __future__ import annotations

import numpy as np

MAX_MAGNITUDE = 1e15
MIN_MAGNITUDE = 1e-30
MAX_CMT = 1000
MAX_ADDL = 1_000_000

#: Continuous reserved columns whose magnitude is checked.
MAGNITUDE_CHECKED = ("TIME", "DV", "AMT", "RATE", "II", "DUR")

RANGE_TEXT = f"a magnitude between {MIN_MAGNITUDE:g} and {MAX_MAGNITUDE:g} (or exactly 0)"


def beyond_limits(values: np.ndarray) -> np.ndarray:
    """(n,) bool: finite values outside ``MIN_MAGNITUDE <= |x| <= MAX_MAGNITUDE`` (0 allowed).

    NaN and infinite values are not flagged here (they are "missing" or "not finite").
    """
    size = np.abs(np.asarray(values, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        return np.isfinite(size) & ((size > MAX_MAGNITUDE) | ((size > 0) & (size < MIN_MAGNITUDE)))


def range_message(name: str) -> str:
    """What a cell outside the limits is told, for column ``name``."""
    return (
        f"{name} is outside the range medsim computes with (float32); expected {RANGE_TEXT} "
        "- check the units or a typing error"
    )
