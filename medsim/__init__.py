"""medsim: uncertainty-aware in-silico treatment evaluation.

``medsim`` owns the world: cohort data (``medsim.data``), physiology models
(``medsim.models``), the batched SDE simulator (``medsim.simulate``), virtual populations and the
command line (``medsim.cli``). Fitting lives in :mod:`medsim.inference` and policies, rollouts and
risk reports in :mod:`medsim.policies`; their folders stand at the top of the repository
(``inference/``, ``policies/``) and are installed under medsim's name, so they cannot clash with
other distributions called ``inference`` or ``policies``. The core never imports them (they
build on it), except lazily in the CLI. It imports jax, numpy and pandas; torch only inside the
neural model.

When gymnasium is already imported, importing medsim registers its environment ids
(:mod:`medsim.env_ids`: registry entries only, nothing imported), so that
``gymnasium.make("medsim:medsim/Glucose-v0")`` works in a fresh interpreter. Where medsim is
installed, the bare ``gymnasium.make("medsim/Glucose-v0")`` works too: ``medsim_gymnasium_hook``
registers the ids when gymnasium is imported.
"""

import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"


def _checkout_subpackages() -> None:
    # In a source checkout (tests, `python -m medsim.cli` without installing) the two folders sit
    # beside this package; an install maps them with package_dir (pyproject.toml). Only a
    # checkout, recognised by its pyproject.toml, gets its root added to this package's path.
    here = _Path(__file__).resolve().parent
    root = here.parent
    if (root / "pyproject.toml").is_file() and all((root / name / "__init__.py").is_file() for name in _SUBPACKAGES):
        if not any((here / name).exists() for name in _SUBPACKAGES) and str(root) not in __path__:
            __path__.append(str(root))


_SUBPACKAGES = ("inference", "policies")
_checkout_subpackages()


def _register_envs() -> None:
    # Only when the user imported gymnasium: medsim itself never imports it here. A gymnasium still
    # being initialised (no ``register`` yet) is left alone; medsim.policies.env registers later.
    gymnasium = _sys.modules.get("gymnasium")
    if gymnasium is not None and hasattr(gymnasium, "register") and hasattr(gymnasium, "registry"):
        from medsim.env_ids import register

        register(gymnasium)


_register_envs()
