"""Write a risk report into a folder: ``report.json``, ``report.md``, ``report.html``, ``figures/``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medsim.io import atomic_folder, check_folder, write_bytes, write_text
from medsim.policies.report.figures import report_figures
from medsim.policies.report.html import render_html
from medsim.policies.report.markdown import render_markdown
from medsim.policies.result import RolloutResult
from medsim.policies.risk.report import RiskReport

# What a report folder holds; other files in an existing folder (a posterior beside its report)
# are kept, other sub-folders make the writer refuse the folder.
REPORT_ENTRIES = ("report.json", "report.md", "report.html", "figures")


def check_report_folder(out_dir: str | Path) -> None:
    """Raise :class:`medsim.io.FolderWriteError` now if :func:`write_report` would refuse ``out_dir``
    (a file, or a folder holding sub-folders that are not part of a report): call it before the work."""
    check_folder(out_dir, owned=REPORT_ENTRIES)


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
    """Render ``report`` into ``out_dir`` as one unit (see :func:`medsim.io.atomic_folder`).

    Every file is rendered into a temporary sibling folder, which then replaces ``out_dir``: a
    reader sees the previous report or this one, never a mix, a run that fails or is killed leaves
    the previous report whole, and figures of an earlier run (a fan chart of a policy no longer
    evaluated) do not survive. Files in ``out_dir`` that are not part of a report are kept.

    Parameters
    ----------
    report : RiskReport
    out_dir : path
        Created if missing (with its parents).
    results : sequence of RolloutResult, optional
        The rollouts behind the report, for the trajectory fan charts (omitted without them).

    Returns
    -------
    ReportFiles

    Raises
    ------
    medsim.io.FolderWriteError
        ``out_dir`` is a file, or a folder holding sub-folders that are not part of a report.
    """
    out = Path(out_dir)
    with atomic_folder(out, owned=REPORT_ENTRIES) as tmp:
        figs = report_figures(report, results)
        for stem, png in figs.items():
            write_bytes(tmp / "figures" / f"{stem}.png", png)
        rel = {stem: f"figures/{stem}.png" for stem in figs}
        write_text(tmp / "report.json", report.to_json() + "\n")
        write_text(tmp / "report.md", render_markdown(report, rel))
        write_text(tmp / "report.html", render_html(report, figs))
    return ReportFiles(
        out / "report.json",
        out / "report.md",
        out / "report.html",
        tuple(out / "figures" / f"{stem}.png" for stem in figs),
    )
