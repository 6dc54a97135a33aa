"""Glucose figures of a risk report: the ambulatory glucose profile and the time-in-ranges bar.

Drawn from the report alone (:class:`medsim.policies.risk.agp.AmbulatoryProfile` and
:class:`medsim.policies.risk.glucose.GlucoseMetrics`), off-screen, as PNG bytes (None without glucose).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from medsim.policies.report.figures import png
from medsim.policies.report.text import policy_labels
from medsim.policies.risk.report import RiskReport

_AGP = "#1f5fa8"
#: Consensus range colours (the AGP report's convention: red low, green in range, yellow/orange high).
_RANGES = (
    ("< 54 mg/dL", "#8b0000"),
    ("54-69 mg/dL", "#e53935"),
    ("70-180 mg/dL", "#43a047"),
    ("181-250 mg/dL", "#fbc02d"),
    ("> 250 mg/dL", "#f57c00"),
)


def agp_figure(report: RiskReport) -> bytes | None:
    """One AGP panel per policy: 5-95% and 25-75% bands, the median with its epistemic band, 70 and 180."""
    entries = [p for p in report.policies if p.agp is not None]
    if not entries:
        return None
    labels = policy_labels(report)
    cols = min(2, len(entries))
    rows = -(-len(entries) // cols)
    fig = Figure(figsize=(4.6 * cols + 0.6, 3.0 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, sharey=True).ravel())
    top = max(np.nanmax(np.asarray(p.agp.percentiles["p95"], float), initial=250.0) for p in entries)
    for ax, p in zip(axes, entries, strict=False):
        a = p.agp
        h = np.asarray(a.clock_h)
        q = {k: np.asarray(v, float) for k, v in a.percentiles.items()}
        ax.fill_between(h, q["p05"], q["p95"], color=_AGP, alpha=0.15, lw=0, label="5-95%")
        ax.fill_between(h, q["p25"], q["p75"], color=_AGP, alpha=0.35, lw=0, label="25-75%")
        lo, hi = np.asarray(a.median_lower, float), np.asarray(a.median_upper, float)
        if np.isfinite(lo).any():
            ax.fill_between(h, lo, hi, color="black", alpha=0.3, lw=0, label=f"median, {100 * a.level:g}% interval")
        ax.plot(h, q["p50"], color="black", lw=1.4, label="median")
        for y in (70.0, 180.0):
            ax.axhline(y, color="#43a047", lw=1.0, ls="--")
        ax.axhline(54.0, color="#8b0000", lw=0.8, ls=":")
        ax.set_xlim(0, 24)
        ax.set_xticks(range(0, 25, 6), [f"{t:02d}:00" for t in range(0, 25, 6)])
        ax.set_ylim(0, max(300.0, 1.05 * top))
        ax.set_title(labels[p.policy], fontsize=9)
        ax.set_xlabel("time of day (h:min)")
    for ax in axes[len(entries) :]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("glucose (mg/dL)")
    axes[0].legend(fontsize=6.5, frameon=False, loc="upper left", ncol=2)
    return png(fig)


def time_in_ranges_figure(report: RiskReport) -> bytes | None:
    """Stacked bar per policy: mean share of time below 54, 54-69, 70-180, 181-250 and above 250 mg/dL."""
    entries = [p for p in report.policies if p.glucose is not None]
    if not entries:
        return None
    labels = policy_labels(report)
    fig = Figure(figsize=(1.3 * len(entries) + 2.6, 3.4))
    ax = fig.subplots()
    for i, p in enumerate(entries):
        g = {m.definition.name: m.mean.value for m in p.glucose.metrics}
        parts = (
            g["time_below_54"],
            g["time_below_70"] - g["time_below_54"],
            g["time_in_range"],
            g["time_above_180"] - g["time_above_250"],
            g["time_above_250"],
        )
        bottom = 0.0
        for share, (name, color) in zip(parts, _RANGES, strict=True):
            ax.bar(i, 100 * share, bottom=100 * bottom, color=color, width=0.6, label=name if i == 0 else None)
            if share >= 0.04:
                ax.annotate(
                    f"{100 * share:.0f}%", (i, 100 * (bottom + share / 2)), ha="center", va="center", fontsize=7
                )
            bottom += share
    ax.set_xticks(range(len(entries)), [labels[p.policy] for p in entries], fontsize=8, rotation=15)
    ax.set_ylabel("time (% of readings)")
    ax.set_ylim(0, 100)
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], names[::-1], fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title("Time in ranges (mean over virtual patients)", fontsize=10)
    return png(fig)
