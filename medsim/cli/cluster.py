"""The Dask cluster a command's ``--workers N`` / ``--scheduler ADDRESS`` ask for (``medsim risk``, ``medsim sbc``).

Neither option: no cluster, the work runs in this process. ``--workers N``: an embedded local
cluster of ``N`` spawned worker processes, ``--worker-threads`` cores each (default: the machine's
cores shared out), pinned to them; ``--scheduler``: an existing cluster, only connected to. A
missing Dask installation or an unreachable scheduler exits with status 2 naming the option.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from medsim.cli.app import fail


def worker_options(workers: int | None, threads: int | None, memory: float | None) -> Any:
    """:class:`~medsim.policies.dask_workers.WorkerOptions` of the options (threads shared out by default)."""
    import os

    from medsim.policies.dask_workers import DistributionError, WorkerOptions

    if threads is None and workers is not None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        return WorkerOptions(threads=threads, memory_fraction=memory)
    except DistributionError as err:
        fail(str(err))


@contextmanager
def cluster(workers: int | None, scheduler: str | None, threads: int | None, memory: float | None) -> Iterator[Any]:
    """The Dask client ``--workers`` / ``--scheduler`` ask for, or ``None`` (this process)."""
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        fail("give --workers N (a local cluster) or --scheduler ADDRESS (an existing one), not both")
    from medsim.policies.dask_workers import DistributionError, dask_client

    options = worker_options(workers, threads, memory)
    try:
        with dask_client(workers=workers, scheduler=scheduler, options=options) as client:
            yield client
    except DistributionError as err:
        fail(str(err))
    except OSError as err:  # an unreachable scheduler
        fail(f"--scheduler {scheduler}: {err}")
