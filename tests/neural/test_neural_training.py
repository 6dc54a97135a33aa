"""Training reduces the loss, is reproducible from its seed, and checkpoints round-trip without pickle."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from medsim.inference.neural import (
    CheckpointFormatError,
    TrainSettings,
    evaluate_bound,
    load_checkpoint,
    read_record,
    save_checkpoint,
    train,
    update_calibration,
)
from medsim.models.neural import NeuralPatientModel, make_windows

# The settings of the shared ``trained`` fixture (conftest.py).
SETTINGS = TrainSettings(epochs=20, batch_size=64, learning_rate=1e-2, patience=100, kl_warmup_epochs=5)


def test_a_tiny_training_run_improves_the_held_out_bound(trained, cohort, config):
    history = trained.history
    assert len(history) == SETTINGS.epochs
    # From random weights the held-out bound is about -4 nats per observation (the decoder's
    # output is far from the data); 20 epochs must gain at least 1 nat per observation (they gain
    # about 2), far beyond the Monte Carlo noise of the fixed-seed estimate (~0.1 nat).
    assert trained.best_validation_elbo > history[0].validation_elbo + 1.0
    assert np.mean([r.train_loss for r in history[-5:]]) < np.mean([r.train_loss for r in history[:5]])
    # The returned model is the best epoch's: re-evaluating it reproduces the recorded bound.
    val = [s for s in cohort.subjects if s.id in trained.validation_ids]
    again = evaluate_bound(trained.model, make_windows(val, config), seed=3 + 2, samples=SETTINGS.validation_samples)
    assert again == pytest.approx(trained.best_validation_elbo, rel=1e-5)
    assert set(trained.train_ids).isdisjoint(trained.validation_ids)


def test_same_seed_same_weights(cohort, config):
    quick = TrainSettings(epochs=2, batch_size=64, patience=10, kl_warmup_epochs=1)
    a = train(cohort.subjects, config, seed=11, settings=quick).model.state_dict()
    b = train(cohort.subjects, config, seed=11, settings=quick).model.state_dict()
    c = train(cohort.subjects, config, seed=12, settings=quick).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_progress_callback_sees_every_epoch(cohort, config):
    seen = []
    train(cohort.subjects, config, seed=0, settings=TrainSettings(epochs=2, kl_warmup_epochs=1), progress=seen.append)
    assert [r.epoch for r in seen] == [1, 2] and all(r.epochs == 2 for r in seen)


def test_checkpoint_round_trip_uses_no_pickle(trained, tmp_path, monkeypatch):
    path = save_checkpoint(trained.model, tmp_path / "tiny", provenance={"seed": 3, "array": np.arange(2)})
    assert path == tmp_path / "tiny.json" and (tmp_path / "tiny.safetensors").exists()
    assert not list(tmp_path.glob("*.tmp"))

    def forbidden(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    loaded = load_checkpoint(tmp_path / "tiny.safetensors")
    original, restored = trained.model.state_dict(), loaded.model.state_dict()
    assert set(original) == set(restored)
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert loaded.config == trained.model.config
    assert loaded.provenance == {"seed": 3, "array": [0, 1]}
    assert not loaded.model.training


def test_checkpoint_errors_name_the_file(trained, tmp_path):
    save_checkpoint(trained.model, tmp_path / "a")
    save_checkpoint(NeuralPatientModel(trained.model.config), tmp_path / "b")
    # weights from another save: the recorded SHA-256 catches the mix-up
    (tmp_path / "a.safetensors").write_bytes((tmp_path / "b.safetensors").read_bytes())
    with pytest.raises(CheckpointFormatError, match=r"a\.safetensors.*SHA-256"):
        load_checkpoint(tmp_path / "a")
    (tmp_path / "c.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointFormatError, match=r"c\.json.*not a medsim neural checkpoint"):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(CheckpointFormatError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_update_calibration_keeps_the_weights(trained, tmp_path):
    save_checkpoint(trained.model, tmp_path / "m")
    before = read_record(tmp_path / "m")
    update_calibration(tmp_path / "m", {"coverage": {"0.9": 0.93}})
    after = read_record(tmp_path / "m")
    assert after["weights_sha256"] == before["weights_sha256"]
    assert load_checkpoint(tmp_path / "m").config.calibration == {"coverage": {"0.9": 0.93}}
