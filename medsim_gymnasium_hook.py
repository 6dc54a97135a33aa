"""Register medsim's environment ids when gymnasium is imported, so ``gymnasium.make("medsim/Glucose-v0")`` works.

gymnasium 1.x no longer loads the ``gymnasium.envs`` plugin entry points, so nothing imports
medsim for a bare id. Installing medsim (``pip install medsim``, or ``pip install -e .``) puts
``medsim-gymnasium.pth`` into site-packages; Python runs its one line at start-up, and that line
calls :func:`install`. :func:`install` puts a :class:`GymnasiumImportHook` first on
``sys.meta_path``. The hook answers for the single name ``gymnasium``: it lets gymnasium's own
import run to the end, then calls :func:`medsim.env_ids.register` (registry entries whose entry
points are strings: no environment code, no jax, until ``gymnasium.make``) and removes itself.

Cost: this module imports nothing new (``site``, which reads ``.pth`` files, has imported ``os``
and ``sys``) and does nothing when imported; until gymnasium is imported, every other import pays
one call of :meth:`GymnasiumImportHook.find_spec`, a string comparison.

Nothing here raises: an error while installing or registering is swallowed, so medsim can break
neither interpreter start-up nor ``import gymnasium`` (a broken medsim shows up as gymnasium's
``NameNotFound`` for the bare id; ``gymnasium.make("medsim:medsim/Glucose-v0")`` imports medsim
and shows the real error). ``MEDSIM_NO_GYMNASIUM_HOOK=1`` turns the hook off: :func:`install`
then does nothing. ``python -S`` (no ``site``) reads no ``.pth`` file either.

The ``.pth`` line (``medsim-gymnasium.pth`` at the top of the repository; ``setup.py`` ships it
in wheels and editable installs) guards the import itself, for a ``.pth`` left without this module.
"""

import os
import sys

#: Set to anything but ``""`` or ``"0"`` to turn the hook off.
DISABLE_VARIABLE = "MEDSIM_NO_GYMNASIUM_HOOK"

#: The module whose import triggers the registration.
TARGET = "gymnasium"

#: The module holding ``register(gymnasium)``: stdlib-only apart from medsim's own ``__init__``.
REGISTRY_MODULE = "medsim.env_ids"


def _register(gymnasium):
    try:
        module = __import__(REGISTRY_MODULE, fromlist=["register"])
        module.register(gymnasium)
    except Exception:
        pass


class _RegisteringLoader:
    """gymnasium's own loader; after it ran, medsim registers its ids and the hook leaves.

    Every attribute but ``exec_module`` is the wrapped loader's. Once gymnasium is executed, its
    ``__loader__`` and ``__spec__.loader`` are the original loader again.
    """

    def __init__(self, loader, hook):
        self._loader = loader
        self._hook = hook

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)  # gymnasium's own errors propagate; the hook then stays
        try:
            if getattr(module, "__loader__", None) is self:
                module.__loader__ = self._loader
            spec = getattr(module, "__spec__", None)
            if spec is not None and spec.loader is self:
                spec.loader = self._loader
        except Exception:
            pass
        self._hook.remove()
        _register(module)


class GymnasiumImportHook:
    """A ``sys.meta_path`` finder for ``gymnasium`` only; its spec's loader registers medsim's ids after gymnasium's."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        try:
            spec = self._spec_from_the_other_finders(fullname, path, target)
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return None  # not installed, or not a loader we can follow: the usual import goes on
            spec.loader = _RegisteringLoader(spec.loader, self)
            return spec
        except Exception:
            return None

    def _spec_from_the_other_finders(self, fullname, path, target):
        for finder in list(sys.meta_path):
            if finder is self or isinstance(finder, GymnasiumImportHook):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is not None:
                spec = find_spec(fullname, path, target)
                if spec is not None:
                    return spec
        return None

    def remove(self):
        """Take this hook off ``sys.meta_path`` (it fires once)."""
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


def disabled():
    """Whether ``MEDSIM_NO_GYMNASIUM_HOOK`` turns the hook off."""
    return os.environ.get(DISABLE_VARIABLE, "") not in ("", "0")


def install():
    """Put the hook first on ``sys.meta_path`` (what ``medsim-gymnasium.pth`` runs at start-up).

    Idempotent, never raises. Does nothing when ``MEDSIM_NO_GYMNASIUM_HOOK`` is set; registers at
    once when gymnasium is already imported (by a ``.pth`` file read before this one).
    """
    try:
        if disabled():
            return
        gymnasium = sys.modules.get(TARGET)
        if gymnasium is not None:
            _register(gymnasium)
            return
        if not any(isinstance(finder, GymnasiumImportHook) for finder in sys.meta_path):
            sys.meta_path.insert(0, GymnasiumImportHook())
    except Exception:
        pass
