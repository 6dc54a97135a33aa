"""Write a risk report into a folder: ``report.json``, ``report.md``, ``report.html``, ``figures/``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from policies.report.atomic import write_bytes_atomic, write_text_atomic
from policies.report.figures import report_figures
from policies.report.html import render_html
from policies.report.markdown import render_markdown
from policies.result import RolloutResult
from policies.risk.report import RiskReport


@dataclass(frozen=True)
class ReportFiles:
    """Paths of what :func:`write_report` wrote."""

    json: Path
    markdown: Path
    html: Path
    figures: tuple[Path, ...]


def write_report(
    report: RiskReport, out_dir: str | Path, *, results: Sequence[RolloutResult] | None = None
) -> ReportFiles:
    """Render ``report`` into ``out_dir`` (created if missing), each file written atomically.

    Parameters
    ----------
    report : RiskReport
    out_dir : path
    results : sequence of RolloutResult, optional
        The rollouts behind the report, for the trajectory fan charts (omitted without them).

    Returns
    -------
    ReportFiles
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = report_figures(report, results)
    fig_paths = tuple(write_bytes_atomic(out / "figures" / f"{stem}.png", png) for stem, png in figs.items())
    rel = {stem: f"figures/{stem}.png" for stem in figs}
    json_path = write_text_atomic(out / "report.json", report.to_json() + "\n")
    md_path = write_text_atomic(out / "report.md", render_markdown(report, rel))
    html_path = write_text_atomic(out / "report.html", render_html(report, figs))
    return ReportFiles(json_path, md_path, html_path, fig_paths)
