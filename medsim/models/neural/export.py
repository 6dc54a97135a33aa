"""The trained neural model as a :class:`PhysiologyModel`: pure JAX functions of its weights.

After training, what a simulation needs from the neural model is its *prior* latent SDE, its
dose filters, its decoder and its residual error — a few small dense layers. Written out in
``jax.numpy`` they satisfy the :class:`PhysiologyModel` contract exactly (named states and
parameters, elementwise drift / diagonal diffusion / observe, one dose target per compartment),
so the mechanistic JAX :class:`~medsim.simulate.Simulator`, the virtual-population container and
the closed-loop rollout and the calibration gate run a neural patient with no special case. The tests
keep an independent torch stepper of the same prior SDE (``tests/neural/torch_simulator.py``) to
check this export against.

Per-patient parameters (all dimensionless, prior ``N(0, 1)``; :class:`Parameter` kind
``covariate_effect`` is used only because it is the real-valued kind):

* ``embedding_*`` — the static random effect ``e``;
* ``weight_delta_*`` — the coordinates of the patient's posterior draw of drift weights;
* ``initial_latent_*``, ``initial_dose_cmt<c>`` — the state at time 0 (drawn from the encoder's
  conditional prior by :func:`medsim.models.neural.population.sample_neural_population`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from medsim.models.base import Covariate, Observable, Parameter, PhysiologyModel, ResidualError, State
from medsim.models.neural.model import NeuralPatientModel


@dataclass(frozen=True, eq=False)
class NeuralPhysiology(PhysiologyModel):
    """A trained neural patient model in the :class:`PhysiologyModel` contract (see module docstring).

    Build it with :func:`export_model`; ``weights`` are numpy arrays named after the torch
    module's layers. Two instances are equal only if they are the same object.
    """

    weights: Mapping[str, np.ndarray] = field(default_factory=dict)
    latent_names: tuple[str, ...] = ()
    embedding_names: tuple[str, ...] = ()
    delta_names: tuple[str, ...] = ()
    dose_names: tuple[str, ...] = ()
    time_scale: float = 1.0
    weight_prior_scale: float = 1.0
    min_diffusion: float = 0.0
    neural_config: Mapping = field(default_factory=dict)

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    # ------------------------------------------------------------------ named vectors and layers
    @staticmethod
    def _stack(values: Mapping, names: tuple[str, ...], like) -> jax.Array:
        if not names:
            return jnp.zeros((*jnp.shape(like), 0), jnp.float32)
        return jnp.stack([jnp.broadcast_to(jnp.asarray(values[n], jnp.float32), jnp.shape(like)) for n in names], -1)

    def _latent(self, x: Mapping) -> jax.Array:
        return self._stack(x, self.latent_names, x[self.latent_names[0]])

    def _prior_drift(self, z, u, e, delta) -> jax.Array:
        w = self.weights
        features = jnp.concatenate([z, u, e], axis=-1)
        phi = jnp.tanh(features @ w["body0_w"].T + w["body0_b"])
        phi = jnp.tanh(phi @ w["body2_w"].T + w["body2_b"])
        out = phi @ w["out_w"].T + w["out_b"]
        if self.delta_names:
            projected = jnp.einsum("rdh,...h->...rd", w["directions"], phi)
            out = out + self.weight_prior_scale * jnp.einsum("...r,...rd->...d", delta, projected)
        return (out - jax.nn.softplus(w["reversion"]) * z) / self.time_scale

    def _link(self, z, e) -> jax.Array:
        w = self.weights
        hidden = jnp.tanh(jnp.concatenate([z, e], axis=-1) @ w["dec_hidden_w"].T + w["dec_hidden_b"])
        return w["loc"] + w["scale"] * (hidden @ w["dec_out_w"].T + w["dec_out_b"])

    # ------------------------------------------------------------------ the contract
    def initial_state(self, theta):
        out = {n: jnp.asarray(theta[f"initial_{n}"]) for n in self.latent_names}
        out.update({n: jnp.asarray(theta[f"initial_{n}"]) for n in self.dose_names})
        return out

    def drift(self, t, x, theta, rate):
        z = self._latent(x)
        like = x[self.latent_names[0]]
        a = self._stack(x, self.dose_names, like)
        u = a / self.weights["input_scale"] if self.dose_names else a
        e = self._stack(theta, self.embedding_names, like)
        delta = self._stack(theta, self.delta_names, like)
        dz = self._prior_drift(z, u, e, delta)
        out = {n: dz[..., i] for i, n in enumerate(self.latent_names)}
        for i, n in enumerate(self.dose_names):
            out[n] = -x[n] / self.weights["time_constant"][i] + rate.get(n, 0.0)
        return out

    def diffusion(self, t, x, theta):
        w = self.weights
        z = self._latent(x)
        g = (jax.nn.softplus(w["diffusion_offset"] + w["diffusion_slope"] * z) + self.min_diffusion) / math.sqrt(
            self.time_scale
        )
        return {n: g[..., i] for i, n in enumerate(self.latent_names)}

    def observe(self, x, theta):
        like = x[self.latent_names[0]]
        link = self._link(self._latent(x), self._stack(theta, self.embedding_names, like))
        value = jnp.where(self.weights["positive"], jnp.exp(jnp.minimum(link, 80.0)), link)
        return {o.name: value[..., j] for j, o in enumerate(self.observables)}


def weights_digest(model: NeuralPatientModel) -> str:
    """SHA-256 (hex) of the model's weights and buffers, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_model(model: NeuralPatientModel, *, version: str | None = None) -> NeuralPhysiology:
    """The trained ``model`` as a :class:`NeuralPhysiology` (weights copied to numpy).

    Parameters
    ----------
    model : NeuralPatientModel
    version : str, optional
        The physiology model's version; default: the first 12 hex digits of
        :func:`weights_digest`, so files written for one set of weights (virtual populations)
        are refused for another.
    """
    cfg = model.config
    version = weights_digest(model)[:12] if version is None else version

    def arr(t) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    dyn, dec = model.dynamics, model.decoder
    weights = {
        "body0_w": arr(dyn.body[0].weight),
        "body0_b": arr(dyn.body[0].bias),
        "body2_w": arr(dyn.body[2].weight),
        "body2_b": arr(dyn.body[2].bias),
        "out_w": arr(dyn.out.weight),
        "out_b": arr(dyn.out.bias),
        "directions": arr(dyn.directions),
        "reversion": arr(dyn.reversion),
        "diffusion_offset": arr(dyn.diffusion_offset),
        "diffusion_slope": arr(dyn.diffusion_slope),
        "dec_hidden_w": arr(dec.hidden_layer.weight),
        "dec_hidden_b": arr(dec.hidden_layer.bias),
        "dec_out_w": arr(dec.output_layer.weight),
        "dec_out_b": arr(dec.output_layer.bias),
        "loc": arr(dec.loc),
        "scale": arr(dec.scale),
        "positive": dec.positive.detach().cpu().numpy().astype(bool),
        "input_scale": arr(model.input_scale),
        "time_constant": arr(model.filter_time_constants[:, 0]),
    }
    add, prop = arr(dec.residual_add), arr(dec.residual_prop)
    states = tuple(State(n, "1", "latent coordinate of the neural SDE") for n in model.latent_names) + tuple(
        State(n, d.unit, f"dose filter of CMT {d.cmt} (time constant {float(tc):.4g} {cfg.time_unit})")
        for n, d, tc in zip(model.filter_names, cfg.doses, weights["time_constant"], strict=True)
    )

    def real(name: str, description: str) -> Parameter:
        return Parameter(name, "1", 0.0, kind="covariate_effect", prior_sd=1.0, description=description)

    parameters = (
        tuple(real(n, "static patient embedding (random effect)") for n in model.embedding_names)
        + tuple(real(n, "coordinate of the posterior drift-weight draw") for n in model.delta_names)
        + tuple(real(f"initial_{n}", "latent state at time 0") for n in model.latent_names)
        + tuple(real(f"initial_{n}", "dose-filter amount at time 0") for n in model.filter_names)
    )
    observables = tuple(
        Observable(o.name, o.unit, "decoded by the neural model", bridge_scale="log" if o.positive else "linear")
        for o in cfg.observables
    )
    residual = {
        o.name: ResidualError("combined", add=float(add[j]), prop=float(prop[j]), add_unit=o.unit)
        for j, o in enumerate(cfg.observables)
    }
    return NeuralPhysiology(
        name=cfg.name,
        version=version,
        time_unit=cfg.time_unit,
        citation="neural CDE encoder + latent neural SDE (Kidger et al. 2020; Li et al. 2020; Hess et al. 2024)",
        description="trained neural patient model (prior latent SDE, dose filters, decoder)",
        states=states,
        parameters=parameters,
        observables=observables,
        covariates=tuple(Covariate(c.name, c.unit, c.mean) for c in cfg.covariates),
        residual=residual,
        dose_targets={d.cmt: n for d, n in zip(cfg.doses, model.filter_names, strict=True)},
        dose_scale={d.cmt: 1.0 for d in cfg.doses},
        dose_units={d.cmt: d.unit for d in cfg.doses},
        obs_targets={c: o.name for o in cfg.observables for c in o.cmts},
        weights=weights,
        latent_names=model.latent_names,
        embedding_names=model.embedding_names,
        delta_names=model.delta_names,
        dose_names=model.filter_names,
        time_scale=cfg.time_scale,
        weight_prior_scale=cfg.weight_prior_scale,
        min_diffusion=cfg.min_diffusion,
        neural_config=cfg.to_dict(),
    )
