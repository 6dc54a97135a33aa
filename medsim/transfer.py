"""Host values onto the device without a compiled program.

``jnp.asarray`` of a numpy array (and ``jnp.asarray(x, dtype)``) runs a small compiled program
(``stage``, ``convert_element_type``) for every new shape and dtype; each is traced, lowered and
looked up in the persistent compilation cache again in every process, which a ``medsim risk`` run
pays dozens of times before its first interaction. ``jax.device_put`` copies the same values
(numpy's conversion to the canonical dtype, e.g. float64 -> float32 without x64), never sharing
the numpy buffer, and compiles nothing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def to_device(value: Any, dtype: Any = None) -> jax.Array:
    """The array ``jnp.asarray(value, dtype)`` gives, as a device transfer.

    Parameters
    ----------
    value : numpy array or scalar, JAX array, or Python scalar
        Python scalars without ``dtype`` keep ``jnp.asarray`` (they are weakly typed there).
    dtype : dtype, optional

    Returns
    -------
    jax.Array
    """
    if isinstance(value, jax.Array):
        return value if dtype is None or value.dtype == jnp.dtype(dtype) else value.astype(dtype)
    if dtype is None and not isinstance(value, np.ndarray | np.generic):
        return jnp.asarray(value)
    # A private copy: the transfer may complete after this returns (or share the buffer), and the
    # caller may reuse its array at once, as it could after jnp.asarray's synchronous copy.
    return jax.device_put(np.array(value, dtype, copy=True))
