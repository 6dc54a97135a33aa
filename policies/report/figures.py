"""Figures of a risk report, rendered off-screen (Agg) to compact PNG bytes.

Each function builds its own :class:`matplotlib.figure.Figure` (no pyplot state) and returns
PNG bytes, or None where the data for it are missing. Fan charts need the rollouts (saved
paths); the other figures are drawn from the report alone.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from medsim.policies.report.text import efficacy_metric, policy_labels, with_unit
from medsim.policies.result import RolloutResult
from medsim.policies.risk.report import RiskReport
from medsim.policies.spec import SafetySpec
from medsim.units import convert_time

_DPI = 96
_PALETTE = 128
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_BOUND_COLOR = "#b22222"


def png(fig: Figure) -> bytes:
    """Compact PNG: rendered in RGB, reduced to a 128-colour palette (line plots and translucent
    bands need few colours; the file shrinks about fourfold), no timestamp or software tag so
    that the same report gives the same bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # Read back at once: no zlib compression of this intermediate PNG (the pixels are the same).
    fig.savefig(
        buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None}, pil_kwargs={"compress_level": 0}
    )
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").quantize(colors=_PALETTE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _time_axis(unit: str, horizon: float) -> tuple[float, str]:
    """Scale from the model's time unit to the axis unit: hours beyond 3 h, else the model's unit."""
    try:
        hours = convert_time(1.0, unit, "h")
    except (KeyError, ValueError):
        return 1.0, unit
    return (hours, "h") if horizon * hours > 3.0 else (1.0, unit)


def _paths(result: RolloutResult, observable: str, max_paths: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, T) times and values: saved paths, else the noise-free values at interaction times."""
    if result.path_time is not None and observable in result.path:
        return np.asarray(result.path_time, float), np.asarray(result.path[observable], float)
    mask = np.asarray(result.mask, bool)[:max_paths]
    t = np.where(mask, np.asarray(result.t_start, float)[:max_paths], np.nan)
    v = np.where(mask, np.asarray(result.true_start[observable], float)[:max_paths], np.nan)
    return t, v


def fan_chart(
    result: RolloutResult,
    spec: SafetySpec,
    *,
    n_individual: int = 5,
    max_paths: int = 200,
    label: str | None = None,
    units: dict | None = None,
) -> bytes:
    """Quantile bands (5-25-50-75-95%) of each bounded observable over time, a few individual
    paths, the bounds, and the measurement times of the individual paths. ``label`` names the
    policy in the title; ``units`` maps observables to their units (axis labels)."""
    observables = spec.observables
    units = units or {}
    scale, axis_unit = _time_axis(result.time_unit, float(result.horizon))
    fig = Figure(figsize=(7.5, 2.6 * len(observables)))
    axes = fig.subplots(len(observables), 1, squeeze=False)[:, 0]
    horizon = float(result.horizon)
    grid = np.linspace(0.0, horizon, 241)
    for ax, obs in zip(axes, observables, strict=True):
        t, v = _paths(result, obs, max_paths)
        curves = []
        for ti, vi in zip(t, v, strict=True):
            ok = np.isfinite(ti) & np.isfinite(vi)
            if ok.sum() >= 2:
                curves.append(np.interp(grid, ti[ok], vi[ok], left=np.nan, right=np.nan))
            elif ok.sum() == 1:
                curves.append(np.full(grid.shape, vi[ok][0]))
        if curves:
            y = np.asarray(curves)
            q = np.full((5, grid.size), np.nan)
            some = np.isfinite(y).any(axis=0)  # times after every path ended stay blank
            q[:, some] = np.nanquantile(y[:, some], [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
            ax.fill_between(scale * grid, q[0], q[4], color=_COLORS[0], alpha=0.18, lw=0, label="5-95%")
            ax.fill_between(scale * grid, q[1], q[3], color=_COLORS[0], alpha=0.35, lw=0, label="25-75%")
            ax.plot(scale * grid, q[2], color=_COLORS[0], lw=1.6, label="median")
            for i in range(min(n_individual, y.shape[0])):
                ax.plot(
                    scale * grid, y[i], color="0.35", lw=0.7, alpha=0.8, label="individual paths" if i == 0 else None
                )
        measured = result.measured.get(obs)
        if measured is not None:
            m = np.asarray(measured, float)[:n_individual]
            ts = np.asarray(result.t_start, float)[:n_individual]
            ok = np.isfinite(m) & np.isfinite(ts)
            if ok.any():
                ax.plot(scale * ts[ok], m[ok], "o", ms=3, color="black", label="measurements (noisy)")
                ax.plot(
                    scale * ts[ok], np.zeros(ok.sum()), "|", ms=8, color="black", transform=ax.get_xaxis_transform()
                )
        for b in spec.bounds:
            if b.observable == obs:
                ax.axhline(b.value, color=_BOUND_COLOR, ls="--", lw=1.2)
                ax.annotate(b.name, (scale * horizon, b.value), color=_BOUND_COLOR, fontsize=8, ha="right", va="bottom")
        ax.set_xlim(0.0, scale * horizon)
        ax.set_ylabel(with_unit(obs, units.get(obs, "")))
        ax.legend(fontsize=7, loc="upper left", ncol=3, frameon=False)
    axes[-1].set_xlabel(f"time ({axis_unit})")
    axes[0].set_title(f"{label or result.policy}: trajectories against the safety bounds", fontsize=10)
    return png(fig)


def risk_curve_figure(report: RiskReport) -> bytes:
    """P(first violation <= t), any bound: bridge (continuous time, solid, band) and grid (dashed)."""
    fig = Figure(figsize=(7.5, 3.2))
    ax = fig.subplots()
    labels = policy_labels(report)
    scale, axis_unit = _time_axis(report.time_unit, report.spec.horizon)
    for i, p in enumerate(report.policies):
        c = _COLORS[i % len(_COLORS)]
        t = scale * np.asarray(p.curve.time)
        val = np.array([e.value for e in p.curve.bridge])
        lo = np.array([e.lower for e in p.curve.bridge])
        hi = np.array([e.upper for e in p.curve.bridge])
        name = labels[p.policy]
        ax.fill_between(t, 100 * lo, 100 * hi, color=c, alpha=0.2, lw=0, step="post")
        ax.step(t, 100 * val, where="post", color=c, lw=1.6, label=f"{name} (continuous time)")
        grid = 100 * np.array([e.value for e in p.curve.grid])
        ax.step(t, grid, where="post", color=c, lw=1.0, ls="--", label=f"{name} (grid)")
    ax.axhline(100 * report.spec.epsilon, color=_BOUND_COLOR, ls=":", lw=1.2, label="epsilon")
    ax.set_xlabel(f"time ({axis_unit})")
    ax.set_ylabel("P(first violation <= t) (%)")
    ax.set_xlim(0.0, scale * report.spec.horizon)
    ax.set_ylim(bottom=0.0)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"Violation probability over time ({100 * (1 - report.spec.delta):g}% pointwise bands)", fontsize=10)
    return png(fig)


def epistemic_figure(report: RiskReport) -> bytes | None:
    """Histogram of the per-draw risk p(theta_d) per policy, epsilon marked."""
    entries = [p for p in report.policies if p.epistemic is not None]
    if not entries:
        return None
    cols = min(3, len(entries))
    rows = -(-len(entries) // cols)
    fig = Figure(figsize=(2.8 * cols + 0.8, 2.4 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    labels = policy_labels(report)
    for i, (ax, p) in enumerate(zip(axes, entries, strict=False)):
        risk = 100 * np.asarray(p.epistemic.per_draw)
        top = max(float(risk.max(initial=0.0)), 100 * report.spec.epsilon) * 1.1 or 100.0
        ax.hist(risk, bins=np.linspace(0.0, top, 25), color=_COLORS[i % len(_COLORS)], alpha=0.8)
        ax.axvline(100 * report.spec.epsilon, color=_BOUND_COLOR, ls="--", lw=1.2, label="epsilon")
        ax.set_title(labels[p.policy], fontsize=9)
        ax.set_xlabel("risk given posterior draw (%)")
        ax.legend(fontsize=7, frameon=False)
    for ax in axes[len(entries) :]:
        ax.set_visible(False)
    axes[0].set_ylabel("draws")
    return png(fig)


def efficacy_risk_figure(report: RiskReport) -> bytes | None:
    """Efficacy metric vs joint violation probability, with error bars, one point per policy."""
    metric = efficacy_metric(report)
    if metric is None:
        return None
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    labels = policy_labels(report)
    unit = report.units.get(metric, "")
    k = 100.0 if unit == "%" else 1.0
    for i, p in enumerate(report.policies):
        r, e = p.joint.bridge, p.efficacy[metric]
        ax.errorbar(
            [100 * r.value],
            [k * e.value],
            # an estimate without an interval gets no bar (never a zero-width one)
            xerr=[[100 * (r.value - r.lower)], [100 * (r.upper - r.value)]] if r.has_interval else None,
            yerr=[[k * (e.value - e.lower)], [k * (e.upper - e.value)]] if e.has_interval else None,
            fmt="o",
            color=_COLORS[i % len(_COLORS)],
            capsize=3,
            label=labels[p.policy],
        )
    ax.axvline(100 * report.spec.epsilon, color=_BOUND_COLOR, ls="--", lw=1.2, label="epsilon")
    ax.set_xlabel("P(violation), continuous time (%)")
    ax.set_ylabel(with_unit(report.labels.get(metric, metric.replace("_", " ")), unit))
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("Efficacy against risk", fontsize=10)
    return png(fig)


def report_figures(report: RiskReport, results: Sequence[RolloutResult] | None = None) -> dict[str, bytes]:
    """All figures, keyed by file stem: ``fan_<i>``, ``risk_curve``, ``epistemic``, ``efficacy_risk``,
    and for glucose ``agp`` and ``time_in_ranges``. A streamed rollout's fan chart shows its recorded
    patients (:mod:`medsim.policies.streamed`)."""
    from medsim.policies.report.glucose_figures import agp_figure, time_in_ranges_figure

    figs: dict[str, bytes] = {}
    by_name = {r.policy: getattr(r, "rows", r) for r in results or ()}
    labels = policy_labels(report)
    for i, p in enumerate(report.policies):
        if p.policy in by_name:
            figs[f"fan_{i}"] = fan_chart(by_name[p.policy], report.spec, label=labels[p.policy], units=report.units)
    figs["risk_curve"] = risk_curve_figure(report)
    for name, fn in (
        ("agp", agp_figure),
        ("time_in_ranges", time_in_ranges_figure),
        ("epistemic", epistemic_figure),
        ("efficacy_risk", efficacy_risk_figure),
    ):
        png = fn(report)
        if png is not None:
            figs[name] = png
    return figs
