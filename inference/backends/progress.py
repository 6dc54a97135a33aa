"""Progress reporting from inside compiled sampler loops.

The library never prints; a caller (the CLI's progress bar) passes ``progress(done, total)``.
Samplers run as one compiled loop, so their kernels report each iteration through a host
callback; :class:`ProgressCounter` turns those calls (from any thread, one per chain and
iteration) into monotone ``(done, total)`` updates, throttled so the caller is not flooded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Progress = Callable[[int, int], None]


class ProgressCounter:
    """Thread-safe counter forwarding ``(done, total)`` to ``progress`` every ``every`` steps.

    Parameters
    ----------
    progress : callable(done, total) or None
        Receives the number of completed units (iterations summed over chains) and the total.
    total : int
    every : int
        Forward every ``every``-th unit (and the last one).
    """

    def __init__(self, progress: Progress | None, total: int, *, every: int = 10) -> None:
        self._progress = progress
        self._total = int(total)
        self._every = max(1, int(every))
        self._done = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._progress is not None

    def add(self, units: int = 1) -> None:
        """Record ``units`` completed units (called from host callbacks)."""
        if self._progress is None:
            return
        with self._lock:
            before = self._done
            self._done = min(self._total, self._done + int(units))
            done = self._done
        if done // self._every != before // self._every or done == self._total:
            self._progress(done, self._total)

    def finish(self) -> None:
        """Report completion (whatever the callbacks reported)."""
        if self._progress is not None:
            with self._lock:
                self._done = self._total
            self._progress(self._total, self._total)
