"""Work known before simulating: interactions and memory, checked against limits the user can raise.

A horizon of 1e9 h, an interaction every 1e-9 h or ten billion patients are accepted by every
check of form and would then run for hours or die in an allocation. Both numbers are known before
the first sub-step: the number of interaction intervals is the horizon divided by the interval,
and the memory grows with patients x intervals (per-interval statistics are kept) plus patients
x (states + parameters + doses). :func:`check_work` compares them with the limits and raises
:class:`WorkLimitError`, whose message gives the estimate and how to raise the limit.

Defaults: :data:`DEFAULT_MAX_INTERACTIONS` interaction intervals per patient (a year of
5-minute glucose readings), and half of the machine's physical memory
(:func:`default_max_memory`).
"""

from __future__ import annotations

import math
import os

DEFAULT_MAX_INTERACTIONS = 100_000

# Fraction of the physical memory one run may plan to use by default.
DEFAULT_MEMORY_FRACTION = 0.5


class WorkLimitError(ValueError):
    """The planned work (interactions or memory) exceeds its limit; the message says how to raise it.

    Attributes
    ----------
    what : str
        ``"interactions"`` or ``"memory"``.
    estimate, limit : float
        The planned amount and the limit (interactions per patient, or bytes).
    """

    def __init__(self, message: str, *, what: str, estimate: float, limit: float):
        super().__init__(message)
        self.what, self.estimate, self.limit = what, float(estimate), float(limit)


def default_max_memory() -> int:
    """Half of the machine's physical memory in bytes (8 GiB where the OS does not say)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        total = 16 * 2**30
    return int(DEFAULT_MEMORY_FRACTION * total)


def format_bytes(n: float) -> str:
    """``3.2 GiB``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def parse_memory(text: str) -> int:
    """``"8GiB"``, ``"8 GB"``, ``"512MiB"``, ``"1e9"`` (bytes) -> bytes.

    Raises
    ------
    ValueError
        For anything else, naming the expected form.
    """
    units = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20}
    units |= {"g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num) :]
    try:
        value = float(num)
    except ValueError:
        value = math.nan
    if unit not in units or not (math.isfinite(value) and value > 0):
        raise ValueError(f"memory limit {text!r}: expected a positive size such as 8GiB, 512MiB or 2e9 (bytes)")
    return int(value * units[unit])


def interaction_count(horizon: float, interval: float) -> float:
    """Interaction intervals needed to cover ``horizon`` at ``interval`` (``inf`` for interval <= 0)."""
    return math.ceil(horizon / interval) if interval > 0 and math.isfinite(horizon / interval) else math.inf


def check_work(
    *,
    interactions: float,
    memory: float,
    max_interactions: int | None,
    max_memory: int | None,
    detail: str,
    interactions_option: str = "max_interactions",
    memory_option: str = "max_memory",
) -> None:
    """Raise :class:`WorkLimitError` when the planned work exceeds a limit.

    Parameters
    ----------
    interactions : float
        Interaction intervals per patient.
    memory : float
        Planned memory in bytes.
    max_interactions, max_memory : int or None
        Limits (``None``: the defaults of the module docstring).
    detail : str
        What the estimate comes from (horizon, interval, patients), for the message.
    interactions_option, memory_option : str
        How the caller raises each limit (a keyword or a CLI option), for the message.
    """
    limit_k = DEFAULT_MAX_INTERACTIONS if max_interactions is None else int(max_interactions)
    limit_m = default_max_memory() if max_memory is None else int(max_memory)
    if interactions > limit_k:
        raise WorkLimitError(
            f"{detail}: about {interactions:.3g} interaction intervals per patient, above the limit of "
            f"{limit_k}; raise it with {interactions_option} if this much work is intended",
            what="interactions",
            estimate=interactions,
            limit=limit_k,
        )
    if memory > limit_m:
        raise WorkLimitError(
            f"{detail}: about {format_bytes(memory)} of memory, above the limit of {format_bytes(limit_m)}; use "
            f"fewer patients or a shorter horizon, or raise the limit with {memory_option} if the machine has "
            "the memory",
            what="memory",
            estimate=memory,
            limit=limit_m,
        )
