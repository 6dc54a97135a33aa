"""Where ``medsim risk``'s virtual patients come from, and what the report says about their source.

A posterior file (its draws, fit diagnostics, stored calibration gate and the fitted cohort's
support), a model's priors (no fit, calibration not checked), or a neural checkpoint (its
provenance and the warnings that lead its report). Bad input exits with status 2 naming what
was wrong (:func:`medsim.cli.app.fail`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medsim.cli.app import fail as _fail

SUPPORT_UNKNOWN = {
    "posterior": "{} records no cohort support (written by an earlier medsim); refit to check it",
    "prior": "patients are drawn from the model's priors, there is no fitted cohort to compare with",
    "checkpoint": "the checkpoint {} records no training-data ranges",
}


def prior_draws(prior: str, n: int, seed: int) -> Any:
    """``n`` draws from the priors of the registered model ``prior`` (exit 2 naming the known models)."""
    import medsim.models as registry
    from medsim.population import PosteriorDraws

    try:
        return PosteriorDraws.from_prior(registry.get(prior), n, seed=seed)
    except registry.UnknownModelError as err:
        _fail(str(err))


def read_posterior(posterior: Path) -> tuple[Any, Any, Any]:
    """``(Posterior, its draws, its calibration gate)`` from a posterior file; a missing, malformed or
    foreign file exits with status 2 naming it (no traceback)."""
    from medsim.models.gate import CalibrationGate

    if not posterior.exists():
        _fail(f"{posterior}: no such posterior file")
    try:
        from medsim.inference.posterior import Posterior
    except ImportError as err:
        _fail(f"reading posterior files needs the inference package ({err}); use --prior MODEL meanwhile")
    try:
        post = Posterior.load(posterior)
        draws = post.draws()
        gate = post.calibration() or CalibrationGate.unchecked(f"{posterior} holds no held-out calibration check")
    except (ValueError, OSError, KeyError) as err:
        _fail(f"{posterior}: {err}")
    return post, draws, gate


def load_draws(
    posterior: Path | None, prior: str | None, prior_draws_n: int, seed: int
) -> tuple[Any, dict, dict | None]:
    """Posterior draws, the provenance that goes with them (data hash, fit diagnostics, calibration)
    and the fitted cohort's observed ranges for the out-of-support flag (None for priors or a
    posterior without them); the posterior file is read once."""
    from medsim.models.gate import CalibrationGate

    if (posterior is None) == (prior is None):
        _fail("give either a POSTERIOR file or --prior MODEL (not both)")
    if prior is not None:
        draws = prior_draws(prior, prior_draws_n, seed)
        fit = {"ok": None, "problems": (), "summary": {"source": "model priors (no fit)"}}
        gate = CalibrationGate.unchecked("patients drawn from the model's priors: no fit, no held-out check")
        return draws, {"posterior_file": f"prior:{prior}", "fit_diagnostics": fit, "calibration": gate}, None
    post, draws, gate = read_posterior(posterior)
    try:
        support = post.support()
    except (ValueError, OSError, KeyError) as err:
        _fail(f"{posterior}: {err}")
    prov = dict(draws.provenance)
    fit = prov.get("fit_diagnostics", prov.get("diagnostics"))
    diagnostics = getattr(post, "diagnostics", None)
    if fit is None and diagnostics is not None:
        fit = diagnostics() if callable(diagnostics) else diagnostics
    out = {"posterior_file": str(posterior), "data_hash": prov.get("data_hash", ""), "fit_diagnostics": fit}
    return draws, {**out, "calibration": gate}, support


def coverage_text(prov: Mapping[str, Any]) -> str:
    c90, c50 = prov.get("calibration_coverage_90"), prov.get("calibration_coverage_50")
    if c90 is None:
        return "it was never calibrated on held-out subjects"
    c50_text = "n/a" if c50 is None else f"{c50:.3f}"
    return (
        f"its held-out 90% predictive intervals covered {c90:.3f} and its 50% intervals {c50_text} of "
        f"{prov.get('calibration_n_predictions', '?')} measurements ({prov.get('calibration_n_subjects', '?')} "
        "subjects)"
    )


def neural_report_context(prov: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Report provenance and report-level warnings for patients sampled from a neural checkpoint.

    Parameters
    ----------
    prov : mapping
        The population's provenance from :func:`medsim.cli.neural_cmds.neural_population_cli`.

    Returns
    -------
    (dict, tuple of str)
        Provenance for :func:`medsim.policies.evaluate.evaluate_policies` (checkpoint as the posterior
        file, the training data hash, training summary as the fit, the checkpoint's digests and
        calibration as settings), and the warnings to put first: that the model is learned, and
        that the calibration gate was overridden if it was.
    """
    floor = float(prov["calibration_floor"])
    coverage = coverage_text(prov)
    passed = bool(prov["calibration_passed"])
    gate = "passed" if passed else f"FORCED past the gate (--force): {coverage}, floor {floor:.2f}"
    training = ("best_epoch", "epochs_run", "best_validation_elbo_per_observation", "n_weights")
    out = {
        "posterior_file": prov["checkpoint"],
        "data_hash": prov.get("data_hash", ""),
        # R-hat and ESS do not apply: the weights are a variational fit with early stopping; the
        # held-out calibration is this model's check, reported under the calibration entries.
        "fit_diagnostics": {
            "ok": None,
            "problems": (),
            "summary": {"method": "neural SDE, variational training", **{k: prov[k] for k in training if k in prov}},
        },
        "model_kind": "learned (neural CDE encoder + latent neural SDE; no mechanistic structure)",
        "neural_checkpoint": prov["checkpoint"],
        "neural_weights_sha256": prov.get("checkpoint_weights_sha256", ""),
        "neural_config_sha256": prov.get("config_sha256", ""),
        "neural_training_cohort": prov.get("training_cohort", ""),
        "neural_cohort_used": prov.get("cohort_used", ""),
        "calibration_coverage_90": prov.get("calibration_coverage_90"),
        "calibration_coverage_50": prov.get("calibration_coverage_50"),
        "calibration_n_predictions": prov.get("calibration_n_predictions"),
        "calibration_floor": floor,
        "calibration_gate": gate,
    }
    warnings = [
        f"LEARNED MODEL: these virtual patients come from the neural model {prov['model']!r} "
        f"({prov['checkpoint']}), not from a mechanistic model; {coverage}. It knows only the doses, "
        "schedules and covariates it was trained on; validate its risk figures against observed "
        "exceedances before acting on them."
    ]
    if not passed:
        warnings.append(
            f"CALIBRATION GATE OVERRIDDEN (--force): {coverage}, below the floor {floor:.2f}. Its predictive "
            "intervals are too narrow or unchecked, so every risk figure and interval below is likely too small."
        )
    return out, tuple(warnings)
