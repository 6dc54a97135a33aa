"""The shipped examples behind ``medsim demo``: fit → sample → evaluate policies → report.

* **theoph** — the real theophylline study (12 subjects) fitted with ``pk_oral_1cmt`` (SDE, NUTS);
  a fixed q12h regimen, trough-guided TDM titration and the posterior-aware safe-timing policy
  are compared against the therapeutic window 5-20 mg/L, monitored from 24 h (after loading).
* **glucose** — the bundled ``t1d_sim`` cohort (6 type-1 patients simulated by simglucose's
  UVA/Padova model, an independent simulator: CGM every 15 min for 3 days, recorded meals and
  pump insulin; ``medsim/data/bundled/SOURCES.md``) fitted with ``glucose_insulin``; basal-bolus
  therapy and a PID pump controller, each with sparse (fingerstick-like) and dense (CGM-like)
  measurement, are compared against hypoglycaemia, glucose >= 70 mg/dL.

Each example writes ``posterior.nc`` (the fit) and ``report.json`` / ``report.md`` /
``report.html`` (+ ``figures/``) into its folder. Nothing here prints; progress goes to callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medsim.inference.cohort_support import cohort_support, support_ranges
from medsim.policies.evaluate import evaluate_policies
from medsim.policies.report import write_report
from medsim.policies.spec_file import parse_spec

#: ``stage(name)`` announces a stage, ``progress(done, total)`` reports within it.
Stage = Callable[[str], None]
Progress = Callable[[float, float], None]


@dataclass(frozen=True)
class ExampleSettings:
    """Sizes and policies of one example (the defaults are what the committed reports used)."""

    name: str
    model: str
    #: The bundled dataset fitted (:func:`medsim.data.load`).
    dataset: str
    policies: tuple[str, ...]
    spec: str
    n_patients: int
    fit_method: str = "nuts"
    chains: int = 4
    draws: int = 500
    warmup: int = 500
    dt: float | None = None
    #: Simulator scheme (:data:`medsim.simulate.schemes.SCHEMES`), for the rollouts and for the
    #: predictions of posterior-aware policies.
    scheme: str = "milstein"
    fit_options: dict = field(default_factory=dict)
    #: Simulate with the model's default process noise when the fit is the ODE limit
    #: (``fit_options["process_noise"] = False``); recorded in the report's provenance.
    default_process_noise: bool = False
    #: Hold out every measurement after this time (model time unit) from the fit and run the
    #: calibration gate (:mod:`medsim.inference.checks.calibration_gate`) on it, with the spec's bounds as
    #: events; the risk report then carries the gate's verdict. None: the whole cohort is fitted
    #: and the report says calibration was not checked.
    heldout_after: float | None = None
    #: Also write the pharmacometric fit report (:mod:`medsim.inference.checks.fit_report`) of the fit,
    #: into the folder ``<example>-fit`` beside the risk report (:func:`write_example_fit_report`).
    fit_report: bool = False


THEOPH = ExampleSettings(
    name="theoph",
    model="pk_oral_1cmt",
    dataset="theoph",
    policies=(
        "fixed:dose=320,every=12",
        "tdm:target=7,every=12,dose=320",
        "safe_timing:eps=0.05,base=tdm,base.target=7,base.every=12,base.dose=320",
    ),
    spec="conc<=20,conc>=5;horizon=96h;from=24h;epsilon=0.05;delta=0.05",
    # 1000 patients at 6-minute steps simulate in ~1 min on 2 cores (300 at 30 s took ~3 min).
    n_patients=1000,
    # Exponential Euler integrates absorption and elimination exactly, so it is stable for any ka
    # in the tail of omega_ka (the explicit schemes needed ka h < 2, hence 30 s sub-steps). With
    # 6-minute sub-steps the bridge-corrected violation probabilities on the same 300 patients and
    # posterior draws moved by -0.030 +- 0.016 (fixed), -0.030 +- 0.017 (TDM) and -0.018 +- 0.019
    # (safe timing) from 30 s Milstein, paired SEs; 90 s Milstein moved by as much (-0.027 +-
    # 0.016), i.e. process-noise Monte Carlo error, and at 30 s the two schemes agree patient by
    # patient for the fixed and TDM policies.
    dt=0.1,
    scheme="exponential",
    # The CLI's default fit size: 4 x 500 draws left the tail ESS of omega_CL / omega_V (weakly
    # identified by 12 subjects) just under the 400 the diagnostics require.
    draws=1000,
    warmup=1000,
    fit_report=True,
)

GLUCOSE = ExampleSettings(
    name="glucose",
    model="glucose_insulin",
    dataset="t1d_sim",
    policies=(
        "basal_bolus:every=240",
        "basal_bolus:every=5",
        "pid:every=180",
        "pid:every=5",
    ),
    spec="glucose_mg_dL>=70;horizon=24h;epsilon=0.05;delta=0.05;target=70<=glucose_mg_dL<=180",
    n_patients=1000,
    fit_method="svi",
    dt=1.0,
    # The SDE itself is fitted (process noise included): the matrix-layout EKF compiles in
    # seconds, and max_substep=10 min keeps the filter's error under 3e-4 nats per observation
    # at a quarter of the default cost (docs/fitting.md, "Filter step").
    # 6000 SVI steps: at 1500 and 3000 the guide's spread had not converged (the spread test of
    # docs/fitting.md flagged 3 and 1 coordinates too narrow; 6000 passes, ELBO +26 nats, ~55 s).
    fit_options={"svi_steps": 6000, "max_substep": 10.0},
    # Days 1-2 are fitted, day 3 is predicted from its recorded meals and insulin and judged by
    # the calibration gate (coverage, sharpness, hypoglycaemia Brier/AUC) before any verdict.
    heldout_after=2880.0,
)


@dataclass(frozen=True)
class ExampleResult:
    """What one example produced."""

    name: str
    out_dir: Path
    posterior_file: Path
    report_files: object
    verdicts: dict[str, str]
    fit_ok: bool | None


def _cohort(settings: ExampleSettings):
    import medsim.data

    return medsim.data.load(settings.dataset)


def write_example_fit_report(
    settings: ExampleSettings, posterior_file: str | Path, out_dir: str | Path, *, seed: int = 1
) -> Path:
    """Write the fit report of an example's fitted posterior into ``out_dir``; returns its HTML file.

    The posterior must be the fit of the whole bundled dataset (an example with a held-out window
    fits only its training part, whose report would need that part).
    """
    import medsim.data
    from medsim.inference import Posterior
    from medsim.inference.checks.fit_report import build_fit_report, fit_figures, write_fit_report

    posterior = Posterior.load(posterior_file)
    cohort = medsim.data.load(settings.dataset)
    source = f"{Path(posterior_file).parent.name}/{Path(posterior_file).name}"
    report = build_fit_report(posterior, cohort, seed=seed, source=source)
    return write_fit_report(report, out_dir, fit_figures(report, posterior))["html"]


def run_example(
    settings: ExampleSettings,
    out_dir: str | Path,
    *,
    seed: int = 1,
    n_patients: int | None = None,
    stage: Stage | None = None,
    progress: Progress | None = None,
) -> ExampleResult:
    """Run one example end to end and write its posterior and report into ``out_dir``.

    Parameters
    ----------
    settings : ExampleSettings
        :data:`THEOPH` or :data:`GLUCOSE` (or a variant).
    out_dir : path
        Created if missing; ``posterior.nc`` and the report files are written atomically.
    seed : int
        Seeds the fit, the virtual population and every rollout.
    n_patients : int, optional
        Override the number of virtual patients (e.g. for a quick run).
    stage, progress : callables, optional
        Progress reporting for a command line.
    """
    import medsim.models
    from medsim import inference

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = stage or (lambda _name: None)
    model = medsim.models.get(settings.model)
    say(f"{settings.name}: cohort")
    cohort = _cohort(settings)
    spec = parse_spec(settings.spec, model=model)
    fitted, held = cohort, None
    if settings.heldout_after is not None:
        from medsim.inference.checks.heldout import split_after

        fitted, held = split_after(cohort, after=settings.heldout_after)
    say(f"{settings.name}: fitting {model.name} ({settings.fit_method})")
    posterior = inference.fit(
        fitted,
        model,
        method=settings.fit_method,
        chains=settings.chains,
        draws=settings.draws,
        warmup=settings.warmup,
        seed=seed,
        progress=progress,
        **settings.fit_options,
    )
    gate = None
    if held is not None:
        import jax

        from medsim.inference.checks.calibration_gate import heldout_check

        say(f"{settings.name}: calibration gate on measurements after t = {settings.heldout_after:g}")
        gate = heldout_check(
            posterior,
            cohort,
            held,
            key=jax.random.key(seed),
            bounds=spec.bounds,
            dt=settings.dt,
            description=f"measurements after t = {settings.heldout_after:g} (posterior fitted without them)",
        )
        posterior = posterior.with_calibration(gate)
    posterior_file = posterior.save(out / "posterior.nc")
    diagnostics = posterior.diagnostics()
    draws = posterior.draws()
    noise_note = {}
    if settings.default_process_noise:
        fixed = {p.name: np.full(draws.n_draws, p.typical) for p in model.params_of_kind("process_noise")}
        draws = replace(draws, population={**draws.population, **fixed})
        noise_note = {
            "process_noise": {k: f"fixed at the model default {v[0]:g} (ODE-limit fit)" for k, v in fixed.items()}
        }
    n = n_patients or settings.n_patients
    say(f"{settings.name}: {len(settings.policies)} policies x {n} virtual patients")
    report, results = evaluate_policies(
        draws,
        settings.policies,
        spec,
        n=n,
        seed=seed,
        dt=settings.dt,
        scheme=settings.scheme,
        support=support_ranges(cohort_support(fitted, model)),
        provenance={
            "posterior_file": Path(posterior_file).name,
            "data_hash": fitted.data_hash(),
            **({} if gate is None else {"calibration": gate}),
            "cohort": cohort.name or settings.name,
            "fit_diagnostics": diagnostics,
            "command": f"medsim demo (example {settings.name}, seed {seed})",
            **noise_note,
        },
        progress=progress,
    )
    say(f"{settings.name}: writing the report")
    files = write_report(report, out, results=results)
    verdicts = {p.policy: p.verdict.decision for p in report.policies}
    return ExampleResult(settings.name, out, Path(posterior_file), files, verdicts, getattr(diagnostics, "ok", None))
