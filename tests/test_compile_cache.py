"""JAX's persistent compilation cache as medsim configures it: where it goes, how it is turned
off, and that a second process loads what the first compiled instead of compiling it again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medsim import compile_cache

ROOT = Path(__file__).resolve().parents[1]


def test_folder_follows_the_environment(tmp_path):
    assert compile_cache.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "medsim" / "jax"
    assert compile_cache.cache_dir({}) == Path.home() / ".cache" / "medsim" / "jax"
    assert compile_cache.cache_dir({compile_cache.ENV: str(tmp_path / "c"), "XDG_CACHE_HOME": "/x"}) == tmp_path / "c"
    for off in ("off", "0", "False", "no", ""):
        assert compile_cache.cache_dir({compile_cache.ENV: off}) is None


def test_unusable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(compile_cache.CompileCacheError, match=r"file/jax: cannot create it.*MEDSIM_COMPILE_CACHE"):
        compile_cache.enable(blocker / "jax")


# A fresh process with the cache enabled the way the `medsim` command does (environment variables
# set before JAX is imported) compiles a small program; prints how many compilations hit the cache.
CHILD = """
import json, sys
from medsim import compile_cache
compile_cache.enable()
import jax
import jax.numpy as jnp
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
jax.jit(lambda x: jnp.cumsum(jnp.sin(x) * 2.0))(jnp.arange(5.0)).block_until_ready()
json.dump({"hits": events.count("/jax/compilation_cache/cache_hits"),
           "misses": events.count("/jax/compilation_cache/cache_misses")}, sys.stdout)
"""


def test_second_process_compiles_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path)}
    env.pop(compile_cache.ENV, None)

    def run() -> dict:
        done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    first = run()
    folder = tmp_path / "medsim" / "jax"
    written = sorted(p.name for p in folder.iterdir())
    assert first["misses"] >= 1 and written
    second = run()
    # Every program the second process needed came from the folder; none was compiled or added.
    assert second["misses"] == 0 and second["hits"] == first["misses"]
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith("-atime")) == sorted(
        n for n in written if not n.endswith("-atime")
    )


def test_cli_option_names_an_unusable_folder(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medsim.cli import app

    monkeypatch.setenv(compile_cache.ENV, "off")  # restored after the test (the option sets it)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = CliRunner().invoke(app, ["--compile-cache", str(blocker / "jax"), "models"])
    assert done.exit_code == 2
    assert "cannot create it" in done.output
