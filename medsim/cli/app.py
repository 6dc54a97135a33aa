"""The shared typer application and the entry point."""

from __future__ import annotations

import gc

import typer

app = typer.Typer(
    name="medsim",
    help=(
        "medsim: fit Bayesian physiology models to irregularly measured cohorts, sample virtual "
        "patients, and estimate how likely a treatment policy lets a patient leave the safe range "
        "(including between measurements)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# Thresholds of Python's cyclic garbage collector for one command's process. At the defaults
# (700, 10, 10) a warm ``medsim risk`` run spends ~0.6 s of CPU in ~700 collections that traverse
# the objects of jax, numpy and matplotlib again and again, though almost all of them live until
# the process ends. Collecting after 50 000 new container objects instead (as mypy does with
# 200 000) leaves ~10 collections; objects that form no reference cycle are freed as before, and
# cyclic garbage waits at most that many allocations longer.
GC_THRESHOLDS = (50_000, 20, 10)


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit with ``code`` (2: bad input, the commands' convention)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def use_all_cores() -> None:
    """One JAX CPU device per core (``jax_num_cpu_devices``; ``MEDSIM_CPU_DEVICES`` overrides the
    count), so that chunks of patients run side by side; a no-op once JAX has initialised (e.g. when a
    command is called from Python). Results do not depend on it: every patient draws from its own
    random streams."""
    import os

    import jax

    count = int(os.environ.get("MEDSIM_CPU_DEVICES", os.cpu_count() or 1))
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already initialised: keep its devices
        pass


def main() -> None:
    """Console-script entry point (also ``python -m medsim.cli``).

    Sets :data:`GC_THRESHOLDS` for the command, and when it returns moves every object to the
    collector's permanent generation (``gc.freeze``): the interpreter's shutdown then frees the
    modules without traversing them in full collections again (~0.5 s of a risk run's exit).
    ``app`` itself (what tests and other programs call) changes no collector setting.
    """
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        app()
    finally:
        gc.freeze()


def _print_version(value: bool) -> None:
    """Eager ``--version``: runs while the options are parsed, so it needs no command after it."""
    if value:
        from medsim import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print medsim's version and exit.", is_eager=True, callback=_print_version
    ),
    compile_cache: str = typer.Option(
        None,
        "--compile-cache",
        help="Folder for compiled programs reused by later runs, or 'off' (default: $MEDSIM_COMPILE_CACHE, else "
        "$XDG_CACHE_HOME/medsim/jax or ~/.cache/medsim/jax).",
    ),
) -> None:
    """medsim: fit → sample → evaluate a policy's risk, with its uncertainty."""
    # Before any command imports JAX: the settings reach it through the environment (lazily).
    import os

    from medsim.compile_cache import ENV, CompileCacheError, enable

    if compile_cache is not None:
        os.environ[ENV] = compile_cache
    try:
        enable()
    except CompileCacheError as err:
        if ENV in os.environ:  # asked for by name: say why it cannot be used
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        enable("off")  # the default folder is not writable (e.g. a read-only home): run without it
