"""Rendering of risk reports: JSON, Markdown and self-contained HTML with figures.

Owns turning a :class:`medsim.policies.risk.RiskReport` (and, for trajectory fan charts, the rollouts
behind it) into files. May import ``medsim.policies.risk``, ``medsim.policies.result``, ``medsim.policies.spec`` and
matplotlib (Agg, off-screen); computes no statistics of its own.
"""

from medsim.io import write_bytes as write_bytes_atomic
from medsim.io import write_text as write_text_atomic
from medsim.policies.report.html import render_html
from medsim.policies.report.markdown import render_markdown
from medsim.policies.report.write import ReportFiles, check_report_folder, write_report

__all__ = [
    "ReportFiles",
    "check_report_folder",
    "render_html",
    "render_markdown",
    "write_bytes_atomic",
    "write_report",
    "write_text_atomic",
]
