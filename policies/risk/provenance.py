"""Where a risk report's numbers come from: seed, model, data, posterior, fit quality, versions.

A risk estimate is only as good as the posterior behind it. The fit's diagnostics travel with
the report, and a fit that failed them (R-hat, ESS, divergences, E-BFMI) turns into a loud
warning at the top of every rendering; so does a model that failed its held-out calibration
gate (:class:`medsim.models.gate.CalibrationGate`, its figures in the warning) or whose
calibration was never checked.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from medsim.models.gate import CalibrationGate

_PACKAGES = ("medsim", "numpy", "scipy", "jax", "numpyro", "arviz", "torch", "matplotlib")


@dataclass(frozen=True)
class FitDiagnostics:
    """Summary of the posterior fit's convergence diagnostics.

    Attributes
    ----------
    ok : bool or None
        True if all diagnostics passed, False if any failed, None if not applicable (e.g. a
        prior-only population or an SVI fit) or unknown.
    problems : tuple of str
        Human-readable failures.
    summary : dict
        Headline numbers (max R-hat, min ESS, divergences, method, ...).
    """

    ok: bool | None = None
    problems: tuple[str, ...] = ()
    summary: dict[str, float | int | str | bool | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Provenance:
    """Provenance of a risk report.

    Attributes
    ----------
    seed : int or None
        Seed of the rollouts.
    model, model_version : str
    data_hash : str
        Hash of the cohort the posterior was fitted to ("" if none).
    posterior_file : str
    fit : FitDiagnostics
    versions : dict str -> str
        Python and package versions at report time.
    created : str
        ISO 8601 UTC timestamp.
    settings : dict str -> str
        Anything else that was given (simulator step, scheme, population mode, command line).
    calibration : CalibrationGate or None
        The model's held-out calibration gate (None: not stated by the caller).
    calibration_forced : bool
        The gate was overridden (``--force``).
    """

    seed: int | None = None
    model: str = ""
    model_version: str = ""
    data_hash: str = ""
    posterior_file: str = ""
    fit: FitDiagnostics = field(default_factory=FitDiagnostics)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    calibration: CalibrationGate | None = None
    calibration_forced: bool = False

    def warnings(self) -> tuple[str, ...]:
        """Loud warnings to show first (failed calibration gate, failed fit diagnostics)."""
        out = []
        gate = self.calibration
        if gate is not None and gate.failed:
            tail = (
                "The gate was overridden with --force: the verdicts stand, but every risk figure below rests on "
                "intervals known to be wrong."
                if self.calibration_forced
                else "No verdict below reads PASS; fix the model (or override with --force, recorded)."
            )
            out.append(f"{gate.summary()}. {tail}")
        elif gate is not None and gate.status == "not_checked":
            out.append(
                f"{gate.summary()}. Nothing shows that this model predicts new measurements honestly; run "
                "`medsim check POSTERIOR --cohort COHORT --heldout-fraction 0.25` before relying on these figures."
            )
        population = str(self.settings.get("population", ""))
        if str(self.fit.summary.get("method", "")).startswith("svi") and population.startswith("population"):
            out.append(
                "NEW PATIENTS FROM A VARIATIONAL (SVI) FIT: how these patients differ from one another comes from "
                "SVI's posterior of the between-subject SDs, which medsim's simulation-based calibration found too "
                "narrow on the glucose model (docs/fitting.md); risks that depend on that spread may be understated. "
                "Refit with --method nuts for figures that rest on it."
            )
        if self.fit.ok is False:
            detail = "; ".join(self.fit.problems) or "see the fit's diagnostics"
            out.append(
                "FIT DIAGNOSTICS FAILED: the posterior these patients were drawn from did not pass its "
                f"convergence checks ({detail}). Every risk number below inherits that problem."
            )
        return tuple(out)


def package_versions() -> dict[str, str]:
    """Python and installed versions of the packages a report depends on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


#: What a report says of a variational fit's posterior (docs/fitting.md, "Simulation-based calibration").
SVI_CAVEAT = (
    "approximate (multivariate-normal guide). In medsim's simulation-based calibration of the glucose "
    "model, SVI's between-subject SD posteriors were too narrow, so the spread between new patients, and "
    "every risk that depends on it, may be understated; refit with --method nuts for figures that rest on it"
)


def sampler_summary(diagnostics: Any) -> dict[str, Any]:
    """The headline figures of a fit's diagnostics (an object with ``method``, as
    :class:`medsim.inference.diagnostics.Diagnostics`): how it was fitted and what was checked."""
    method = getattr(diagnostics, "method", None)
    if method is None:
        return {}
    get = lambda k: getattr(diagnostics, k, None)  # noqa: E731
    if get("applicable") is False:
        elbo = get("elbo")
        return {
            "method": f"{method} (variational)",
            "final ELBO (nats)": "unknown" if elbo is None else f"{elbo:.2f}",
            "checked": "; ".join(get("checks") or ()) or "nothing",
            "posterior": SVI_CAVEAT if method == "svi" else "approximate (variational)",
        }
    shown = lambda k, fmt: "unknown" if get(k) is None else format(get(k), fmt)  # noqa: E731
    return {
        "method": method,
        "chains x draws": f"{get('chains')} x {get('draws')}",
        "max R-hat": shown("rhat_max", ".3f"),
        "min bulk ESS": shown("ess_bulk_min", ".0f"),
        "divergences": shown("divergences", "d"),
        "min E-BFMI": shown("ebfmi_min", ".2f"),
    }


def _fit(raw: Any) -> FitDiagnostics:
    if raw is None:
        return FitDiagnostics()
    if isinstance(raw, FitDiagnostics):
        return raw
    get = raw.get if isinstance(raw, Mapping) else lambda k, d=None: getattr(raw, k, d)
    ok = get("ok", None)
    problems = tuple(str(p) for p in (get("problems", ()) or ()))
    summary_raw = get("summary", None)
    if summary_raw is None and isinstance(raw, Mapping):
        summary_raw = {k: v for k, v in raw.items() if k not in ("ok", "problems")}
    elif summary_raw is None:
        summary_raw = sampler_summary(raw)
    summary = {
        str(k): (v if v is None or isinstance(v, bool | int | float | str) else str(v))
        for k, v in dict(summary_raw or {}).items()
    }
    return FitDiagnostics(None if ok is None else bool(ok), problems, summary)


def make_provenance(
    given: Mapping[str, Any] | Provenance | None, rollout: Mapping[str, Any] | None = None
) -> Provenance:
    """Provenance from what the caller gives, completed from a rollout's own provenance.

    Parameters
    ----------
    given : mapping or Provenance or None
        Keys ``seed``, ``model`` (name, or a mapping with ``name``/``version``),
        ``model_version``, ``data_hash``, ``posterior_file``, ``fit_diagnostics`` (a mapping or
        an object with ``ok`` and ``problems``); other keys go to ``settings``.
    rollout : mapping or None
        ``RolloutResult.provenance`` of the first rollout (same keys), used where ``given`` is silent.
    """
    if isinstance(given, Provenance):
        return given
    merged: dict[str, Any] = {**dict(rollout or {}), **{k: v for k, v in dict(given or {}).items() if v is not None}}
    model = merged.pop("model", "")
    version = merged.pop("model_version", "")
    if isinstance(model, Mapping):
        version = version or str(model.get("version", ""))
        model = str(model.get("name", ""))
    elif hasattr(model, "name") and not isinstance(model, str):
        version = version or str(getattr(model, "version", ""))
        model = str(model.name)
    fit = _fit(merged.pop("fit_diagnostics", merged.pop("diagnostics", None)))
    gate = merged.pop("calibration", None)
    if isinstance(gate, str):
        gate = CalibrationGate.from_json(gate)
    forced = bool(merged.pop("calibration_forced", False))
    seed = merged.pop("seed", None)
    versions = {**package_versions(), **{str(k): str(v) for k, v in dict(merged.pop("versions", {}) or {}).items()}}
    return Provenance(
        seed=None if seed is None else int(seed),
        model=str(model),
        model_version=str(version),
        data_hash=str(merged.pop("data_hash", "")),
        posterior_file=str(merged.pop("posterior_file", "")),
        fit=fit,
        versions=versions,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        settings={str(k): str(v) for k, v in merged.items()},
        calibration=gate,
        calibration_forced=forced,
    )
