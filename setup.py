"""setuptools build hooks: ship ``medsim-gymnasium.pth`` into site-packages (all else is in pyproject.toml).

The ``.pth`` file makes ``gymnasium.make("medsim/Glucose-v0")`` work without importing medsim
first (``medsim_gymnasium_hook``; docs/rl.md). A ``.pth`` file only runs from site-packages itself,
so it must sit at the root of the wheel, beside the packages:

* regular wheels (``pip install .``, ``python -m build``): :class:`BuildPy` copies it to the root of
  ``build_lib``, which becomes the root of the wheel;
* editable installs (``pip install -e .``, PEP 660): setuptools' editable wheel holds only its own
  path hook, not ``build_lib``, so :class:`EditableWheel` adds the file to the finished wheel, with
  its line in the wheel's ``RECORD`` (so ``pip uninstall`` removes it).

Its name sorts after setuptools' ``__editable__.*.pth`` files, so in an editable install the
finder that makes ``medsim_gymnasium_hook`` importable is in place when this line runs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "medsim-gymnasium.pth"
PTH_SOURCE = Path(__file__).resolve().parent / PTH_NAME


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return f"{name},sha256={digest},{len(data)}\n"


def add_to_wheel(wheel: Path, name: str, data: bytes) -> None:
    """Rewrite ``wheel`` with ``name`` at its root and its line in ``RECORD`` (atomic replace).

    Raises
    ------
    ValueError
        ``wheel`` has no ``*.dist-info/RECORD``, or already holds ``name``.
    """
    tmp = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as src:
        names = src.namelist()
        records = [n for n in names if n.endswith(".dist-info/RECORD") and n.count("/") == 1]
        if len(records) != 1:
            raise ValueError(f"{wheel}: expected one *.dist-info/RECORD, found {records}")
        if name in names:
            raise ValueError(f"{wheel}: already holds {name}")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                payload = src.read(item.filename)
                if item.filename == records[0]:
                    continue
                dst.writestr(item, payload)
            dst.writestr(name, data)
            record = src.read(records[0]).decode("utf-8")
            if record and not record.endswith("\n"):
                record += "\n"
            dst.writestr(records[0], record + _record_line(name, data))  # RECORD stays last, as PEP 427 asks
    os.replace(tmp, wheel)


class BuildPy(build_py):
    """``build_py`` that also puts ``medsim-gymnasium.pth`` at the root of ``build_lib`` (regular wheels)."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            self.copy_file(str(PTH_SOURCE), os.path.join(self.build_lib, PTH_NAME), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs


class EditableWheel(editable_wheel):
    """``editable_wheel`` that adds ``medsim-gymnasium.pth`` to the editable wheel it built."""

    def run(self) -> None:
        super().run()
        wheels = sorted(Path(self.dist_dir).glob("*-0.editable-*.whl"), key=os.path.getmtime)
        if not wheels:
            raise FileNotFoundError(f"{self.dist_dir}: no editable wheel to add {PTH_NAME} to")
        add_to_wheel(wheels[-1], PTH_NAME, PTH_SOURCE.read_bytes())


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPy, "editable_wheel": EditableWheel})
