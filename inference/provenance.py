"""Provenance of a fit: package versions and timestamps, as plain JSON-serialisable values."""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata

_PACKAGES = ("medsim", "numpy", "scipy", "jax", "jaxlib", "numpyro", "arviz", "xarray", "h5netcdf", "pymc")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a fit depends on (``"not installed"`` if absent)."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def utc_timestamp() -> str:
    """Current UTC time, ISO 8601 with seconds (``2025-01-31T12:00:00+00:00``)."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
