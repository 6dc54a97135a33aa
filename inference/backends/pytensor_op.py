"""The cohort's EKF log-likelihood as a PyTensor ``Op``, so PyMC models reuse the JAX likelihood.

The likelihood is written once, in JAX (:func:`medsim.inference.hierarchical.pointwise_loglik`, which
calls :func:`medsim.inference.likelihood.cohort_loglik`). :class:`CohortLogLikOp` wraps it for PyTensor
graphs: its inputs are the values of the sample sites the likelihood reads (population sites and
the scaled random effects ``eta_<p>``), its first output is the summed log-likelihood of the whole
cohort and the remaining outputs are the gradients with respect to each input.

Why one ``Op`` with the gradient as extra outputs (and not ``pytensor.link.jax.ops.wrap_jax``)?
NUTS needs the log density and its gradient at every leapfrog step. ``wrap_jax`` builds a second
``Op`` for the vector–Jacobian product that re-runs the forward filter inside ``jax.vjp``, so each
step would pay for two forward passes. Here :meth:`CohortLogLikOp.perform` evaluates
``jax.value_and_grad`` once and :meth:`CohortLogLikOp.L_op` returns
``output_gradient * gradient_output``: in PyMC's compiled ``logp_dlogp`` function both the value
and the gradient come from the same ``Apply`` node, i.e. one compiled JAX call per step.

Precision: PyMC works in float64; the inputs are cast to the timeline's dtype (float32 by
default, the precision the numpyro backend samples in) and the results cast back to float64.

Pickling: PyMC sends the step method to its worker processes with cloudpickle. The ``Op`` keeps
only the :class:`~medsim.inference.problem.FitData` (numpy arrays and frozen dataclasses) in its state;
the jitted function is rebuilt lazily in each process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.tensor import as_tensor_variable
from pytensor.tensor.type import TensorType

from medsim.inference.problem import FitData


def likelihood_sites(data: FitData) -> tuple[str, ...]:
    """Names of the site values the cohort log-likelihood depends on, in the ``Op``'s input order.

    Population sites (typical values, covariate effects, process-noise scales, residual
    parameters) in :attr:`PriorSpec.sites` order, then ``eta_<p>`` (the scaled random effects,
    shape (S,)) for each parameter with between-subject variability. The BSV SDs ``omega_<p>``
    enter only through ``eta_<p>`` and are not inputs.
    """
    population = tuple(s.site for s in data.priors.sites if s.role != "omega")
    return population + tuple(f"eta_{p}" for p in data.priors.random_effects)


class CohortLogLikOp(Op):
    """``(site values...) -> (log-likelihood, d/d site_1, ..., d/d site_k)`` for one prepared cohort.

    Parameters
    ----------
    data : FitData
        The prepared cohort (timeline, covariates, prior specification).

    Notes
    -----
    Inputs follow :func:`likelihood_sites`: scalars for population sites, (S,) vectors for
    ``eta_<p>``. Output 0 is the float64 scalar ``sum_ij log p(y_ij | y_i,<j, theta_i)`` (the EKF
    marginal log-likelihood, see :mod:`medsim.inference.likelihood.ekf`); output ``1 + k`` is its
    gradient with respect to input ``k`` (same shape). Second derivatives are not provided (NUTS
    does not need them).

    Two instances are equal only if they are the same object: each wraps its own data, so
    PyTensor's graph merging must never identify ops built for different cohorts.
    """

    def __init__(self, data: FitData) -> None:
        self.data = data
        self.sites = likelihood_sites(data)
        self._value_and_grad = None

    # ------------------------------------------------------------------ pickling (PyMC workers)
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_value_and_grad"] = None  # jitted functions do not pickle; rebuilt on first use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ------------------------------------------------------------------ graph construction
    def make_node(self, *inputs: Any) -> Apply:
        if len(inputs) != len(self.sites):
            raise ValueError(f"CohortLogLikOp takes {len(self.sites)} inputs {list(self.sites)}, got {len(inputs)}")
        tensors = [as_tensor_variable(x, dtype="float64") for x in inputs]
        for name, x in zip(self.sites, tensors, strict=True):
            expected = 1 if name.startswith("eta_") else 0
            if x.ndim != expected:
                raise ValueError(f"CohortLogLikOp input {name!r}: expected {expected} dimension(s), got {x.ndim}")
        outputs = [TensorType("float64", shape=())()] + [x.type() for x in tensors]
        return Apply(self, tensors, outputs)

    def infer_shape(self, fgraph, node, input_shapes):
        return [(), *input_shapes]

    def _compiled(self):
        """``jit(value_and_grad)`` of the summed log-likelihood of one flat parameter vector."""
        if self._value_and_grad is None:
            import jax
            import jax.numpy as jnp

            from medsim.inference.hierarchical import pointwise_loglik

            data, sites, sizes = self.data, self.sites, self._sizes()
            offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()

            def total(flat: jax.Array) -> jax.Array:
                named = {}
                for name, a, b in zip(sites, offsets[:-1], offsets[1:], strict=True):
                    named[name] = flat[a:b] if name.startswith("eta_") else flat[a]
                return jnp.sum(pointwise_loglik(data, named))

            self._value_and_grad = jax.jit(jax.value_and_grad(total))
        return self._value_and_grad

    def _sizes(self) -> list[int]:
        return [self.data.n_subjects if name.startswith("eta_") else 1 for name in self.sites]

    def perform(self, node: Apply, inputs: Sequence[np.ndarray], output_storage: list) -> None:
        # One flat array in and out: each host<->device conversion costs about as much as the
        # small filter itself, so the inputs are packed rather than passed one by one.
        dtype = np.asarray(self.data.timeline.time).dtype
        with np.errstate(over="ignore"):  # a trajectory far out in the tails overflows float32 to inf
            flat = np.concatenate([np.ravel(x) for x in inputs]).astype(dtype)
        value, grad = self._compiled()(flat)
        output_storage[0][0] = np.asarray(value, np.float64)
        grad = np.asarray(grad, np.float64)
        start = 0
        for k, size in enumerate(self._sizes()):
            output_storage[1 + k][0] = grad[start : start + size].reshape(np.shape(inputs[k]))
            start += size

    def L_op(self, inputs, outputs, output_grads):
        for g in output_grads[1:]:
            if not isinstance(g.type, DisconnectedType):
                raise NotImplementedError("CohortLogLikOp provides first derivatives only")
        g_value = output_grads[0]
        if isinstance(g_value.type, DisconnectedType):
            return [x.zeros_like() for x in inputs]
        return [g_value * grad for grad in outputs[1:]]

    def connection_pattern(self, node: Apply) -> list[list[bool]]:
        return [[True] * len(node.outputs) for _ in node.inputs]

    def __str__(self) -> str:
        return f"CohortLogLikOp({self.data.model.name}, {self.data.n_subjects} subjects)"
