"""Evaluation: suites, sampling protocols, grading, metrics with intervals, per-sample records.

    problems (tasks.get_suite_task) -> prompts (prompts.render) -> Generator.generate
        -> grading (GraderPool, per-answer timeout) -> records (JSONL + parquet) -> metrics -> tracker

`evaluate` is the library entry point (a generator in, an `EvalResult` out); `run_eval` is what the
CLI calls: it resolves `--model` (folder, checkpoint, MLflow run id or hub id), builds the backend,
opens the MLflow eval run (nested under a training run) and calls `evaluate` or the lm-eval harness.

Metrics, records and result objects live in `results` (shared with the lm-eval harness, which
imports it and never this module); they are re-exported here.
Library code never prints: progress goes to an optional callback.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vimpo_bench import faults, grading, tasks
from vimpo_bench.config import check_ranges, num
from vimpo_bench.evaluation.results import (
    RECORD_FIELDS,
    SETTINGS_KEYS,
    Z95,
    EvalProgress,
    EvalResult,
    SuiteResult,
    finalize_suite,
    interval,
    log_result,
    majority_correct,
    make_records,
    pass_at_k,
    suite_metrics,
    suites_grader_version,
    wilson_interval,
    write_records,
)
from vimpo_bench.evaluation.targets import (  # noqa: F401 - the model side of eval, re-exported for callers of evaluate
    DEFAULT_CONTEXT,
    TOKENIZER_FILES,
    build_generator,
    check_prompt_lengths,
    effective_dtype,
    model_context,
    model_folder,
    prepare_builtin_model,
    prompt_room,
    resolve_model,
    suite_prompts,
    tokenizer_and_config,
)
from vimpo_bench.rollout.base import Generator, SamplingParams
from vimpo_bench.runs.tracking import NullTracker, Tracker
from vimpo_bench.tasks import prompts

HARNESSES = ("native", "lm-eval")
BACKENDS = ("hf", "vllm")

# ------------------------------------------------------------------------------ sampling presets


@dataclass(frozen=True)
class Preset:
    temperature: float
    top_p: float
    n: int
    description: str


PRESETS: dict[str, Preset] = {
    "greedy": Preset(0.0, 1.0, 1, "greedy decoding, n=1: accuracy as most MATH-500 tables report it"),
    "avg16": Preset(0.6, 0.95, 16, "T=0.6, top-p 0.95, n=16: avg@16 / pass@1..16 (AIME-sized sets)"),
    "r1": Preset(
        0.6, 0.95, 64, "DeepSeek-R1 report protocol: T=0.6, top-p 0.95, pass@1 estimated from 64 samples"
    ),
    "dapo": Preset(1.0, 0.7, 32, "DAPO protocol: T=1.0, top-p 0.7, avg@32"),
    "passk": Preset(0.6, 0.95, 256, "pass@k curves up to k=256 (T=0.6, top-p 0.95)"),
}
DEFAULT_MAX_NEW_TOKENS = 4096


@dataclass
class EvalConfig:
    """What to evaluate and how. `n`, `temperature`, `top_p` left None take the preset's values."""

    suites: str = (
        "math500"  # one suite or a comma list: math500, aime24, aime25, aime, olympiadbench, math, arith
    )
    template: str = prompts.DEFAULT_TEMPLATE  # qwen-boxed | r1 | plain (arith always uses plain)
    preset: str = "greedy"  # a name in PRESETS
    n: int | None = num(None, ge=1)  # samples per problem
    temperature: float | None = num(None, ge=0)  # 0 = greedy
    top_p: float | None = num(None, gt=0, le=1)
    top_k: int = num(0, ge=0)  # 0 = off
    max_new_tokens: int = num(DEFAULT_MAX_NEW_TOKENS, ge=1)  # new tokens per sample
    seed: int = 0  # batch b of a suite is generated with seed + b
    limit: int | None = num(None, ge=1)  # first `limit` problems of each suite
    data_dir: str | None = None  # None: $VIMPO_BENCH_DATA, else the Hugging Face hub
    batch_size: int = num(32, ge=1)  # prompts per generate call
    grader_workers: int | None = num(None, ge=0)  # grading processes (None: min(cpus, 8); 0: in this process)
    grader_timeout: float = num(grading.DEFAULT_TIMEOUT, gt=0)  # seconds per answer
    # The built-in `arith` suite's task options (digits, terms, operators, ...: a training config's
    # `task.options`), so that a policy trained on 4-term problems is tested on 4-term problems.
    # None: the task's defaults. Resolved to the full option set, which the eval run records.
    arith_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_ranges(self, "eval")  # every number finite and in its declared range (NaN passes `x < 0`)
        suites = tasks.expand_suites(self.suites)
        if self.arith_options is not None:
            if "arith" not in suites:
                raise ValueError("arith options apply to the arith suite only; it is not among the suites")
            self.arith_options = tasks.resolve_arith_options(self.arith_options)
        prompts.check_template(self.template)
        if self.preset not in PRESETS:
            raise ValueError(f"unknown sampling preset {self.preset!r}; valid presets: {', '.join(PRESETS)}")
        p = self.sampling()
        if p.n < 1:
            raise ValueError(f"n must be >= 1, got {p.n}")
        if p.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {p.temperature}")
        if p.n > 1 and p.temperature == 0:
            raise ValueError(f"n={p.n} samples at temperature 0 are identical; give --temperature > 0 or n=1")
        if not 0 < p.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {p.top_p}")
        if self.top_k < 0 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("top_k must be >= 0, max_new_tokens >= 1 and batch_size >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.grader_timeout <= 0:
            raise ValueError(f"grader_timeout must be > 0, got {self.grader_timeout}")

    def sampling(self) -> SamplingParams:
        preset = PRESETS[self.preset]
        return SamplingParams(
            temperature=preset.temperature if self.temperature is None else float(self.temperature),
            top_p=preset.top_p if self.top_p is None else float(self.top_p),
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            n=preset.n if self.n is None else int(self.n),
        )

    def record(self) -> dict[str, Any]:
        """The resolved settings, for the run record."""
        return {
            **asdict(self),
            "sampling": asdict(self.sampling()),
            "suite_list": tasks.expand_suites(self.suites),
        }

    def suite_options(self, suite: str) -> dict[str, Any]:
        """The task options of one expanded suite name: the arith options for `arith`, none for the others."""
        return (self.arith_options or {}) if suite == "arith" else {}

    def suite_task(self, suite: str):
        """The task behind one expanded suite name, with this config's data folder and arith options."""
        return tasks.get_suite_task(suite, self.data_dir, **self.suite_options(suite))


# The eval-run params naming how the model ran: the generation backend and the weights' dtype change the
# numbers (bf16 vs fp32 logits flip greedy choices), so they are part of the settings key. Eval runs recorded
# before these params existed ran with the defaults: `made_with` reads a missing one as its default.
BACKEND_PARAM, DTYPE_PARAM = "eval.backend", "eval.dtype"
RUNTIME_DEFAULTS = {BACKEND_PARAM: "hf", DTYPE_PARAM: "float32"}


def runtime_params(backend: str = "hf", dtype: str = "float32") -> dict[str, str]:
    """`eval.backend` and `eval.dtype` (the dtype the weights ran in) of an eval run."""
    return {BACKEND_PARAM: backend, DTYPE_PARAM: effective_dtype(backend, dtype)}


def settings_params(config: EvalConfig, backend: str = "hf", dtype: str = "float32") -> dict[str, str]:
    """The eval-run params that determine its numbers, as the run stores them (`log_result`, `run_eval`):
    the suites, template, sampling, seed, limit, each suite's test-data hash (which the arith options
    determine), the backend and the dtype. An existing eval run was made with `config` iff its params hold
    all of these."""
    from vimpo_bench.runs.tracking import flatten

    record = config.record()
    params = {key: record[key] for key in SETTINGS_KEYS}
    for suite in record["suite_list"]:
        options = json.dumps(config.suite_options(suite), sort_keys=True)
        params[f"data.{suite}.sha256"] = _test_data_hash(suite, config.data_dir, options)
    params.update(runtime_params(backend, dtype))
    return {key: str(value) for key, value in flatten(params).items()}


@functools.lru_cache(maxsize=64)
def _test_data_hash(suite: str, data_dir: str | None, options_json: str) -> str:
    """A suite's test-set hash (a study plan asks it for every cell: generating or reading it once is enough)."""
    return tasks.get_suite_task(suite, data_dir, **json.loads(options_json)).data_hash("test")


def made_with(run_params: dict[str, str], config: EvalConfig, backend: str = "hf", dtype: str = "float32") -> bool:
    """Whether an eval run with these (MLflow) params was made with `config`'s settings on `backend` in
    `dtype` (a run from before `eval.backend` / `eval.dtype` were recorded ran with their defaults)."""
    return all(run_params.get(key, RUNTIME_DEFAULTS.get(key)) == value
               for key, value in settings_params(config, backend, dtype).items())


# ------------------------------------------------------------------------------------ evaluation

def _grade(
    task: Any, completions: list[str], problems: list[tasks.Problem], pool
) -> list[grading.GradeResult]:
    """The task's batch grader (math tasks: the process pool), else its per-sample `grade`."""
    if hasattr(task, "grade_batch"):
        return task.grade_batch(completions, problems, pool=pool)
    return [
        grading.GradeResult(bool(task.grade(c, p)), task.extract(c))
        for c, p in zip(completions, problems, strict=True)
    ]



def _needs_pool(suites: list[str]) -> bool:
    return any(s in tasks.DATA_TASKS for s in suites)


def evaluate(
    generator: Generator,
    config: EvalConfig,
    tokenizer: Any = None,
    tracker: Tracker | None = None,
    progress: Callable[[EvalProgress], None] | None = None,
    output_dir: str | os.PathLike | None = None,
    pool: grading.GraderPool | None = None,
    step: int = 0,
    model: str | None = None,
) -> EvalResult:
    """Generate, grade and score every suite of `config`; log to `tracker` (default: nothing).

    `tokenizer` supplies the chat template for `qwen-boxed`. Records go to
    `output_dir/records/<suite>.{jsonl,parquet}` (and to the tracker as artifacts). `pool`: a
    GraderPool to reuse (one is started and closed here otherwise, when a suite needs it).
    """
    tracker = tracker or NullTracker()
    suites = tasks.expand_suites(config.suites)
    params = config.sampling()
    out_dir = Path(output_dir) if output_dir is not None else None
    own_pool = None
    if pool is None and config.grader_workers != 0 and _needs_pool(suites):
        # Started before generation, so the workers import sympy while the model generates.
        own_pool = pool = grading.GraderPool(config.grader_workers, config.grader_timeout)
    results: dict[str, SuiteResult] = {}
    try:
        for index, suite in enumerate(suites):
            task = config.suite_task(suite)
            problems = task.problems("test", config.limit)
            template, prompt_texts = suite_prompts(config, suite, task, problems, tokenizer)
            records: list[dict[str, Any]] = []
            started = time.monotonic()
            for batch, start in enumerate(range(0, len(problems), config.batch_size)):
                chunk = problems[start : start + config.batch_size]
                rollouts = generator.generate(
                    prompt_texts[start : start + len(chunk)], params, seed=config.seed + batch
                )
                expanded = [p for p in chunk for _ in range(params.n)]
                grades = _grade(task, list(rollouts.texts), expanded, pool)
                tokens = rollouts.response_mask.sum(dim=1).tolist()
                finish = ["length" if t else "stop" for t in rollouts.truncated.tolist()]
                records.extend(
                    make_records(
                        suite,
                        chunk,
                        prompt_texts[start : start + len(chunk)],
                        list(rollouts.texts),
                        grades,
                        params.n,
                        template,
                        tokens,
                        finish,
                    )
                )
                if progress is not None:
                    progress(
                        EvalProgress(
                            suite,
                            index,
                            len(suites),
                            start + len(chunk),
                            len(problems),
                            sum(r["correct"] for r in records) / len(records),
                            time.monotonic() - started,
                        )
                    )
            results[suite] = finalize_suite(suite, records, params.n, task, template, out_dir)
    finally:
        if own_pool is not None:
            own_pool.close()
    result = EvalResult(
        suites=results,
        config=config.record(),
        grader_version=suites_grader_version(suites),
        run_id=tracker.run_id,
        model=model,
        output_dir=None if out_dir is None else str(out_dir),
    )
    log_result(tracker, result, tokenizer, step=step)
    return result


# --------------------------------------------------------------------------- the CLI's one call


def run_eval(
    model: str,
    config: EvalConfig,
    *,
    harness: str = "native",
    backend: str = "hf",
    dtype: str = "float32",
    parent_run_id: str | None = None,
    track: bool = True,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    output_dir: str | os.PathLike | None = None,
    step: int = 0,
    progress: Callable[[EvalProgress], None] | None = None,
    model_progress: Callable[[str, int, int, dict], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> EvalResult:
    """Evaluate `model` on `config.suites` and record an MLflow eval run (`track=False`: none).

    harness: "native" (our loop) or "lm-eval" (lm-evaluation-harness with our task YAMLs and grader).
    backend: "hf" (transformers, any device) or "vllm" (GPU). The eval run is nested under
    `parent_run_id`, or under the run `model` came from when it is a run id; its params `eval.backend` and
    `eval.dtype` (tags `vimpo.backend`, `vimpo.dtype`) say how the model ran.
    `model_progress(phase, done, total, metrics)` sees the built-in model's warm start when it is built
    (`train`'s progress signature); `notice(line)` is told what a long step does before it starts.
    Prompts longer than the model's context leaves beside `max_new_tokens` are cut from the left in both
    harnesses, with one warning (`check_prompt_lengths`).
    """
    if harness not in HARNESSES:
        raise ValueError(f"unknown harness {harness!r}; valid: {', '.join(HARNESSES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError("--backend vllm needs vLLM, which is not installed: it runs on a CUDA GPU and comes with "
                         "the package's vllm extra (pip install 'vimpo-bench[vllm]'); --backend hf runs anywhere")
    for suite in tasks.expand_suites(config.suites):  # data errors first, before loading a model
        config.suite_task(suite).problems("test", config.limit)
    with tempfile.TemporaryDirectory(prefix="vimpo-eval-") as tmp:
        source, source_run = resolve_model(model, Path(tmp), tracking_uri)
        source = prepare_builtin_model(source, model_progress, notice)
        parent = parent_run_id or source_run
        if harness == "native":  # a model that does not load fails before an eval run exists
            generator, tokenizer = build_generator(source, config, backend=backend, dtype=dtype)
            add_special = generator.add_special_tokens
            hf_config = generator.model.config if backend == "hf" else None
        else:
            tokenizer, hf_config = tokenizer_and_config(source)
            add_special = not (config.template == "qwen-boxed" and prompts.has_chat_template(tokenizer))
        if hf_config is None:
            hf_config = tokenizer_and_config(source)[1]
        check_prompt_lengths(config, tokenizer, model_context(hf_config, tokenizer), add_special, harness,
                             cut=harness == "lm-eval" or backend == "hf")
        tracker: Any = NullTracker()
        owner = None
        if track:
            tracker, owner = start_eval_run(model, config, experiment, parent, tracking_uri, output_dir,
                                            backend=backend, dtype=dtype)
        out = (
            Path(output_dir)
            if output_dir
            else Path("runs") / "eval" / (tracker.run_id or time.strftime("%Y%m%d-%H%M%S"))
        )
        try:
            faults.point("suite-eval")
            if harness == "lm-eval":
                from vimpo_bench.evaluation.lm_eval_tasks import evaluate_with_lm_eval

                result = evaluate_with_lm_eval(
                    source,
                    config,
                    backend=backend,
                    dtype=dtype,
                    tracker=tracker,
                    output_dir=out,
                    step=step,
                    progress=progress,
                    model=model,
                )
            else:
                result = evaluate(
                    generator, config, tokenizer, tracker, progress, out, step=step, model=model
                )
            result.parent_run_id = parent
            result.extra.update({"backend": backend, "dtype": effective_dtype(backend, dtype)})
            if track:
                tracker.log_dict(result.summary(), "summary.json")
                tracker.finish("FINISHED")
            return result
        except BaseException as exc:
            if track:
                tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")  # Ctrl-C is no failure
            raise
        finally:  # after the run's final status: a released lock with the run still RUNNING means a death
            if owner is not None:
                owner.release()


def start_eval_run(
    model: str,
    config: EvalConfig,
    experiment: str | None,
    parent: str | None,
    tracking_uri: str | None,
    output_dir: str | os.PathLike | None,
    backend: str = "hf",
    dtype: str = "float32",
):
    """(tracker, owner): a new MLflow eval run held by this process for its life (`vimpo_bench.runs.owners`: the
    lock is taken before the run exists), with the `eval.backend` and `eval.dtype` params (and `vimpo.backend`,
    `vimpo.dtype` tags). Eval runs of the experiment whose process died (kill -9, OOM) are marked KILLED
    first, so that no record says RUNNING forever."""
    from vimpo_bench.runs import owners, tracking

    experiment = experiment or tracking.DEFAULT_EXPERIMENT
    owner = owners.RunOwner(Path(output_dir) if output_dir else Path("runs") / "eval")
    runtime = runtime_params(backend, dtype)
    try:
        owners.close_dead_evals(experiment, tracking_uri)
        tracker = tracking.MlflowTracker.start(
            run_name=f"eval-{','.join(tasks.expand_suites(config.suites))}",
            experiment=experiment,
            tags={"vimpo.kind": "eval", "vimpo.model": model, "vimpo.backend": runtime[BACKEND_PARAM],
                  "vimpo.dtype": runtime[DTYPE_PARAM], **owner.tags},
            parent_run_id=parent,
            tracking_uri=tracking_uri,
        )
        tracker.log_params(runtime)
    except BaseException:
        owner.release()
        raise
    return tracker, owner

__all__ = [
    "PRESETS",
    "RECORD_FIELDS",
    "Z95",
    "EvalConfig",
    "EvalProgress",
    "EvalResult",
    "SuiteResult",
    "build_generator",
    "evaluate",
    "finalize_suite",
    "interval",
    "log_result",
    "majority_correct",
    "make_records",
    "pass_at_k",
    "resolve_model",
    "run_eval",
    "start_eval_run",
    "suite_metrics",
    "wilson_interval",
    "write_records",
]
