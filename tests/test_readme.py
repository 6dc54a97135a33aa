"""The README's command-line and Python tours run as written, so that they cannot drift from the code.

Every fenced ```bash block of README.md is one shell tour and every ```python block one Python
tour; each runs unchanged (same sizes, same seeds) in a fresh temporary folder, with ``.venv``
there pointing at the running interpreter's environment (the tours start with ``source
.venv/bin/activate``) and the repository first on ``PYTHONPATH`` (so the checkout's code is what
runs, installed or not). The shell tour runs under ``bash -e -o pipefail``: every command must
exit 0, as a newcomer copying it would expect. Its one input file, ``my_study.csv`` ("your
event table"), is a copy of the bundled pheno table, as the README suggests. The setup block
(``make demo`` / ``make test``) is fenced as ``sh``, not ``bash``: it installs medsim and runs
this suite (``make demo`` is checked by ``tests/cli/test_committed_reports.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
#: Wall-clock ceiling per tour, against hangs only: the shell tour is ~3 CPU-minutes on an idle core
#: (the 4 x 2000-iteration NUTS fit 45 s, the held-out check's refit 47 s, the fit report 22 s,
#: the risk run 24 s), the Python tour ~1.3.
TIMEOUT_S = 1800


def readme_blocks(language: str) -> list[str]:
    """The fenced code blocks of README.md in ``language``, in order."""
    return [body for lang, body in FENCE.findall(README.read_text(encoding="utf-8")) if lang == language]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _run(command: list[str], folder: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, cwd=folder, env=_environment(), capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    output = f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, f"{command} exited {done.returncode}\n{output}"
    return done


def _folder(tmp_path: Path) -> Path:
    """A temporary folder with ``.venv`` (the running environment) and the tour's input file."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if not activate.is_file():
        pytest.skip(f"the tours activate a virtual environment; {sys.prefix} has no bin/activate")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    shutil.copyfile(ROOT / "medsim" / "data" / "bundled" / "pheno.csv", tmp_path / "my_study.csv")
    return tmp_path


def test_readme_has_the_tours():
    shell, python = readme_blocks("bash"), readme_blocks("python")
    assert len(shell) == 1 and "medsim fit" in shell[0] and "medsim risk" in shell[0]
    # the first Python block is the tour; later ones are examples run by their own tests
    assert python and "inference.fit(" in python[0] and "evaluate_policies(" in python[0]
    assert "make test" in "".join(readme_blocks("sh"))


@pytest.mark.slow
def test_shell_tour(tmp_path):
    folder = _folder(tmp_path)
    script = folder / "tour.sh"
    script.write_text(readme_blocks("bash")[0], encoding="utf-8")
    done = _run(["bash", "-e", "-o", "pipefail", str(script)], folder)
    assert re.search(r"^\d+\.\d+\.\d+", done.stdout, re.MULTILINE)  # medsim --version
    report = ("theoph-report/report.json", "theoph-report/report.html", "theoph-fit/fit_report.html")
    for written in ("tour.png", "theoph.nc", "vp.nc", *report):
        assert (folder / written).is_file(), written
    assert any((folder / "theoph-checks").glob("*.png"))
    _agrees_with_nlmixr2(folder / "theoph.nc")


# nlmixr2 FOCEi estimates for R's Theoph (Fidler et al. 2019, CPT:PSP 8:621)
NLMIXR2 = {"ka": 1.60, "CL": 2.75, "V": 31.9, "res_add_conc": 0.694}


def _agrees_with_nlmixr2(path: Path) -> None:
    """The tour's ``medsim fit theoph --model pk_oral_1cmt`` is the command's every default (4 chains
    x (1000 warmup + 1000 draws) of NUTS, seed 0, scaled random effects, target_accept 0.9) as a
    user runs it: it converges and agrees with nlmixr2 (checked here rather than by a fit of its own)."""
    from medsim.inference.posterior import Posterior

    posterior = Posterior.load(path)
    d = posterior.diagnostics()
    # the convergence thresholds of inference.diagnostics (Vehtari et al. 2021; no divergences)
    assert d.ok, d.problems
    post = posterior.idata.posterior
    assert post.sizes["chain"] == 4 and post.sizes["draw"] == 1000
    for name, ref in NLMIXR2.items():
        draws = post[name].values.ravel()
        # FOCEi gives a mode of an approximate marginal likelihood, this a posterior median:
        # they should agree within the posterior's spread; 2 SD is a loose but unit-sensitive check
        assert abs(np.median(draws) - ref) < 2 * draws.std(), (name, np.median(draws), ref)
    # the data rule out large process noise (docs/fitting.md): 95th percentile well below the
    # prior median of HalfNormal(0.3), 0.20
    assert np.quantile(post["sigma_central"].values, 0.95) < 0.1


@pytest.mark.slow
def test_python_tour(tmp_path):
    folder = _folder(tmp_path)
    script = folder / "tour.py"
    script.write_text(readme_blocks("python")[0], encoding="utf-8")
    done = _run([sys.executable, str(script)], folder)
    assert re.search(r"(PASS|FAIL|UNDECIDED)", done.stdout), done.stdout
    assert (folder / "theoph.nc").is_file() and (folder / "theoph-report" / "report.json").is_file()
