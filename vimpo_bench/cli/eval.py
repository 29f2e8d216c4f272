"""`vimpo-bench eval`: parse, build an EvalConfig, call `evaluate.run_eval`, print the summary."""

from __future__ import annotations

import json
import math

import typer

from vimpo_bench.cli import app, fail


class _ProgressBar:
    """One tqdm bar per suite on stderr: problems done, accuracy so far, ETA (off when not a TTY)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.suite = None

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if event.suite != self.suite:
            self.close()
            self.suite = event.suite
            self.bar = tqdm(
                total=event.total,
                desc=f"{event.suite} [{event.suite_index + 1}/{event.n_suites}]",
                unit="problem",
                disable=None,
                leave=True,
            )
        self.bar.n = event.done
        self.bar.set_postfix(acc=f"{event.accuracy:.3f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _print_summary(result) -> None:
    n = result.config["sampling"]["n"]
    typer.echo(
        f"model {result.model}  harness {result.harness}  template {result.config['template']}  "
        f"n={n} T={result.config['sampling']['temperature']}  grader {result.grader_version}"
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
            f"mlflow run {result.run_id}"
            + (f" (nested under {result.parent_run_id})" if result.parent_run_id else "")
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
        help="Model folder, checkpoint folder, MLflow run id (its checkpoint/ artifact), 'tiny-arith' or a hub id.",
    ),
    suite: str = typer.Option(
        "math500",
        "--suite",
        help="math500, aime24, aime25, aime, olympiadbench, math, arith; or a comma list.",
    ),
    template: str = typer.Option(
        "qwen-boxed", "--template", help="Prompt template: qwen-boxed, r1 or plain (arith always plain)."
    ),
    preset: str = typer.Option(
        "greedy", "--preset", help="Sampling preset: greedy, avg16, r1, dapo, passk; flags below override it."
    ),
    n: int = typer.Option(None, "--n", help="Samples per problem (avg@n, pass@k for k <= n, maj@n)."),
    temperature: float = typer.Option(None, "--temperature", help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(None, "--top-p", help="Nucleus sampling threshold."),
    top_k: int = typer.Option(0, "--top-k", help="Top-k cutoff (0 = off)."),
    max_tokens: int = typer.Option(4096, "--max-tokens", help="New tokens per sample."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (batch b uses seed + b)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N problems of each suite."),
    data_dir: str = typer.Option(
        None,
        "--data-dir",
        help="Folder with <suite>/test.jsonl (default $VIMPO_BENCH_DATA, else the HF hub).",
    ),
    arith_option: list[str] = typer.Option(
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
    harness: str = typer.Option("native", "--harness", help="native or lm-eval."),
    backend: str = typer.Option("hf", "--backend", help="hf (transformers) or vllm (GPU)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    run: str = typer.Option(None, "--run", help="Training run id: the eval run is nested under it."),
    step: int = typer.Option(
        0, "--step", help="Step to log the metrics at (e.g. the training step of the checkpoint)."
    ),
    experiment: str = typer.Option(None, "--experiment", help="MLflow experiment (default vimpo-bench)."),
    output_dir: str = typer.Option(
        None, "--output-dir", help="Where records go (default runs/eval/<run id>)."
    ),
    track: bool = typer.Option(True, "--track/--no-track", help="Record an MLflow eval run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object, last."),
) -> None:
    """Evaluate a model on math benchmarks, graded like the papers grade, every sample kept."""
    from vimpo_bench import evaluate

    try:
        config = evaluate.EvalConfig(
            suites=suite,
            template=template,
            preset=preset,
            n=n,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
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
            output_dir=output_dir,
            step=step,
            progress=bar,
        )
    finally:
        bar.close()
    _print_summary(result)
    if as_json:
        typer.echo(json.dumps(result.summary(), default=str))
