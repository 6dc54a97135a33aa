"""``medsim datasets`` and ``medsim validate`` (cohort data commands)."""

from __future__ import annotations

from medsim.cli.app import app  # noqa: F401  (commands are added by the data package work)
