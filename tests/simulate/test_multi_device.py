"""The simulator split over several JAX CPU devices (run in a child process: the device count must
be set before JAX starts, which pytest's own process has already done)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np

N = 4096  # large enough to be split over 4 devices

TWO_INTERVALS = textwrap.dedent(
    f"""
    import jax
    import numpy as np
    from medsim.models import get
    from medsim.simulate import Simulator

    def two_intervals():
        model = get("pk_oral_1cmt")
        theta = {{p.name: np.full({N}, p.typical, np.float32) for p in model.parameters}}
        x = {{s: np.zeros({N}, np.float32) for s in model.state_names}}
        x["depot"] = np.full({N}, 320.0, np.float32)
        sim = Simulator(model, dt=0.05)
        first = sim.advance(x, theta, 0.0, 2.0, key=jax.random.key(0))
        # The second interval starts from the state the first handed back (on device 0).
        second = sim.advance(first.state, theta, 2.0, 4.0, key=jax.random.key(1))
        return np.asarray(second.state["central"])
    """
)

CHILD = (
    'import jax\njax.config.update("jax_num_cpu_devices", 4)\n'
    + TWO_INTERVALS
    + "\nimport json, sys\n"
    + "json.dump({'n': len(jax.local_devices()), 'central': two_intervals().tolist()}, sys.stdout)\n"
)


def test_consecutive_intervals_split_over_devices_match_one_device():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["n"] == 4
    namespace: dict = {}
    exec(TWO_INTERVALS, namespace)  # the same two intervals on this process's single device
    assert len(jax.local_devices()) == 1
    # Counter-based per-patient noise makes results independent of how patients are split, so the
    # two runs agree up to float32 round-off of differently fused kernels.
    np.testing.assert_allclose(out["central"], namespace["two_intervals"](), rtol=1e-5)
