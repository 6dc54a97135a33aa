"""The ``medsim`` entry point's collector settings (see :data:`medsim.cli.app.GC_THRESHOLDS`)."""

from __future__ import annotations

import gc
import importlib

import pytest

# The module, not the typer application that medsim.cli exports under the same name.
app_module = importlib.import_module("medsim.cli.app")


def test_main_collects_rarely_and_freezes_what_is_left_at_exit(monkeypatch):
    seen = {}

    def command() -> None:
        seen["threshold"] = gc.get_threshold()
        raise SystemExit(3)  # as typer ends every command

    monkeypatch.setattr(app_module, "app", command)
    before = gc.get_threshold()
    try:
        with pytest.raises(SystemExit) as exit_info:
            app_module.main()
        assert exit_info.value.code == 3  # the command's status reaches the shell unchanged
        assert seen["threshold"] == app_module.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # shutdown does not traverse these objects again
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
