"""Cost of one gradient of the NUTS potential (log posterior density) on the glucose models.

Run: ``.venv/bin/python benchmarks/ekf_gradient.py [--cohort demo|TIDY.csv] [--models glucose_insulin,t1d_ou]
[--max-substep 10] [--substeps 4] [--dtype float32] [--repeat 20] [--gradients forward,reverse] [--json OUT]``.

``--cohort demo`` is the bundled ``t1d_sim`` cohort as ``medsim demo`` fits it (6 patients, days
1-2, CGM every 15 min); a tidy CSV from ``benchmarks/t1d_cohort.py`` is read with
:func:`medsim.data.t1d.read_t1d_table` (CGM every 15 min) and cut after day 2, as
``benchmarks/external_t1d.py`` fits it. For each model: the timeline's size (subjects, slots,
RK4 steps per subject, state dimension, covariance block), compilation time and the warm time
of ``jax.value_and_grad`` of the jitted potential at the chains' starting point (the median of
``--repeat`` calls), for each differentiation mode of ``--gradients``
(:func:`medsim.inference.likelihood.filtering.resolve_gradient`), their calls alternating, and the
ratio of the first mode's time to each other's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MINUTES_PER_DAY = 1440.0


def load_cohort(source: str, model):
    """The demo's training cohort (``"demo"``) or a simglucose tidy CSV's first two days."""
    if source == "demo":
        from medsim.data.datasets import load as load_dataset
        from medsim.inference.checks.heldout import split_after

        return split_after(load_dataset("t1d_sim"), after=2 * MINUTES_PER_DAY)[0]
    import pandas as pd

    from benchmarks.external_t1d import truncate
    from medsim.data.t1d import read_t1d_table

    tidy = pd.read_csv(source)
    full = read_t1d_table(tidy.drop(columns=["bg_true"]), cgm_every=15.0, model=model)
    return truncate(full, 2 * MINUTES_PER_DAY)


def measure(cohort, model, *, max_substep, substeps, dtype, repeat, gradients=("auto",)) -> list[dict]:
    """Timeline size and the cost of one value-and-gradient of the potential, one row per
    differentiation mode in ``gradients``; the modes' calls alternate, so that a change of the
    machine's load during the run hits all of them alike."""
    import jax

    from medsim.inference.backends.numpyro_nuts import initial_unconstrained
    from medsim.inference.hierarchical import potential_fn
    from medsim.inference.likelihood.filtering import covariance_block, filter_layout, resolve_gradient
    from medsim.inference.problem import prepare

    runs = {}
    for mode in gradients:
        data = prepare(cohort, model, substeps=substeps, max_substep=max_substep, dtype=np.dtype(dtype), gradient=mode)
        init = {k: v[0] for k, v in initial_unconstrained(data, 1, 0.5, seed=0).items()}
        grad = jax.jit(jax.value_and_grad(potential_fn(data)))
        start = time.perf_counter()
        value, g = grad(init)
        jax.block_until_ready(g)
        runs[mode] = {
            "data": data,
            "grad": grad,
            "init": init,
            "value": value,
            "compile_s": time.perf_counter() - start,
        }
    times = {mode: [] for mode in gradients}
    for _ in range(repeat):
        for mode, run in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(run["grad"](run["init"]))
            times[mode].append(time.perf_counter() - start)
    rows = []
    for mode, run in runs.items():
        tl = run["data"].timeline
        layout = filter_layout(model, tl)
        rows.append(
            {
                "model": model.name,
                "subjects": tl.n_subjects,
                "slots": tl.n_slots,
                "substeps": tl.substeps,
                "max_substep": max_substep,
                "rk4_steps_per_subject": tl.n_slots * tl.substeps,
                "states": len(model.state_names),
                "covariance_block": len(covariance_block(model, tl, "reachable")),
                "layout": layout,
                "gradient": mode,
                "gradient_runs_as": resolve_gradient(mode, layout),
                "dtype": str(np.dtype(dtype)),
                "potential": float(run["value"]),
                "compile_s": run["compile_s"],
                "gradient_ms": 1e3 * float(np.median(times[mode])),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", default="demo", help="'demo' or a tidy CSV from benchmarks/t1d_cohort.py")
    parser.add_argument("--models", default="glucose_insulin,t1d_ou")
    parser.add_argument("--max-substep", type=float, default=None)
    parser.add_argument("--substeps", type=int, default=4)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--gradients",
        default="forward,reverse",
        help="differentiation modes to time against each other (auto, forward, reverse; comma-separated)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    import medsim.models

    rows = []
    for name in args.models.split(","):
        model = medsim.models.get(name)
        cohort = load_cohort(args.cohort, model)
        measured = measure(
            cohort,
            model,
            max_substep=args.max_substep,
            substeps=args.substeps,
            dtype=args.dtype,
            repeat=args.repeat,
            gradients=tuple(args.gradients.split(",")),
        )
        for row in measured:
            rows.append({"cohort": args.cohort, **row})
            print(json.dumps(rows[-1]), flush=True)
        reference = measured[0]
        for row in measured[1:]:
            print(
                f"{model.name}: {row['gradient']} {row['gradient_ms']:.1f} ms, {reference['gradient']} "
                f"{reference['gradient_ms']:.1f} ms: ratio {reference['gradient_ms'] / row['gradient_ms']:.2f}x",
                flush=True,
            )
    if args.json:
        from medsim.io import atomic_write

        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
