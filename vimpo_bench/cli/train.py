"""`vimpo-bench train`: parse, load the config, call `vimpo_bench.train.run`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from tqdm import tqdm

from vimpo_bench.cli import app, fail


class _Bars:
    """tqdm bars for the warm start and the RL steps (step, reward, accuracy, ETA)."""

    def __init__(self):
        self.bars: dict[str, tqdm] = {}

    def __call__(self, phase: str, done: int, total: int, metrics: dict) -> None:
        bar = self.bars.get(phase)
        if bar is None:
            bar = self.bars[phase] = tqdm(total=total, desc=phase, unit="step", dynamic_ncols=True)
        bar.n = done
        if phase == "train":
            shown = {"reward": metrics.get("reward/trained_mean"), "acc": metrics.get("reward/clean_mean"),
                     "val": metrics.get("val/sampled_accuracy")}
            bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if v is not None}, refresh=False)
        else:
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@app.command("train")
def train_command(
    study: Path = typer.Option(None, "--study", help="Study file or packaged study name (default: tiny_demo)."),
    algo: str = typer.Option(None, "--algo", help="Algorithm: vimpo, grpo, dr_grpo, dapo, rloo."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: section.key=value (repeatable)."),
    engine: str = typer.Option(None, "--engine", help="Training engine: native (default) or trl (TRL's GRPOTrainer)."),
    resume: str = typer.Option(None, "--resume", help="MLflow run id to continue from its last checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary object last."),
) -> None:
    """Train a policy with VIMPO or a baseline; every run is recorded in MLflow."""
    from vimpo_bench.config import DEFAULT_STUDY, ConfigError, load_config
    from vimpo_bench.train import run

    overrides = list(set_)
    if algo:
        overrides.insert(0, f"algo.name={algo}")
    if engine:
        overrides.append(f"run.engine={engine}")
    try:
        config = load_config(str(study) if study else DEFAULT_STUDY, overrides)
    except ConfigError as exc:
        fail(str(exc))
    bars, started = _Bars(), []
    try:
        result = run(config, resume_run_id=resume, progress=bars, run_started=started.append)
    except KeyboardInterrupt:
        bars.close()
        typer.echo(_interrupted(config, started[0] if started else None), err=True)
        raise typer.Exit(130) from None
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


def _interrupted(config, run_id: str | None) -> str:
    """What Ctrl-C left behind (`train.run` recorded the run KILLED) and the command that continues it."""
    from vimpo_bench.checkpoints import find_checkpoint
    from vimpo_bench.config import RunConfig

    if run_id is None:
        return "interrupted before training started"
    if find_checkpoint(Path(config.run.output_dir) / run_id) is None:
        return f"interrupted: run {run_id} recorded KILLED before its first checkpoint; run the command again to start over"
    where = "" if config.run.output_dir == RunConfig.output_dir else f" --set run.output_dir={config.run.output_dir}"
    return f"interrupted: run {run_id} recorded KILLED; resume it with: vimpo-bench train --resume {run_id}{where}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
