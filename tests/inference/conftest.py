"""Make ``import inference`` resolve to the package, not to this test folder.

pytest (prepend import mode) puts ``tests/`` on ``sys.path``; ``tests/inference`` then shadows
the ``inference`` package as a namespace package when pytest is started as ``pytest`` rather
than ``python -m pytest`` (which also puts the repository root first). Putting the root first
here makes both invocations import the real package.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
if "inference" in sys.modules and getattr(sys.modules["inference"], "__file__", None) is None:
    del sys.modules["inference"]  # a namespace stand-in imported before this file ran
