"""Dask worker processes for medsim: their JAX settings and the embedded local cluster.

:class:`WorkerOptions` are applied in each worker process before JAX starts (CPU threads, the
fraction of an accelerator's memory, the compilation cache folder; :func:`configure_worker`).
:func:`dask_client` connects to a scheduler or starts a local cluster whose workers are spawned,
never forked (JAX is multithreaded). What the workers run is :mod:`medsim.policies.distribute`
(closed-loop shards) or any medsim function over plain-data items (:func:`map_on_cluster`: the SVI
fits of simulation-based calibration).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DistributionError(ValueError):
    """The evaluation cannot be distributed as asked (names the model, option or worker)."""


@dataclass(frozen=True)
class WorkerOptions:
    """Per-worker JAX settings, applied in each worker process before JAX starts.

    Attributes
    ----------
    threads : int, optional
        CPU threads of each worker's BLAS / OpenMP pools (default: theirs). With several workers
        per machine, ``cores / workers`` avoids oversubscription. Workers of the embedded local
        cluster (:func:`dask_client`) are also pinned to ``threads`` cores each, disjoint while the
        machine has enough (:func:`pin_workers`): XLA's own CPU thread pool, which no variable
        outside its compiler flags limits, then stays on the worker's cores.
    memory_fraction : float, optional
        Fraction of an accelerator's memory each worker's JAX may take (``0 < f <= 1``), e.g.
        ``0.45`` for two workers sharing one GPU; also turns JAX's preallocation off.
    compile_cache : str, optional
        Persistent compilation cache folder (or ``"off"``); default: the client's setting
        (:func:`medsim.compile_cache.cache_dir`), so workers on one file system share programs.
    """

    threads: int | None = None
    memory_fraction: float | None = None
    compile_cache: str | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise DistributionError(f"worker threads: expected an int >= 1, got {self.threads!r}")
        if self.memory_fraction is not None and not 0 < float(self.memory_fraction) <= 1:
            raise DistributionError(f"worker memory fraction: expected 0 < f <= 1, got {self.memory_fraction!r}")

    def environ(self) -> dict[str, str]:
        """Environment variables that carry these settings into a worker process."""
        from medsim.compile_cache import ENV, OFF, cache_dir, environ

        env: dict[str, str] = {}
        if self.threads is not None:
            # Thread pools of numpy's BLAS and OpenMP. XLA_FLAGS are left alone: they are part of
            # the compilation cache's key, and workers with other flags than the client would
            # compile every program again instead of loading it.
            t = str(int(self.threads))
            env.update({k: t for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
        if self.memory_fraction is not None:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{float(self.memory_fraction):g}"
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        folder = self.compile_cache if self.compile_cache is not None else cache_dir()
        if folder is not None and str(folder).strip().lower() in OFF:
            folder = None
        env[ENV] = "off" if folder is None else str(folder)
        env.update(environ(None if folder is None else Path(folder)))  # read by JAX when it starts
        return env


def configure_worker(options: WorkerOptions) -> None:
    """Apply ``options`` in this (worker) process: environment first, then the compile cache.

    Settings read when JAX starts (threads, memory) only take effect if JAX is not imported yet,
    which holds for workers started by :func:`dask_client`; the compile cache works either way.
    """
    env = options.environ()
    if "jax" not in sys.modules:
        os.environ.update(env)
    from medsim.compile_cache import ENV, enable

    enable(env=env if ENV in env else None)


@contextmanager
def dask_client(
    workers: int | None = None, scheduler: str | None = None, options: WorkerOptions | None = None
) -> Iterator[Any]:
    """A Dask client: an embedded local cluster of ``workers`` processes, or ``scheduler``'s.

    The local cluster starts its workers with ``spawn`` (one thread each, ``options`` in their
    environment before JAX starts) and is shut down on exit; an existing scheduler is only
    connected to.
    """
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise DistributionError(
            f"distributed evaluation needs dask[distributed] (pip install medsim[dask]): {err}"
        ) from None
    if (workers is None) == (scheduler is None):
        raise DistributionError("give either a number of workers or a scheduler address")
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    if int(workers) < 1:
        raise DistributionError(f"workers: expected an int >= 1, got {workers!r}")
    import logging

    options = options or WorkerOptions()
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        with (
            LocalCluster(
                n_workers=int(workers),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
                env=options.environ(),
            ) as cluster,
            Client(cluster) as client,
        ):
            if options.threads is not None:
                pin_workers(client, int(options.threads))
            yield client


def map_on_cluster(
    client: Any, fn: Callable[[Any], Any], items: Sequence[Any], options: WorkerOptions | None = None
) -> list:
    """``[fn(item) for item in items]`` on ``client``'s workers, results in the order of ``items``.

    ``fn`` must be importable on the workers by name (a module-level function of medsim) and each
    item plain data (numbers, arrays, names, frozen dataclasses of them), as the shard tasks are;
    each task first applies ``options`` in its worker (:func:`configure_worker`). Used for the SVI
    fits of simulation-based calibration (``medsim sbc --workers N``).
    """
    options = options or WorkerOptions()
    futures = [client.submit(_configured, options, fn, item, pure=False) for item in items]
    return list(client.gather(futures))


def _configured(options: WorkerOptions, fn: Callable[[Any], Any], item: Any) -> Any:
    configure_worker(options)
    return fn(item)


def pin_workers(client: Any, cores_per_worker: int) -> dict[str, list[int]]:
    """Pin each worker of ``client`` (processes on this machine) to ``cores_per_worker`` cores of
    this process's CPU set, the i-th worker to the i-th block while blocks last (then from the
    start again); returns the cores per worker address. A no-op where the platform has no CPU
    affinity (``os.sched_setaffinity``)."""
    if not hasattr(os, "sched_setaffinity"):
        return {}
    cores = sorted(os.sched_getaffinity(0))
    k = max(1, min(int(cores_per_worker), len(cores)))
    blocks = [cores[i : i + k] for i in range(0, len(cores) - k + 1, k)] or [cores]
    plan = {addr: blocks[i % len(blocks)] for i, addr in enumerate(sorted(client.scheduler_info()["workers"]))}
    for addr, block in plan.items():
        client.run(_pin_process, block, workers=[addr])
    return plan


def _pin_process(cores: list[int]) -> None:
    """Run in a worker: every thread of this process (threads started later inherit it) on ``cores``."""
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else [0]:
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that ended meanwhile
            pass
