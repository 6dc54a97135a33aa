"""``medsim-gymnasium.pth``: a bare ``gymnasium.make("medsim/Glucose-v0")`` in a fresh interpreter.

Each test runs a fresh interpreter and reads a copy of the repository's ``.pth`` file with
``site.addsitedir``, which is what Python's start-up does for site-packages. A hook an installed
medsim already put in place is taken out first, so the copy is what is tested whether or not the
test environment's site-packages holds the file too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import medsim_gymnasium_hook as hook_module

ROOT = Path(__file__).resolve().parents[2]
PTH = ROOT / "medsim-gymnasium.pth"

_HOOKS = "[f for f in sys.meta_path if type(f).__name__ == 'GymnasiumImportHook']"
_PRELUDE = (
    "import site, sys\n"
    f"sys.meta_path[:] = [f for f in sys.meta_path if f not in {_HOOKS}]\n"
    "sys.modules.pop('medsim_gymnasium_hook', None)\n"
    "assert 'gymnasium' not in sys.modules and 'medsim' not in sys.modules\n"
    "site.addsitedir({site_dir!r})\n"
)


@pytest.fixture
def site_dir(tmp_path):
    folder = tmp_path / "site-packages"
    folder.mkdir()
    shutil.copy(PTH, folder)
    return folder


def _run(code, site_dir, *, pythonpath=(ROOT,), disable=False):
    env = {k: v for k, v in os.environ.items() if k != hook_module.DISABLE_VARIABLE}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    if disable:
        env[hook_module.DISABLE_VARIABLE] = "1"
    script = _PRELUDE.format(site_dir=str(site_dir)) + code
    # cwd: not the repository, whose medsim and hook module "python -c" would import first
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180, cwd=site_dir.parent
    )


def test_the_pth_file_is_one_import_line():
    # site.py executes a .pth line only when it starts with "import"; any other line is a path.
    lines = PTH.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("import ")


def test_importing_gymnasium_registers_the_bare_ids_and_nothing_heavy(site_dir):
    code = (
        f"assert len({_HOOKS}) == 1\n"
        "import gymnasium\n"
        # registered with string entry points: neither jax nor the environment code is imported yet
        "assert 'jax' not in sys.modules and 'medsim.policies' not in sys.modules, 'heavy import'\n"
        f"assert {_HOOKS} == [], 'the hook stays after it fired'\n"
        "assert gymnasium.__spec__.loader is gymnasium.__loader__\n"
        "assert type(gymnasium.__loader__).__name__ == 'SourceFileLoader'\n"
        "print(*(gymnasium.spec(f'medsim/{name}').entry_point for name in ('Glucose-v0', 'Theophylline-v0')))\n"
    )
    out = _run(code, site_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["medsim.policies.env.gym_env:MedsimEnv"] * 2


@pytest.mark.slow
def test_bare_id_makes_an_environment_that_passes_check_env(site_dir):
    # ~10-20 s on 2 cores: make() compiles the glucose model, check_env steps it.
    code = (
        "import gymnasium\n"
        "from gymnasium.utils.env_checker import check_env\n"
        "env = gymnasium.make('medsim/Glucose-v0', pool_size=2, prior_draws=2)\n"
        "check_env(env.unwrapped, skip_render_check=True)\n"
        "print(env.spec.id, type(env.unwrapped).__name__)\n"
    )
    out = _run(code, site_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "medsim/Glucose-v0 MedsimEnv"


def test_environment_variable_turns_the_hook_off_and_importing_medsim_still_registers(site_dir):
    code = (
        f"assert {_HOOKS} == []\n"
        "import gymnasium\n"
        "assert 'medsim' not in sys.modules\n"
        "try:\n"
        "    gymnasium.spec('medsim/Glucose-v0')\n"
        "except gymnasium.error.Error as e:\n"
        "    print(type(e).__name__)\n"
        "import medsim\n"  # what gymnasium does for 'medsim:medsim/Glucose-v0' (tests/policies/test_env_gym.py)
        "print(gymnasium.spec('medsim/Glucose-v0').id)\n"
    )
    out = _run(code, site_dir, disable=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["NamespaceNotFound", "medsim/Glucose-v0"]


def test_hook_does_nothing_until_gymnasium_is_imported(site_dir):
    code = (
        "import importlib.util, json, email.mime.text\n"
        "assert importlib.util.find_spec('gymnasium') is not None\n"  # asking whether it is there imports nothing
        "print(len(" + _HOOKS + "), sorted(m for m in ('gymnasium', 'medsim') if m in sys.modules))\n"
    )
    out = _run(code, site_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1 []"


def test_broken_medsim_breaks_neither_start_up_nor_import_gymnasium(site_dir, tmp_path):
    broken = tmp_path / "broken"
    (broken / "medsim").mkdir(parents=True)
    (broken / "medsim" / "__init__.py").write_text("raise RuntimeError('broken medsim')\n")
    code = (
        "import gymnasium\n"
        f"assert {_HOOKS} == []\n"
        "print(sorted(k for k in gymnasium.registry if k.startswith('medsim')))\n"
    )
    out = _run(code, site_dir, pythonpath=(broken, ROOT))
    assert out.returncode == 0, out.stderr
    assert (out.stdout.strip(), out.stderr) == ("[]", "")


def test_broken_hook_module_does_not_break_start_up(site_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "medsim_gymnasium_hook.py").write_text("raise RuntimeError('broken hook')\n")
    out = _run(f"print(len({_HOOKS}))\n", site_dir, pythonpath=(broken,))
    assert out.returncode == 0, out.stderr
    assert (out.stdout.strip(), out.stderr) == ("0", "")


def test_importing_the_hook_module_imports_nothing_else():
    # It runs at every interpreter start-up: site has imported os and sys, nothing more is allowed.
    code = (
        "import sys\n"
        "sys.modules.pop('medsim_gymnasium_hook', None)\n"
        "before = set(sys.modules)\n"
        "import medsim_gymnasium_hook\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert out.stdout.strip() == "['medsim_gymnasium_hook']"


def test_hook_answers_for_gymnasium_only(monkeypatch):
    hook = hook_module.GymnasiumImportHook()
    assert hook.find_spec("json") is None
    assert hook.find_spec("gymnasium.envs") is None
    # gymnasium not installed: no spec, so the import fails as it would without medsim
    monkeypatch.setattr(hook_module, "TARGET", "medsim_no_such_module")
    assert hook.find_spec("medsim_no_such_module") is None
