"""inference/ and policies/ install as medsim.inference and medsim.policies, and nothing imports the old names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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
