"""inference/ and policies/ install as medsim.inference and medsim.policies, nothing imports the old names, and
both kinds of wheel carry medsim-gymnasium.pth."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = {"medsim": "medsim", "inference": "medsim.inference", "policies": "medsim.policies"}


def _packages_on_disk() -> set[str]:
    found = set()
    for folder, name in TOPS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    return found


def test_every_package_is_installed_under_the_medsim_namespace():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _packages_on_disk()
    assert config["package-dir"] == {"medsim.inference": "inference", "medsim.policies": "policies"}


def test_no_module_imports_the_top_level_names():
    # A top-level `inference` / `policies` would clash with other distributions of those names and
    # load a second copy of every module next to medsim.inference / medsim.policies.
    pattern = re.compile(r"^\s*(from|import)\s+(inference|policies)(\s|\.|$)", re.M)
    offenders = []
    for folder in ("medsim", "inference", "policies", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for match in pattern.finditer(path.read_text(encoding="utf-8")):
                line = path.read_text(encoding="utf-8")[: match.start()].count("\n") + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, f"import medsim.inference / medsim.policies instead: {offenders}"


def test_the_subpackages_resolve_to_the_repository_folders():
    import medsim.inference
    import medsim.policies

    assert Path(medsim.inference.__file__).resolve().parent == ROOT / "inference"
    assert Path(medsim.policies.__file__).resolve().parent == ROOT / "policies"


def _record(wheel: zipfile.ZipFile) -> dict[str, str]:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")]
    return {line.split(",")[0]: line.split(",")[1] for line in wheel.read(name).decode().splitlines()}


def _sha256(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_wheel_and_editable_wheel_put_the_gymnasium_pth_into_site_packages(tmp_path):
    # A .pth file runs only from site-packages itself: it must sit at the root of both wheels, with
    # its RECORD line (pip uninstall removes what RECORD lists). Built from a copy of the sources.
    pytest.importorskip("setuptools", minversion="77")  # pyproject.toml's build requirement
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "medsim-gymnasium.pth"):
        shutil.copy(ROOT / name, src)
    shutil.copy(ROOT / "medsim_gymnasium_hook.py", src)
    for folder in TOPS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    for hook in ("build_wheel", "build_editable"):  # one process each, as pip does
        code = f"import sys; from setuptools import build_meta; build_meta.{hook}(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, str(dist)], cwd=src, capture_output=True, check=True, timeout=120)
    pth = (ROOT / "medsim-gymnasium.pth").read_bytes()
    (editable,) = dist.glob("medsim-*-0.editable-*.whl")
    (regular,) = set(dist.glob("medsim-*.whl")) - {editable}
    with zipfile.ZipFile(regular) as wheel:
        assert wheel.read("medsim-gymnasium.pth") == pth
        assert wheel.read("medsim_gymnasium_hook.py") == (ROOT / "medsim_gymnasium_hook.py").read_bytes()
        assert _record(wheel)["medsim-gymnasium.pth"] == _sha256(pth)
    with zipfile.ZipFile(editable) as wheel:
        assert wheel.read("medsim-gymnasium.pth") == pth
        assert _record(wheel)["medsim-gymnasium.pth"] == _sha256(pth)
        # sorts after setuptools' own __editable__ .pth, whose finder makes the hook module importable
        assert sorted(n for n in wheel.namelist() if n.endswith(".pth"))[-1] == "medsim-gymnasium.pth"
