"""`vimpo-bench eval`: parse, build an EvalConfig, call `evaluate.run_eval`, print the summary."""

from __future__ import annotations

import json
import math
from typing import Literal

import typer

from vimpo_bench.cli import (
    BACKENDS,
    DTYPES,
    HARNESSES,
    PRESETS,
    TEMPLATES,
    app,
    choice_option,
    fail,
    tracking_uri_option,
)
from vimpo_bench.cli.progress import StepBars, bar


class _ProgressBar:
    """One tqdm bar per suite on stderr: problems done, accuracy so far, ETA (off when not a TTY); before them,
    the built-in model's warm start when it is built, with `train`'s bar (`model`)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.suite = None
        self.model_bars = StepBars()

    def model(self, phase: str, done: int, total: int, metrics: dict) -> None:
        if self.enabled:
            self.model_bars(phase, done, total, metrics)

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        self.model_bars.close()  # a warm start that stopped early (at its target accuracy) is over
        if event.suite != self.suite:
            self.close()
            self.suite = event.suite
            self.bar = bar(
                total=event.total, desc=f"{event.suite} [{event.suite_index + 1}/{event.n_suites}]", unit="problem"
            )
        self.bar.n = event.done
        self.bar.set_postfix(acc=f"{event.accuracy:.3f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.model_bars.close()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


DEFAULT_MAX_NEW_TOKENS = 4096  # evaluate.DEFAULT_MAX_NEW_TOKENS (the CLI starts without importing it)


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _print_summary(result) -> None:
    n = result.config["sampling"]["n"]
    typer.echo(
        f"model {result.model}  harness {result.harness}  backend {result.extra.get('backend')}  dtype "
        f"{result.extra.get('dtype')}  template {result.config['template']}  n={n} "
        f"T={result.config['sampling']['temperature']}  grader {result.grader_version}"
    )
    header = f"{'suite':<14}{'problems':>9}{'accuracy':>10}  {'95% CI':<17}"
    if n > 1:
        header += f"{f'pass@{n}':>10}{f'maj@{n}':>10}"
    typer.echo(header + f"{'timeouts':>10}")
    for name, suite in result.suites.items():
        m = suite.metrics
        line = (
            f"{name:<14}{suite.n_problems:>9}{_fmt(m.get('accuracy')):>10}  "
            f"{'[' + _fmt(m.get('accuracy_ci_low')) + ', ' + _fmt(m.get('accuracy_ci_high')) + ']':<17}"
        )
        if n > 1:
            line += f"{_fmt(m.get(f'pass_at_{n}')):>10}{_fmt(m.get(f'maj_at_{n}')):>10}"
        typer.echo(line + f"{suite.grader_timeouts:>10}")
    if result.run_id:
        typer.echo(
            f"mlflow run {result.run_id}" + (f" (nested under {result.parent_run_id})" if result.parent_run_id else "")
        )
    if result.output_dir:
        typer.echo(f"records in {result.output_dir}/records")


def _arith_options(items: list[str]) -> dict | None:
    """`--arith-option terms=4 --arith-option operators=+-` -> {"terms": 4, "operators": "+-"} (values as YAML)."""
    from vimpo_bench.config import parse_override

    if not items:
        return None
    options = {}
    for item in items:
        path, value = parse_override(item) if "=" in item else ([], None)  # the value as YAML, as `--set` reads it
        if len(path) != 1 or not path[0]:
            raise ValueError(f"--arith-option {item!r}: expected KEY=VALUE, e.g. terms=4")
        options[path[0]] = value
    return options


@app.command("eval")
def eval_command(
    model: str = typer.Option(
        ...,
        "--model",
        help="Model folder, a training run's folder or checkpoint folder, MLflow run id (its checkpoint/ "
        "artifact, else the checkpoint it wrote under its run.output_dir), 'tiny-arith' or a hub id.",
    ),
    suite: str = typer.Option(
        "math500",
        "--suite",
        help="math500, aime24, aime25, aime, olympiadbench, math, arith; or a comma list.",
    ),
    template: Literal[TEMPLATES] = choice_option(
        "qwen-boxed",
        "--template",
        TEMPLATES,
        "Prompt template (arith always plain).",
        "unknown prompt template {value!r}; valid templates: {valid}",
    ),
    preset: Literal[PRESETS] = choice_option(
        "greedy",
        "--preset",
        PRESETS,
        "Sampling preset; the flags below override it.",
        "unknown sampling preset {value!r}; valid presets: {valid}",
    ),
    n: int = typer.Option(None, "--n", help="Samples per problem (avg@n, pass@k for k <= n, maj@n)."),
    temperature: float = typer.Option(None, "--temperature", help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(None, "--top-p", help="Nucleus sampling threshold."),
    top_k: int = typer.Option(0, "--top-k", help="Top-k cutoff (0 = off)."),
    max_new_tokens: int = typer.Option(
        None,
        "--max-new-tokens",
        help=f"New tokens per sample (default {DEFAULT_MAX_NEW_TOKENS}): the length limit that train calls "
        "rollout.max_new_tokens.",
    ),
    max_tokens: int = typer.Option(None, "--max-tokens", hidden=True, help="Old name of --max-new-tokens."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (batch b uses seed + b)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N problems of each suite."),
    data_dir: str = typer.Option(
        None,
        "--data-dir",
        help="Folder with <suite>/test.jsonl (default $VIMPO_BENCH_DATA, else the HF hub).",
    ),
    arith_option: list[str] = typer.Option(  # noqa: B008 - typer's way
        [],
        "--arith-option",
        help="An option of the arith suite, KEY=VALUE (repeatable), as in the training config's task.options: "
        "e.g. --arith-option terms=4.",
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per generation call."),
    grader_workers: int = typer.Option(
        None, "--grader-workers", help="Grading processes (default min(cpus, 8); 0 = in-process)."
    ),
    grader_timeout: float = typer.Option(
        5.0, "--grader-timeout", help="Seconds per answer before it counts as a timeout."
    ),
    harness: Literal[HARNESSES] = choice_option(
        "native",
        "--harness",
        HARNESSES,
        "native (our loop) or lm-eval (lm-evaluation-harness's, with our tasks and grader).",
        "unknown harness {value!r}; valid: {valid}",
    ),
    backend: Literal[BACKENDS] = choice_option(
        "hf",
        "--backend",
        BACKENDS,
        "hf (transformers, anywhere) or vllm (a CUDA GPU and the vllm extra). Recorded as eval.backend.",
        "unknown backend {value!r}; valid: {valid}",
    ),
    dtype: Literal[DTYPES] = choice_option(
        "float32",
        "--dtype",
        DTYPES,
        "Weights' dtype (vllm runs float32 as bfloat16). Recorded as eval.dtype.",
        "unknown dtype {value!r}; valid: {valid}",
    ),
    run: str = typer.Option(None, "--run", help="Training run id: the eval run is nested under it."),
    step: int = typer.Option(
        0, "--step", help="Step to log the metrics at (e.g. the training step of the checkpoint)."
    ),
    experiment: str = typer.Option(None, "--experiment", help="MLflow experiment (default vimpo-bench)."),
    tracking_uri: str = tracking_uri_option(),
    output_dir: str = typer.Option(None, "--output-dir", help="Where records go (default runs/eval/<run id>)."),
    track: bool = typer.Option(True, "--track/--no-track", help="Record an MLflow eval run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object, last."),
) -> None:
    """Evaluate a model on math benchmarks, graded like the papers grade, every sample kept."""
    from vimpo_bench.evaluation import evaluate

    if max_tokens is not None:
        if max_new_tokens is not None and max_new_tokens != max_tokens:
            fail(f"--max-tokens {max_tokens} and --max-new-tokens {max_new_tokens}: one limit, give --max-new-tokens")
        typer.echo("warning: --max-tokens is the old name of --max-new-tokens", err=True)
        max_new_tokens = max_tokens
    try:
        config = evaluate.EvalConfig(
            suites=suite,
            template=template,
            preset=preset,
            n=n,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens,
            seed=seed,
            limit=limit,
            data_dir=data_dir,
            batch_size=batch_size,
            grader_workers=grader_workers,
            grader_timeout=grader_timeout,
            arith_options=_arith_options(arith_option),
        )
    except ValueError as exc:
        fail(str(exc))
    bar = _ProgressBar(progress)
    try:
        result = evaluate.run_eval(
            model,
            config,
            harness=harness,
            backend=backend,
            dtype=dtype,
            parent_run_id=run,
            track=track,
            experiment=experiment,
            tracking_uri=tracking_uri,
            output_dir=output_dir,
            step=step,
            progress=bar,
            model_progress=bar.model,
            notice=lambda line: typer.echo(line, err=True),
        )
    finally:
        bar.close()
    _print_summary(result)
    if as_json:
        typer.echo(json.dumps(result.summary(), default=str))
