"""The machine a benchmark ran on, as recorded in its results file."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_info(cores: int) -> dict:
    """CPU model (from /proc/cpuinfo where there is one), ``cores`` used, platform and the load at start."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": cores, "platform": platform.platform(), "load_average_at_start": os.getloadavg()}
