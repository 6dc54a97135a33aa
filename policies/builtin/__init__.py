"""Built-in treatment policies, one per file, each a frozen dataclass whose fields are its parameters.

``BUILTINS`` maps the spec name (``parse_policy("tdm:target=10")``) to the class. May import
``medsim`` and ``medsim.policies.protocol``; the safe-timing policy also uses the simulator.
"""

from medsim.policies.builtin.basal_bolus import BasalBolus
from medsim.policies.builtin.fixed import FixedDose
from medsim.policies.builtin.flip import Flip
from medsim.policies.builtin.pid import PID
from medsim.policies.builtin.replay import Replay
from medsim.policies.builtin.safe_timing import SafeTiming
from medsim.policies.builtin.tdm import TDM

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
