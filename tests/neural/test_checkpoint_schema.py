"""Hand-edited checkpoint records: each wrong entry is a CheckpointFormatError naming it.

Reproduces the reported inputs (``latent_dim: "six"``, ``config: "x"``, ``weights_file:
"../x"``) that used to end in a traceback, and the neighbouring cases: absolute paths, other
file types, booleans for integers, sizes that would exhaust memory before the weights are read,
calibration and provenance entries the commands read.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from medsim.cli import app
from medsim.inference.neural import CheckpointFormatError, load_checkpoint, read_record, save_checkpoint
from medsim.models.neural import NeuralPatientModel
from medsim.models.neural.config import MAX_WIDTH


@pytest.fixture
def saved(config, tmp_path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(NeuralPatientModel(config), tmp_path / "m", provenance={"test_ids": ["1"]})


def edit(path: Path, change) -> Path:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    return path


def set_config(key, value):
    return lambda r: r["config"].__setitem__(key, value)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (set_config("latent_dim", "six"), "config.latent_dim: expected an integer, got text 'six'"),
        (set_config("latent_dim", True), "config.latent_dim: expected an integer, got true/false True"),
        (set_config("latent_dim", 2.5), "config.latent_dim: expected an integer, got number 2.5"),
        (set_config("latent_dim", 10**9), f"latent_dim must be at most {MAX_WIDTH}"),
        (set_config("dt", "0.1"), "config.dt: expected a finite number of magnitude at most 1e+30, got text '0.1'"),
        (set_config("dt", None), "config.dt: expected a finite number of magnitude at most 1e+30, got null"),
        (set_config("name", 7), "config.name: expected text, got integer 7"),
        (set_config("observables", "conc"), "config.observables: expected an array of objects"),
        (lambda r: r["config"]["observables"][0].__setitem__("cmts", ["a"]), "config.observables[0].cmts"),
        (lambda r: r["config"]["observables"][0].__setitem__("positive", "yes"), "observables[0].positive"),
        (lambda r: r["config"]["observables"][0].pop("name"), "config.observables[0]: missing key 'name'"),
        (lambda r: r["config"].__setitem__("doses", [5]), "config.doses[0]: expected an object, got integer 5"),
        (set_config("calibration", []), "config.calibration: expected an object"),
        (set_config("calibration", {"coverage": {"0.9": "0.95"}}), "config.calibration.coverage.0.9"),
        (set_config("calibration", {"coverage": {"0.9": 1.5}}), "a fraction between 0 and 1"),
        (set_config("calibration", {"n_predictions": -3}), "config.calibration.n_predictions"),
    ],
)
def test_wrong_config_types_name_the_field(saved, change, fragment):
    edit(saved, change)
    with pytest.raises(CheckpointFormatError) as err:
        load_checkpoint(saved)
    assert fragment in str(err.value)
    assert str(saved) in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("config", "x", "config: expected an object, got text 'x'"),
        ("weights_file", "../x", "no folder part"),
        ("weights_file", "../m.safetensors", "no folder part"),
        ("weights_file", "/etc/passwd", "no folder part"),
        ("weights_file", "sub/m.safetensors", "no folder part"),
        ("weights_file", "..", "no folder part"),
        ("weights_file", "m.json", "expected a .safetensors file name"),
        ("weights_file", 5, "weights_file: expected a file name, got integer 5"),
        ("weights_sha256", 123, "weights_sha256: expected 64 hexadecimal digits"),
        ("provenance", "x", "provenance: expected an object, got text 'x'"),
        ("provenance", {"test_ids": 5}, "provenance.test_ids: expected an array of subject IDs"),
        ("provenance", {"data_hash": ["a"]}, "provenance.data_hash: expected text"),
    ],
)
def test_wrong_record_entries_name_the_entry(saved, key, value, fragment):
    edit(saved, lambda r: r.__setitem__(key, value))
    for read in (read_record, load_checkpoint):
        with pytest.raises(CheckpointFormatError) as err:
            read(saved)
        assert fragment in str(err.value)


def test_weights_outside_the_folder_are_never_read(saved, tmp_path, monkeypatch):
    """A record pointing at ``../m.safetensors`` is refused even when that file exists and matches."""
    outside = tmp_path.parent / "m.safetensors"
    outside.write_bytes((tmp_path / "m.safetensors").read_bytes())
    edit(saved, lambda r: r.__setitem__("weights_file", "../m.safetensors"))
    opened = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: opened.append(p) or real(p))
    with pytest.raises(CheckpointFormatError, match="no folder part"):
        load_checkpoint(saved)
    assert outside not in opened
    outside.unlink()


def test_unreadable_records_are_checkpoint_errors(tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(CheckpointFormatError, match="is a folder"):
        read_record(tmp_path / "d.json")
    (tmp_path / "l.json").write_bytes('{"format": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(CheckpointFormatError, match="not UTF-8"):
        read_record(tmp_path / "l.json")


def test_a_valid_checkpoint_still_loads_without_unpickling(saved, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    assert load_checkpoint(saved).provenance == {"test_ids": ["1"]}


def test_calibrate_command_reports_a_wrong_type_without_traceback(saved, tmp_path):
    edit(saved, set_config("latent_dim", "six"))
    table = tmp_path / "t.csv"
    table.write_text("ID,TIME,DV,AMT,EVID,CMT\n1,0,.,100,1,1\n1,1,3,0,0,2\n")
    result = CliRunner().invoke(app, ["calibrate", str(saved), str(table)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "config.latent_dim: expected an integer" in result.output


def test_nan_weights_are_refused_by_name(config, tmp_path):
    """Reported: NaN weights surfaced as "combined residual error needs add > 0" far from the cause."""
    torch.manual_seed(0)
    model = NeuralPatientModel(config)
    with torch.no_grad():
        model.decoder.raw_add.fill_(float("nan"))
    path = save_checkpoint(model, tmp_path / "nan")
    with pytest.raises(CheckpointFormatError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "decoder.raw_add" in message and "NaN or infinite" in message
    assert "needs add" not in message


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _places(record):
    """(container, key) pairs of a record where a hostile value can go."""
    config = record["config"]
    yield from ((record, k) for k in ("config", "weights_file", "weights_sha256", "provenance", "format_version"))
    yield from ((config, k) for k in config)
    yield from ((config["observables"][0], k) for k in config["observables"][0])
    yield from ((config["doses"][0], k) for k in config["doses"][0])
    yield from ((config, k) for k in ("calibration",))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_hostile_entry_is_a_checkpoint_error_or_loads(saved, data):
    """Property: replacing one entry by any JSON value never escapes as another exception."""
    pristine = json.loads(saved.read_text())
    record = json.loads(saved.read_text())
    places = list(_places(record))
    container, key = places[data.draw(st.integers(0, len(places) - 1), label="place")]
    container[key] = data.draw(JSON, label="value")
    saved.write_text(json.dumps(record))
    try:
        loaded = load_checkpoint(saved)
    except CheckpointFormatError as err:
        assert str(saved) in str(err) or "safetensors" in str(err)
    else:
        assert loaded.model is not None
    finally:
        saved.write_text(json.dumps(pristine))
