"""``medsim risk`` imports heavy libraries only where it needs them.

Every second of import is paid by every run, a warm one included (whose compiled programs come
from the compilation cache in well under the time these imports take). Up to its rollouts a
``--prior`` risk run needs jax, numpy and ``scipy.special``; the report's figures need matplotlib
and Pillow, and only when they are drawn; fits (numpyro, PyMC, ArviZ, pandas, xarray), neural
checkpoints (torch) and clusters (Dask) are never needed. ``scipy.stats`` costs ~0.5 s to import:
the risk estimators take their quantiles from :mod:`medsim.policies.risk.quantiles` instead.

A fresh interpreter runs the real command (its option parsing, draws, spec, policies, rollout
setup), stopped where the simulation would start, then imports the modules the rollouts and the
risk estimates import lazily, and lists what ended up in ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Not needed by a risk run before its report is written (or at all, for --prior patients).
HEAVY = (
    "matplotlib",
    "PIL",
    "arviz",
    "pandas",
    "xarray",
    "numpyro",
    "pymc",
    "pytensor",
    "torch",
    "scipy.stats",
    "dask",
    "distributed",
)

SCRIPT = """
import json, sys
import medsim.policies.evaluate as evaluate

class Stop(Exception):
    pass

def stop(*args, **kwargs):
    raise Stop

evaluate.evaluate_policies = stop  # risk_cmds imports it by name when the command runs
from medsim.cli import app
try:
    app(["--compile-cache", "off", "risk", "--prior", "glucose_insulin", "--n", "8", "--policy", "pid:every=60",
         "--spec", "glucose_mg_dL>=70;horizon=24h;epsilon=0.05", "--out", sys.argv[1]], standalone_mode=False)
except Stop:
    pass
else:
    raise SystemExit("the risk command did not reach evaluate_policies")
# What the rollouts (host and compiled loops) and the risk estimates import lazily.
import medsim.policies.rollout_device, medsim.policies.rollout_setup, medsim.policies.device_loop
import medsim.policies.risk, medsim.policies.risk.rare.followup, medsim.policies.risk.report
print(json.dumps(sorted(sys.modules)))
"""


def test_risk_run_imports_no_heavy_module_before_its_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MPLBACKEND", None)  # not a reason to import matplotlib, but keep the child's view plain
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    modules = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "jax" in modules and "medsim.policies.risk.quantiles" in modules  # the chain was walked
    imported = [h for h in HEAVY if any(m == h or m.startswith(f"{h}.") for m in modules)]
    assert not imported, f"imported before the report needs them: {imported}"
