"""The `vimpo-bench` command line. Only this package imports typer (house rule 4).

Each command parses its arguments, loads a config and calls ONE library function. Errors that a
user can fix (`UserError`, `ValueError`, `FileNotFoundError`, ...) print one line and exit non-zero;
`--debug` shows the traceback.

One flag vocabulary: an idea has one name in every command (`--tracking-uri` the MLflow store,
`--experiment` the MLflow experiment, `--seed`, `--max-new-tokens` the response length limit, `--json`),
and an option with a fixed set of values is a typed choice: annotated `Literal[VALUES]` (listed in
`--help`) and parsed by `choice(VALUES, message)`, which refuses any other value while the command line is
parsed, before anything starts, in one line.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence

import typer
from typer.core import TyperOption

from vimpo_bench import faults

# The values of the typed choices. The CLI starts without importing torch, so the lists are written here;
# tests/test_cli_vocabulary.py checks each against the library's own (algorithms, presets, dtypes, ...).
ALGOS = ("dapo", "dr_grpo", "grpo", "rloo", "vimpo")  # vimpo_bench.algorithms.names()
ENGINES = ("native", "trl")  # engines.names()
BACKENDS = ("hf", "vllm")  # evaluate.BACKENDS
HARNESSES = ("native", "lm-eval")  # evaluate.HARNESSES
DTYPES = ("float32", "bfloat16", "float16")  # models.DTYPES
PRESETS = ("greedy", "avg16", "r1", "dapo", "passk")  # evaluate.PRESETS
TEMPLATES = ("qwen-boxed", "r1", "plain")  # prompts.TEMPLATES
FORMATS = ("html", "markdown")  # report.FORMATS

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


def choice_option(default: str | None, flag: str, values: Sequence[str], help: str,
                  message: str = "{value!r} is not one of {valid}"):
    """A typed-choice option (see `choice`): `NAME: Literal[VALUES] = choice_option(DEFAULT, "--flag", VALUES, HELP)`."""
    return typer.Option(default, flag, parser=choice(values, message), help=help)


def tracking_uri_option():
    """--tracking-uri, the same option in every command that reads or writes MLflow."""
    return typer.Option(None, "--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, else ./mlflow.db).")


def choice(values: Sequence[str], message: str = "{value!r} is not one of {valid}") -> Callable[[str], str]:
    """The parser of a typed choice: `typer.Option(DEFAULT, "--name", parser=choice(VALUES, message))` on a
    parameter annotated `Literal[VALUES]` (which lists them in --help, `<a|b|c>`). A value outside them is
    refused as the command line is parsed, before any import or start-up: `error: MESSAGE` (formatted with
    `value` and `valid`, the values comma-separated), exit 2."""

    def parse(value: str) -> str:
        if value in values:
            return value
        fail(message.format(value=value, valid=", ".join(values)))
        raise AssertionError("unreachable")  # fail() exits

    return parse


def _flags_take_no_type(option: TyperOption, ctx) -> str | None:
    """typer's rich help prints `<bool>` beside every flag (`--json`, `--debug`, `--help`), as if it took a
    value; its plain help prints nothing there. A flag takes no value: show no type."""
    return None if option.is_flag else _typer_display_type_rich(option, ctx)


_typer_display_type_rich = TyperOption.display_type_rich
TyperOption.display_type_rich = _flags_take_no_type


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
    from vimpo_bench.cli.progress import quiet_third_party

    quiet_third_party()  # before transformers loads: the CLI's own bars say what is going on
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
