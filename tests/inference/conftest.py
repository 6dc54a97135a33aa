"""Put the repository root first on ``sys.path`` so the source tree is what the tests import.

pytest (prepend import mode) puts ``tests/`` on ``sys.path``; with the root first, ``medsim`` (and
through it ``medsim.inference`` and ``medsim.policies``) comes from this checkout whether pytest is
started as ``pytest`` or as ``python -m pytest``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
