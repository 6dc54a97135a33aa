"""Noise indices as a table: which counter-based stream feeds each patient's ``k``-th interaction.

:func:`medsim.policies.rollout.rollout`'s ``noise_index`` maps ``(patient, k)`` to the index whose
streams give the process and measurement noise of that interaction (default: the patient's own
index). Any callable works in the host loop; a :class:`NoiseTable` also works in the compiled loop
of :mod:`medsim.policies.device_loop`, which looks the index up on the device (rare-event
splitting, :mod:`medsim.policies.risk.rare.closed_loop`, hands its clones' indices this way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class NoiseTable:
    """``noise_index`` as an ``(N, K)`` table: row ``i``, column ``k`` is the stream index of
    patient ``i``'s ``k``-th interaction (a patient past the last row takes the last row, an
    interaction past the last column the last column).

    Parameters
    ----------
    table : (N, K) int
        Stream indices in ``[0, 2**32)``.
    """

    table: np.ndarray

    def __post_init__(self) -> None:
        table = np.asarray(self.table)
        if table.ndim != 2 or 0 in table.shape or table.dtype.kind not in "iu":
            raise ValueError(
                f"NoiseTable.table: expected a non-empty (N, K) integer array, got {table.dtype} {table.shape}"
            )
        if table.min() < 0 or table.max() >= 2**32:
            raise ValueError("NoiseTable.table: stream indices must lie in [0, 2**32)")
        object.__setattr__(self, "table", table.astype(np.int64))

    def rows(self, patient: np.ndarray) -> np.ndarray:
        """The table rows of ``patient`` (global indices), ``(n, K)`` int64."""
        return self.table[np.minimum(np.asarray(patient, np.int64), self.table.shape[0] - 1)]

    def __call__(self, patient: np.ndarray, k: np.ndarray) -> np.ndarray:
        rows = np.minimum(np.asarray(patient, np.int64), self.table.shape[0] - 1)
        return self.table[rows, np.minimum(np.asarray(k, np.int64), self.table.shape[1] - 1)]
