"""`vimpo-bench train`: parse, load the config, call `vimpo_bench.engines.start` with a `runs.record.RunRequest`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import typer

from vimpo_bench.cli import ALGOS, ENGINES, app, choice, fail, tracking_uri_option
from vimpo_bench.cli.config_help import config_help
from vimpo_bench.cli.progress import StepBars


@app.command("train")
def train_command(
    study: Path = typer.Option(None, "--study",  # noqa: B008 - typer's way
                               help="Study file or packaged study name (default: tiny_demo)."),
    algo: Literal[ALGOS] = typer.Option(None, "--algo", parser=choice(ALGOS, "unknown algorithm {value!r}; valid "
                                        "algorithms: {valid}"), help="Algorithm (algo.name)."),
    set_: list[str] = typer.Option([], "--set",  # noqa: B008 - typer's way
                                   help="Override a config key: section.key=value (repeatable)."),
    engine: Literal[ENGINES] = typer.Option(None, "--engine", parser=choice(ENGINES, "--engine sets run.engine: "
                                            "{value!r} is not one of {valid}"),
                                            help=config_help("run.engine")),
    seed: int = typer.Option(None, "--seed", help=config_help("run.seed")),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help=config_help(
        "rollout.max_new_tokens", "`eval --max-new-tokens` is the same limit.")),
    experiment: str = typer.Option(None, "--experiment", help=config_help("run.experiment")),
    tracking_uri: str = tracking_uri_option(),
    resume: str = typer.Option(None, "--resume", help="MLflow run id to continue from its last checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary object last."),
) -> None:
    """Train a policy with VIMPO or a baseline; every run is recorded in MLflow.

    --algo sets algo.name (before --set, so that --set algo.KEY applies to it); --engine, --seed,
    --max-new-tokens and --experiment set the key they name, over --set."""
    from vimpo_bench.config import DEFAULT_STUDY, ConfigError, load_config
    from vimpo_bench.engines import start
    from vimpo_bench.runs.record import RunRequest

    overrides = list(set_)
    if algo:
        overrides.insert(0, f"algo.name={algo}")
    named = {"run.engine": engine, "run.seed": seed, "rollout.max_new_tokens": max_new_tokens,
             "run.experiment": None if experiment is None else json.dumps(experiment)}  # a YAML string, any name
    overrides += [f"{key}={value}" for key, value in named.items() if value is not None]
    try:
        config = load_config(str(study) if study else DEFAULT_STUDY, overrides)
    except ConfigError as exc:
        fail(str(exc))
    bars, started = StepBars(), []
    try:
        result = start(RunRequest(config, resume_run_id=resume, progress=bars, run_started=started.append,
                                  tracking_uri=tracking_uri))
    except KeyboardInterrupt:
        bars.close()
        typer.echo(_interrupted(config, started[0] if started else None, tracking_uri), err=True)
        raise typer.Exit(130) from None
    except ConfigError as exc:  # a config the chosen engine cannot honour, found before the run starts
        bars.close()
        fail(str(exc))
    finally:
        bars.close()
    if os.environ.get("RANK", "0") != "0":  # several processes (accelerate, torchrun): the main one reports
        return
    summary = result.summary()
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"run {summary['run_id']}: {summary['steps']} steps in {summary['wall_seconds']:.0f} s; validation accuracy "
            f"greedy {_pct(summary['initial_greedy_accuracy'])} -> {_pct(summary['final_greedy_accuracy'])}, "
            f"sampled {_pct(summary['initial_sampled_accuracy'])} -> {_pct(summary['final_sampled_accuracy'])}"
        )
        if "model.start_checksum" in summary:  # two results of one config are told apart by these
            typer.echo(
                f"ran on {summary['machine.cpu_model']}, GPU {summary['machine.accelerator']}, torch "
                f"{summary['versions.torch']}, transformers {summary['versions.transformers']}; starting weights "
                f"sha256 {summary['model.start_checksum']}"
            )


def _interrupted(config, run_id: str | None, tracking_uri: str | None = None) -> str:
    """What Ctrl-C left behind (the engine recorded the run KILLED) and the command that continues it."""
    from vimpo_bench.config import RunConfig
    from vimpo_bench.runs.checkpoints import find_checkpoint

    if run_id is None:
        return "interrupted before training started"
    if find_checkpoint(Path(config.run.output_dir) / run_id) is None:
        return f"interrupted: run {run_id} recorded KILLED before its first checkpoint; run the command again to start over"
    where = "" if config.run.output_dir == RunConfig.output_dir else f" --set run.output_dir={config.run.output_dir}"
    if tracking_uri:
        where += f" --tracking-uri {tracking_uri}"
    return f"interrupted: run {run_id} recorded KILLED; resume it with: vimpo-bench train --resume {run_id}{where}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
