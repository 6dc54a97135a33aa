"""The ids of medsim's gymnasium environments and their registration (string entry points only).

Registering an id stores a string: no environment code is imported until ``gymnasium.make``, and
importing this module imports nothing but ``medsim``'s own ``__init__`` (standard library). Three
places call :func:`register`:

* ``medsim_gymnasium_hook``, when gymnasium is imported in an interpreter where medsim is installed:
  ``medsim-gymnasium.pth`` in site-packages puts the hook in place at start-up, so a bare
  ``gymnasium.make("medsim/Glucose-v0")`` works without importing medsim (gymnasium 1.x no longer
  loads the ``gymnasium.envs`` plugin entry point). ``MEDSIM_NO_GYMNASIUM_HOOK=1`` turns it off;
* ``import medsim`` when gymnasium is already imported, so that
  ``gymnasium.make("medsim:medsim/Glucose-v0")``, which imports ``medsim`` first, finds the ids
  with or without the hook (a source checkout on ``PYTHONPATH``, ``python -S``);
* ``import medsim.policies.env`` (always; also gymnasium's plugin entry point for releases that load it).

docs/rl.md, "Which ids work".
"""

from __future__ import annotations

from types import ModuleType

NAMESPACE = "medsim"

#: Task names (the keys of :data:`medsim.policies.env.task.TASKS`, checked by the tests).
TASK_NAMES = ("Glucose-v0", "Theophylline-v0")

ENTRY_POINT = "medsim.policies.env.gym_env:MedsimEnv"
VECTOR_ENTRY_POINT = "medsim.policies.env.vector:MedsimVectorEnv"


def register(gymnasium: ModuleType, names: tuple[str, ...] = TASK_NAMES) -> None:
    """Register ``medsim/<name>`` for each task name in ``gymnasium``'s registry (idempotent)."""
    for name in names:
        env_id = f"{NAMESPACE}/{name}"
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point=ENTRY_POINT,
            vector_entry_point=VECTOR_ENTRY_POINT,
            kwargs={"task": name},
        )
