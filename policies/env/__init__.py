"""medsim as a (safe) reinforcement-learning environment.

Owns the environment tasks (:mod:`.task`), the functional option-loop core shared by every
environment (:mod:`.core`), its compiled ``jit``/``vmap`` form (:mod:`.functional`), the gymnasium
environment (:mod:`.gym_env`), its batched ``gymnasium.vector.VectorEnv`` (:mod:`.vector`) and
offline datasets of logged trajectories (:mod:`.offline`). Learned policies come back into medsim
through :mod:`medsim.policies.learned`. May import ``medsim``, ``inference`` (posterior files) and
the rest of ``policies``; gymnasium is imported here, minari only by :mod:`.offline`.

Importing this package registers the environments (``gymnasium.make("medsim/Glucose-v0")``);
where medsim is installed, importing gymnasium does too (``medsim_gymnasium_hook``), and
``gymnasium.make("medsim:medsim/Glucose-v0")`` (or ``"medsim.policies.env:medsim/Glucose-v0"``)
imports what registers them (:mod:`medsim.env_ids`) in any case.
Without gymnasium (the ``rl`` extra) the tasks, the core and learned policies still work.
"""

from __future__ import annotations

from medsim.env_ids import NAMESPACE, register
from medsim.policies.env.task import GLUCOSE, TASKS, THEOPHYLLINE, EnvTask, TaskError, Treatment, resolve_task

try:
    import gymnasium
except ImportError:  # no rl extra: nothing to register
    gymnasium = None
else:
    from medsim.policies.env.gym_env import MedsimEnv, SafetyAPI


def register_envs() -> None:
    """Register every task as ``medsim/<Task>-v0`` (idempotent; also gymnasium's plugin entry point)."""
    if gymnasium is not None:
        register(gymnasium, tuple(TASKS))


register_envs()

__all__ = [
    "GLUCOSE",
    "NAMESPACE",
    "TASKS",
    "THEOPHYLLINE",
    "EnvTask",
    "MedsimEnv",
    "SafetyAPI",
    "TaskError",
    "Treatment",
    "register_envs",
    "resolve_task",
]
