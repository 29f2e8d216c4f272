"""The `vimpo-bench` command line. Only this package imports typer (house rule 4).

Each command parses its arguments, loads a config and calls ONE library function. Errors that a
user can fix (`UserError`, `ValueError`, `FileNotFoundError`, ...) print one line and exit non-zero;
`--debug` shows the traceback.
"""

from __future__ import annotations

import sys
import warnings

import typer

from vimpo_bench import faults

app = typer.Typer(
    name="vimpo-bench",
    help="Does VIMPO beat GRPO, where, and why? Train, evaluate, sweep and report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


def debug_enabled() -> bool:
    return _state["debug"] or "--debug" in sys.argv


def one_line(message: object, limit: int = 1000) -> str:
    """The first line of a message, cut to `limit` characters: an error is one readable line, whatever a
    library (or an echoed value) put in it."""
    text = faults.one_line(message)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(message: str, code: int = 2) -> None:
    """Print one clear line to stderr and exit non-zero."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def _register() -> None:
    # Each module adds its commands to `app`; imported here so `main` sees them all.
    import importlib

    for module in ("train", "eval", "report", "study"):
        try:
            importlib.import_module(f"vimpo_bench.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"vimpo_bench.cli.{module}":
                raise


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning of ours is one line saying what and why, not the file and source line that raised it."""
    return f"warning: {one_line(message)}\n"


def main() -> None:
    _register()
    if not debug_enabled():
        warnings.formatwarning = _warning_line
    try:
        app()
    except SystemExit as exc:  # Typer turns Ctrl-C into a silent exit 130 before the handler below sees it
        if exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            typer.echo("interrupted", err=True)
        raise
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # one clear line unless --debug
        if debug_enabled():
            raise
        typer.echo(f"error: {one_line(exc) if str(exc).strip() else type(exc).__name__}", err=True)
        sys.exit(1)
