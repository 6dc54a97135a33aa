"""Built-in treatment policies, one per file, each a frozen dataclass whose fields are its parameters.

``BUILTINS`` maps the spec name (``parse_policy("tdm:target=10")``) to the class. May import
``medsim`` and ``policies.protocol``; the safe-timing policy also uses the simulator.
"""

from policies.builtin.basal_bolus import BasalBolus
from policies.builtin.fixed import FixedDose
from policies.builtin.flip import Flip
from policies.builtin.pid import PID
from policies.builtin.replay import Replay
from policies.builtin.safe_timing import SafeTiming
from policies.builtin.tdm import TDM

BUILTINS: dict[str, type] = {
    "fixed": FixedDose,
    "tdm": TDM,
    "basal_bolus": BasalBolus,
    "pid": PID,
    "flip": Flip,
    "safe_timing": SafeTiming,
    "replay": Replay,
}

__all__ = ["BUILTINS", "PID", "TDM", "BasalBolus", "FixedDose", "Flip", "Replay", "SafeTiming"]
