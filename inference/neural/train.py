"""Training the neural patient model: stochastic ELBO ascent with early stopping.

Every epoch visits the training windows in a random order (mini-batches of ``batch_size``),
maximising the per-window bound of :mod:`medsim.inference.neural.elbo` minus ``KL(q(delta)||p)/N``
(one data set's worth of weight KL spread over its ``N`` windows). The KL terms are annealed
from 0 to 1 over ``kl_warmup_epochs`` (Bowman et al. 2016), a standard guard against the
posterior collapsing onto the prior before the decoder has learnt anything. After each epoch
the bound is evaluated on held-out *validation subjects* with a fixed noise seed (common random
numbers, so epoch-to-epoch differences are not Monte Carlo noise) and full KL weight; training
stops after ``patience`` epochs without improvement and the best weights are kept.

Randomness: ``torch.manual_seed(seed)`` fixes the initial weights; one ``torch.Generator``
seeded from ``seed`` drives every Monte Carlo draw and one numpy generator the batch order, so
the same seed, data and settings give the same weights (on the same device and thread count).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from medsim.inference.neural.elbo import window_terms
from medsim.models.neural.config import NeuralConfig
from medsim.models.neural.model import NeuralPatientModel
from medsim.models.neural.windows import WindowSet, make_windows


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings.

    Attributes
    ----------
    epochs : int
        Maximum number of passes over the training windows.
    batch_size : int
    learning_rate : float
        Adam step size.
    patience : int
        Epochs without a better validation bound before stopping.
    kl_warmup_epochs : int
        Epochs over which the KL weight rises linearly from 0 to 1.
    grad_clip : float
        Maximum gradient norm.
    validation_fraction : float
        Share of the training subjects held out for early stopping (at least one subject).
    max_cuts_per_subject : int, optional
        Forecast origins per subject (see :func:`make_windows`).
    validation_samples : int
        Monte Carlo repetitions of the validation bound.
    device : str
    """

    epochs: int = 300
    batch_size: int = 128
    learning_rate: float = 3e-3
    patience: int = 30
    kl_warmup_epochs: int = 20
    grad_clip: float = 10.0
    validation_fraction: float = 0.2
    max_cuts_per_subject: int | None = None
    validation_samples: int = 2
    device: str = "cpu"

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "patience", "validation_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"train settings: {key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"train settings: validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if not self.learning_rate > 0:
            raise ValueError(f"train settings: learning_rate must be > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class EpochReport:
    """What one epoch did (passed to the progress callback).

    ``train_loss`` is the mean negative annealed bound per training window; ``validation_elbo``
    the validation bound per target observation (nats; higher is better, NaN without
    validation subjects).
    """

    epoch: int
    epochs: int
    train_loss: float
    validation_elbo: float
    kl_weight: float
    seconds: float
    improved: bool


@dataclass(frozen=True)
class TrainResult:
    """A trained model and how it was obtained."""

    model: NeuralPatientModel
    history: tuple[EpochReport, ...]
    best_epoch: int
    best_validation_elbo: float
    train_ids: tuple[str, ...]
    validation_ids: tuple[str, ...]
    n_train_windows: int
    seed: int
    settings: TrainSettings
    seconds: float
    stopped_early: bool = field(default=False)


def evaluate_bound(
    model: NeuralPatientModel, windows: WindowSet, *, seed: int, samples: int = 1, batch_size: int = 256
) -> float:
    """Mean bound per target observation on ``windows`` (full KL weight, fixed noise seed)."""
    if len(windows) == 0:
        return float("nan")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for _ in range(samples):
            for start in range(0, len(windows), batch_size):
                batch = windows.batch(np.arange(start, min(start + batch_size, len(windows))), device=device)
                terms = window_terms(model, batch, generator=generator)
                total += float(terms.elbo().sum())
                count += int(terms.n_targets.sum())
    return total / max(count, 1)


def _split_subjects(subjects: Sequence, fraction: float, rng: np.random.Generator) -> tuple[list, list]:
    if fraction <= 0 or len(subjects) < 2:
        return list(subjects), []
    n_val = min(len(subjects) - 1, max(1, round(fraction * len(subjects))))
    order = rng.permutation(len(subjects))
    val = set(order[:n_val].tolist())
    return [s for i, s in enumerate(subjects) if i not in val], [s for i, s in enumerate(subjects) if i in val]


def train(
    subjects: Sequence,
    config: NeuralConfig,
    *,
    seed: int,
    settings: TrainSettings | None = None,
    progress: Callable[[EpochReport], None] | None = None,
) -> TrainResult:
    """Fit a neural patient model to subjects' records.

    Parameters
    ----------
    subjects : sequence of medsim.data.Subject
        Training subjects (a held-out test set for calibration is the caller's to keep apart).
    config : NeuralConfig
        Architecture and normalisation (e.g. from :func:`config_from_cohort` on these subjects).
    seed : int
        Seeds weights, Monte Carlo draws, the validation split and the batch order.
    settings : TrainSettings, optional
    progress : callable, optional
        Called with an :class:`EpochReport` after every epoch (the CLI's progress bar).

    Raises
    ------
    ValueError
        If the subjects yield no training window (no observation after a forecast origin).
    """
    settings = settings or TrainSettings()
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    train_subjects, val_subjects = _split_subjects(list(subjects), settings.validation_fraction, rng)
    windows = make_windows(train_subjects, config, max_cuts_per_subject=settings.max_cuts_per_subject)
    if len(windows) == 0:
        raise ValueError("no training windows: every subject needs an observation after its first record")
    val_windows = make_windows(val_subjects, config, max_cuts_per_subject=settings.max_cuts_per_subject)
    torch.manual_seed(seed)
    model = NeuralPatientModel(config).to(settings.device)
    generator = torch.Generator(device="cpu").manual_seed(seed + 1)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    n_windows = len(windows)
    best_state, best_value, best_epoch = copy.deepcopy(model.state_dict()), -math.inf, 0
    history: list[EpochReport] = []
    stale = 0
    for epoch in range(1, settings.epochs + 1):
        tick = time.perf_counter()
        kl_weight = min(1.0, epoch / settings.kl_warmup_epochs) if settings.kl_warmup_epochs > 0 else 1.0
        model.train()
        order = rng.permutation(n_windows)
        losses = []
        for start in range(0, n_windows, settings.batch_size):
            batch = windows.batch(order[start : start + settings.batch_size], device=settings.device)
            terms = window_terms(model, batch, generator=generator)
            loss = -terms.elbo(kl_weight).mean() + kl_weight * model.dynamics.kl_delta() / n_windows
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimiser.step()
            losses.append(float(loss.detach()))
        model.eval()
        if len(val_windows):
            value = evaluate_bound(model, val_windows, seed=seed + 2, samples=settings.validation_samples)
        else:
            # Without validation subjects the training bound (at full KL weight) decides.
            value = -float(np.mean(losses)) if kl_weight == 1.0 else -math.inf
        improved = value > best_value and math.isfinite(value)
        if improved:
            best_value, best_epoch, stale = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        report = EpochReport(
            epoch=epoch,
            epochs=settings.epochs,
            train_loss=float(np.mean(losses)),
            validation_elbo=value,
            kl_weight=kl_weight,
            seconds=time.perf_counter() - tick,
            improved=improved,
        )
        history.append(report)
        if progress is not None:
            progress(report)
        # Never stop during the KL warm-up: the bound is not comparable across its weights.
        if stale >= settings.patience and epoch > settings.kl_warmup_epochs:
            break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model,
        history=tuple(history),
        best_epoch=best_epoch,
        best_validation_elbo=best_value,
        train_ids=tuple(s.id for s in train_subjects),
        validation_ids=tuple(s.id for s in val_subjects),
        n_train_windows=n_windows,
        seed=seed,
        settings=settings,
        seconds=time.perf_counter() - started,
        stopped_early=len(history) < settings.epochs,
    )
