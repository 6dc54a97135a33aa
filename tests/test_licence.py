"""medsim is BSD-3-Clause; the bundled GPL datasets are declared as such wherever medsim is described.

The reported gap: no LICENSE file, and bundled CSVs from GPL-licensed R packages shipped under a
BSD-3-Clause declaration. Each bundled CSV must have its licence stated in SOURCES.md, in its
``DatasetInfo`` and in the package metadata, with the licence texts shipped beside it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import medsim.data

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "medsim" / "data" / "bundled"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: SPDX identifiers of the GPL terms each bundled file carries (SOURCES.md, "Licences").
DATA_LICENCES = {"theoph.csv": "(GPL-2.0-only OR GPL-3.0-only)", "pheno.csv": "GPL-2.0-or-later"}
#: Bundled files medsim generated itself: under medsim's own licence.
OWN_DATA = {"t1d_sim.csv": "BSD-3-Clause"}


def test_license_file_is_bsd_3_clause():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License")
    assert "Copyright (c)" in text and "the medsim developers" in text
    assert "Neither the name of the copyright holder" in text  # the third clause


def test_every_bundled_csv_has_its_licence_declared():
    assert sorted(p.name for p in BUNDLED.glob("*.csv")) == sorted({**DATA_LICENCES, **OWN_DATA})
    sources = (BUNDLED / "SOURCES.md").read_text()
    expression = PYPROJECT["project"]["license"]
    for name, spdx in DATA_LICENCES.items():
        assert f"| `{name}` |" in sources and spdx.strip("()") in sources
        assert spdx in expression, f"{name}: {spdx} missing from project.license {expression!r}"
    for name, spdx in OWN_DATA.items():
        assert f"| `{name}` |" in sources and f"(`{spdx}`)" in sources
    for info in medsim.data.available():
        assert ("GPL" in info.licence) != (f"{info.name}.csv" in OWN_DATA), info


def test_package_metadata_is_an_spdx_expression_with_the_licence_files():
    project = PYPROJECT["project"]
    assert isinstance(project["license"], str), "project.license as a TOML table is deprecated (PEP 639)"
    assert project["license"].startswith("BSD-3-Clause AND ")
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))  # PEP 639: one source
    files = project["license-files"]
    assert "LICENSE" in files and "medsim/data/bundled/SOURCES.md" in files
    for path in files:
        assert (ROOT / path).is_file(), path
    for text in ("GPL-2.txt", "GPL-3.txt"):
        assert f"medsim/data/bundled/{text}" in files
        assert "GNU GENERAL PUBLIC LICENSE" in (BUNDLED / text).read_text()
    assert "bundled/*.txt" in PYPROJECT["tool"]["setuptools"]["package-data"]["medsim.data"]
    licenses = pytest.importorskip("packaging.licenses")
    assert licenses.canonicalize_license_expression(project["license"]) == project["license"]


def test_readme_states_the_data_licences():
    readme = (ROOT / "README.md").read_text()
    assert "BSD-3-Clause" in readme and "GPL" in readme and "SOURCES.md" in readme
