"""The ``medsim`` command line.

One module per command group; each defines its commands on the shared :data:`app`. Heavy
imports (jax, numpyro, torch) happen inside the commands so that ``medsim --help`` is fast.
The CLI is the only place that prints; the library returns values.
"""

from __future__ import annotations

from medsim.cli.app import app, main

# Importing a command module registers its commands on ``app``.
from medsim.cli import data_cmds as _data_cmds  # noqa: F401  isort: skip
from medsim.cli import model_cmds as _model_cmds  # noqa: F401  isort: skip
from medsim.cli import fit_cmds as _fit_cmds  # noqa: F401  isort: skip
from medsim.cli import sample_cmds as _sample_cmds  # noqa: F401  isort: skip
from medsim.cli import risk_cmds as _risk_cmds  # noqa: F401  isort: skip
from medsim.cli import sim_cmds as _sim_cmds  # noqa: F401  isort: skip
from medsim.cli import demo_cmds as _demo_cmds  # noqa: F401  isort: skip
from medsim.cli import neural_cmds as _neural_cmds  # noqa: F401  isort: skip
from medsim.cli import t1d_cmds as _t1d_cmds  # noqa: F401  isort: skip
from medsim.cli import sbc_cmds as _sbc_cmds  # noqa: F401  isort: skip

__all__ = ["app", "main"]
