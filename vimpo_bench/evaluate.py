"""Evaluation: suites, sampling protocols, grading, metrics with intervals, per-sample records.

    problems (tasks.get_suite_task) -> prompts (prompts.render) -> Generator.generate
        -> grading (GraderPool, per-answer timeout) -> records (JSONL + parquet) -> metrics -> tracker

`evaluate` is the library entry point (a generator in, an `EvalResult` out); `run_eval` is what the
CLI calls: it resolves `--model` (folder, checkpoint, MLflow run id or hub id), builds the backend,
opens the MLflow eval run (nested under a training run) and calls `evaluate` or the lm-eval harness.

Metric definitions (per suite; MLflow names `eval/<suite>/<name>`, see docs/eval.md):
  accuracy        mean over problems of (correct samples / n): greedy accuracy at n=1, avg@n above
  pass_at_k       unbiased pass@k of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), for k = 1..n,
                  computed as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i) (no huge binomials)
  maj_at_n        majority vote over the n extracted answers (n > 1); see `majority_correct`
  *_ci_low/high   95% interval over problems: Wilson when per-problem scores are 0/1, else normal
                  (mean +- 1.96 * sd / sqrt(N)); the variation is over problems, not over seeds
Library code never prints: progress goes to an optional callback.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vimpo_bench import faults, grading, prompts, tasks
from vimpo_bench.config import check_ranges, num
from vimpo_bench.rollout.base import Generator, SamplingParams
from vimpo_bench.tracking import NullTracker, Tracker

Z95 = 1.959963984540054


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
DEFAULT_MAX_TOKENS = 4096


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
    max_tokens: int = num(DEFAULT_MAX_TOKENS, ge=1)  # new tokens per sample
    seed: int = 0  # batch b of a suite is generated with seed + b
    limit: int | None = num(None, ge=1)  # first `limit` problems of each suite
    data_dir: str | None = None  # None: $VIMPO_BENCH_DATA, else the Hugging Face hub
    batch_size: int = num(32, ge=1)  # prompts per generate call
    grader_workers: int | None = num(None, ge=0)  # grading processes (None: min(cpus, 8); 0: in this process)
    grader_timeout: float = num(grading.DEFAULT_TIMEOUT, gt=0)  # seconds per answer

    def __post_init__(self) -> None:
        check_ranges(self, "eval")  # every number finite and in its declared range (NaN passes `x < 0`)
        tasks.expand_suites(self.suites)
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
        if self.top_k < 0 or self.max_tokens < 1 or self.batch_size < 1:
            raise ValueError("top_k must be >= 0, max_tokens >= 1 and batch_size >= 1")
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
            max_new_tokens=self.max_tokens,
            n=preset.n if self.n is None else int(self.n),
        )

    def record(self) -> dict[str, Any]:
        """The resolved settings, for the run record."""
        return {
            **asdict(self),
            "sampling": asdict(self.sampling()),
            "suite_list": tasks.expand_suites(self.suites),
        }


# --------------------------------------------------------------------------------------- metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Is the most common answer right? Correct samples count as one answer (they all equal the
    gold); wrong ones are grouped by their text with spaces removed; samples without an answer do
    not vote. Ties go to the answer seen first, so a tie never favours the gold by construction."""
    votes: Counter = Counter()
    first_seen: dict[str, int] = {}
    for i, (answer, ok) in enumerate(zip(answers, correct, strict=True)):
        if answer is None and not ok:
            continue
        key = "\0correct" if ok else re.sub(r"\s+", "", answer or "")
        votes[key] += 1
        first_seen.setdefault(key, i)
    if not votes:
        return False
    best = max(votes, key=lambda key: (votes[key], -first_seen[key]))
    return best == "\0correct"


def wilson_interval(successes: float, total: int, z: float = Z95) -> tuple[float, float]:
    if total == 0:
        return math.nan, math.nan
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def interval(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """95% interval of the mean of per-problem scores in [0, 1] (Wilson for 0/1 scores, else normal)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    if all(v in (0.0, 1.0) for v in values):
        return wilson_interval(sum(values), n, z)
    mean = sum(values) / n
    if n < 2:
        return math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)


def _slug(value: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_") or "none"


def suite_metrics(records: Sequence[dict[str, Any]], n: int) -> dict[str, float]:
    """Metrics of one suite from its per-sample records (n per problem, grouped by problem_id)."""
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_problem[r["problem_id"]].append(r)
    groups = list(by_problem.values())
    if any(len(g) != n for g in groups):
        raise ValueError(f"every problem needs exactly n={n} samples")
    scores = [sum(r["correct"] for r in g) / n for g in groups]
    counts = [sum(r["correct"] for r in g) for g in groups]
    out: dict[str, float] = {"n_problems": len(groups), "n_samples": len(records)}
    if not groups:
        return out
    out["accuracy"] = sum(scores) / len(scores)
    out["accuracy_ci_low"], out["accuracy_ci_high"] = interval(scores)
    if n > 1:
        out[f"avg_at_{n}"] = out["accuracy"]
        majority = [
            float(majority_correct([r["extracted"] for r in g], [r["correct"] for r in g])) for g in groups
        ]
        out[f"maj_at_{n}"] = sum(majority) / len(majority)
        out[f"maj_at_{n}_ci_low"], out[f"maj_at_{n}_ci_high"] = interval(majority)
    for k in range(1, n + 1):
        per_problem = [pass_at_k(n, c, k) for c in counts]
        out[f"pass_at_{k}"] = sum(per_problem) / len(per_problem)
        if k == n and n > 1:
            out[f"pass_at_{k}_ci_low"], out[f"pass_at_{k}_ci_high"] = interval(per_problem)
    for key in ("subject", "level"):
        buckets: dict[str, list[float]] = defaultdict(list)
        for g, score in zip(groups, scores, strict=True):
            if g[0].get(key) is not None:
                buckets[_slug(g[0][key])].append(score)
        for name, values in sorted(buckets.items()):
            out[f"{key}/{name}/accuracy"] = sum(values) / len(values)
            out[f"{key}/{name}/n_problems"] = len(values)
    out["grader_timeouts"] = sum(bool(r.get("timed_out")) for r in records)
    out["grader_errors"] = sum(r.get("grader_error") is not None for r in records)
    tokens = [r["tokens"] for r in records if r.get("tokens") is not None]
    if tokens:
        out["mean_response_tokens"] = sum(tokens) / len(tokens)
    out["truncation_rate"] = sum(r.get("finish_reason") == "length" for r in records) / len(records)
    return out


# --------------------------------------------------------------------------------------- records

RECORD_FIELDS = (
    "suite",
    "problem_id",
    "sample_index",
    "prompt",
    "completion",
    "extracted",
    "gold",
    "correct",
    "timed_out",
    "grader_error",
    "tokens",
    "finish_reason",
    "subject",
    "level",
    "template",
    "grader_version",
)


def make_records(
    suite: str,
    problems: Sequence[tasks.Problem],
    prompt_texts: Sequence[str],
    completions: Sequence[str],
    grades: Sequence[grading.GradeResult],
    n: int,
    template: str,
    tokens: Sequence[int | None] | None = None,
    finish_reasons: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One dict per sample (row i*n + j is sample j of problem i), fields `RECORD_FIELDS`."""
    out = []
    for row, (text, result) in enumerate(zip(completions, grades, strict=True)):
        problem = problems[row // n]
        level = problem.meta.get("level")
        out.append(
            {
                "suite": suite,
                "problem_id": problem.id,
                "sample_index": row % n,
                "prompt": prompt_texts[row // n],
                "completion": text,
                "extracted": result.extracted,
                "gold": problem.answer,
                "correct": bool(result.correct),
                "timed_out": bool(result.timed_out),
                "grader_error": result.error,
                "tokens": None if tokens is None else tokens[row],
                "finish_reason": None if finish_reasons is None else finish_reasons[row],
                "subject": problem.meta.get("subject"),
                "level": None if level is None else str(level),
                "template": template,
                "grader_version": grading.GRADER_VERSION,
            }
        )
    return out


def write_records(records: Sequence[dict[str, Any]], stem: Path) -> tuple[Path, Path]:
    """Write `<stem>.jsonl` and `<stem>.parquet`; returns both paths."""
    import pandas as pd

    stem.parent.mkdir(parents=True, exist_ok=True)
    jsonl, parquet = stem.with_suffix(".jsonl"), stem.with_suffix(".parquet")
    with jsonl.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    frame = pd.DataFrame(list(records), columns=list(RECORD_FIELDS))
    frame["tokens"] = frame["tokens"].astype("Int64")
    frame.to_parquet(parquet, index=False)
    return jsonl, parquet


# ------------------------------------------------------------------------------------ evaluation


@dataclass
class EvalProgress:
    """Sent to the progress callback after each generated and graded batch."""

    suite: str
    suite_index: int
    n_suites: int
    done: int  # problems done in this suite
    total: int  # problems in this suite
    accuracy: float  # accuracy so far in this suite
    elapsed_s: float


@dataclass
class SuiteResult:
    suite: str
    n_problems: int
    n_samples: int
    metrics: dict[str, float]
    grader_timeouts: int
    grader_errors: int
    data_sha256: str
    data_source: str
    template: str
    records_path: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "n_problems": self.n_problems,
            "n_samples": self.n_samples,
            "metrics": self.metrics,
            "grader_timeouts": self.grader_timeouts,
            "grader_errors": self.grader_errors,
            "data_sha256": self.data_sha256,
            "data_source": self.data_source,
            "template": self.template,
            "records": self.records_path,
        }


@dataclass
class EvalResult:
    suites: dict[str, SuiteResult]
    config: dict[str, Any]
    grader_version: str = grading.GRADER_VERSION
    run_id: str | None = None
    parent_run_id: str | None = None
    model: str | None = None
    harness: str = "native"
    output_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what `vimpo-bench eval --json` prints)."""
        return {
            "model": self.model,
            "harness": self.harness,
            "run_id": self.run_id,
            "parent_run_id": self.parent_run_id,
            "grader_version": self.grader_version,
            "template": self.config.get("template"),
            "sampling": self.config.get("sampling"),
            "output_dir": self.output_dir,
            "suites": {name: s.summary() for name, s in self.suites.items()},
            **self.extra,
        }


def _suite_data(task: Any, suite: str) -> tuple[str, str]:
    source = task.source("test") if hasattr(task, "source") else f"builtin:{suite}"
    return task.data_hash("test"), source


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


def finalize_suite(
    suite: str, records: list[dict[str, Any]], n: int, task: Any, template: str, output_dir: Path | None
) -> SuiteResult:
    """Metrics of a finished suite, its records written under `output_dir/records/`."""
    metrics = suite_metrics(records, n)
    sha, source = _suite_data(task, suite)
    path = None
    if output_dir is not None:
        jsonl, _ = write_records(records, output_dir / "records" / suite)
        path = str(jsonl.with_suffix(""))
    return SuiteResult(
        suite=suite,
        n_problems=int(metrics["n_problems"]),
        n_samples=int(metrics["n_samples"]),
        metrics=metrics,
        grader_timeouts=int(metrics.get("grader_timeouts", 0)),
        grader_errors=int(metrics.get("grader_errors", 0)),
        data_sha256=sha,
        data_source=source,
        template=template,
        records_path=path,
        records=records,
    )


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
            task = tasks.get_suite_task(suite, config.data_dir)
            problems = task.problems("test", config.limit)
            template = "plain" if suite == "arith" else config.template
            prompt_texts = [prompts.render(template, task.prompt(p), tokenizer) for p in problems]
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
        run_id=tracker.run_id,
        model=model,
        output_dir=None if out_dir is None else str(out_dir),
    )
    log_result(tracker, result, tokenizer, step=step)
    return result


def log_result(tracker: Tracker, result: EvalResult, tokenizer: Any = None, step: int = 0) -> None:
    """Params, tags, `eval/<suite>/<metric>` metrics and record artifacts of an eval run."""
    config = result.config
    suites = list(result.suites)
    tracker.set_tags(
        {
            "vimpo.kind": "eval",
            "vimpo.suite": ",".join(suites),
            "vimpo.harness": result.harness,
            "grader_version": result.grader_version,
        }
    )
    params: dict[str, Any] = {
        "grader_version": result.grader_version,
        "template": config["template"],
        "preset": config["preset"],
        "sampling": config["sampling"],
        "limit": config["limit"],
        "seed": config["seed"],
        "suites": config["suites"],
        "harness": result.harness,
        "grader_timeout": config["grader_timeout"],
    }
    if result.model:
        params["model"] = result.model
    for name, suite in result.suites.items():
        params[f"data.{name}.sha256"] = suite.data_sha256
        params[f"data.{name}.source"] = suite.data_source
        params[f"template.{name}"] = suite.template
    tracker.log_params(params)
    metrics = {
        f"eval/{name}/{key}": value for name, s in result.suites.items() for key, value in s.metrics.items()
    }
    tracker.log_metrics(
        {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}, step=step
    )
    tracker.log_dict(result.summary(), "summary.json")
    tracker.log_dict(
        {name: prompts.describe(s.template, tokenizer) for name, s in result.suites.items()}, "template.json"
    )
    for suite in result.suites.values():
        if suite.records_path:
            stem = Path(suite.records_path)
            tracker.log_artifact(stem.with_suffix(".jsonl"), "records")
            tracker.log_artifact(stem.with_suffix(".parquet"), "records")


# --------------------------------------------------------------------------- the CLI's one call


_RUN_ID = re.compile(r"^(?:runs:/)?([0-9a-f]{32})(?:/.*)?$")


def resolve_model(spec: str, download_dir: Path, tracking_uri: str | None = None) -> tuple[str, str | None]:
    """(what `models.load_policy` loads, the MLflow run it came from or None).

    `spec` is a local folder (a `save_pretrained` folder, or one holding `checkpoint/`), an MLflow
    run id (or `runs:/<id>`: its `checkpoint/` artifact is downloaded into `download_dir`), the
    built-in `tiny-arith`, or a Hugging Face hub id.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and (path / "checkpoint" / "config.json").is_file():
            path = path / "checkpoint"
        return str(path), None
    match = _RUN_ID.match(spec)
    if match:
        from vimpo_bench import tracking

        run_id = match.group(1)
        client = tracking._client(tracking_uri)
        try:
            client.get_run(run_id)
        except Exception as exc:
            raise ValueError(
                f"--model {spec!r}: no MLflow run with that id in {client.tracking_uri}"
            ) from exc
        try:
            local = client.download_artifacts(run_id, "checkpoint", str(download_dir))
        except Exception as exc:
            raise ValueError(f"MLflow run {run_id} has no 'checkpoint/' artifact to evaluate") from exc
        return local, run_id
    return spec, None


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
) -> EvalResult:
    """Evaluate `model` on `config.suites` and record an MLflow eval run (`track=False`: none).

    harness: "native" (our loop) or "lm-eval" (lm-evaluation-harness with our task YAMLs and grader).
    backend: "hf" (transformers, any device) or "vllm" (GPU). The eval run is nested under
    `parent_run_id`, or under the run `model` came from when it is a run id.
    """
    from vimpo_bench import tracking

    if harness not in ("native", "lm-eval"):
        raise ValueError(f"unknown harness {harness!r}; valid: native, lm-eval")
    if backend not in ("hf", "vllm"):
        raise ValueError(f"unknown backend {backend!r}; valid: hf, vllm")
    for suite in tasks.expand_suites(config.suites):  # data errors first, before loading a model
        tasks.get_suite_task(suite, config.data_dir).problems("test", config.limit)
    with tempfile.TemporaryDirectory(prefix="vimpo-eval-") as tmp:
        source, source_run = resolve_model(model, Path(tmp), tracking_uri)
        parent = parent_run_id or source_run
        tracker: Any = NullTracker()
        if track:
            suites = ",".join(tasks.expand_suites(config.suites))
            tracker = tracking.MlflowTracker.start(
                run_name=f"eval-{suites}",
                experiment=experiment or tracking.DEFAULT_EXPERIMENT,
                tags={"vimpo.kind": "eval", "vimpo.model": model},
                parent_run_id=parent,
                tracking_uri=tracking_uri,
            )
        out = (
            Path(output_dir)
            if output_dir
            else Path("runs") / "eval" / (tracker.run_id or time.strftime("%Y%m%d-%H%M%S"))
        )
        try:
            faults.point("suite-eval")
            if harness == "lm-eval":
                from vimpo_bench.lm_eval_tasks import evaluate_with_lm_eval

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
                generator, tokenizer = build_generator(source, config, backend=backend, dtype=dtype)
                result = evaluate(
                    generator, config, tokenizer, tracker, progress, out, step=step, model=model
                )
            result.parent_run_id = parent
            if track:
                tracker.log_dict(result.summary(), "summary.json")
                tracker.finish("FINISHED")
            return result
        except BaseException:
            if track:
                tracker.finish("FAILED")
            raise


def build_generator(source: str, config: EvalConfig, backend: str = "hf", dtype: str = "float32"):
    """(generator, tokenizer) for a model folder or hub id. Prompts rendered with the tokenizer's chat
    template already hold its BOS, so the tokenizer adds no special tokens to those."""
    uses_chat = config.template == "qwen-boxed"
    if backend == "vllm":
        from vimpo_bench.rollout.vllm import VLLMGenerator

        generator = VLLMGenerator(source, dtype="bfloat16" if dtype == "float32" else dtype)
        generator.add_special_tokens = not (uses_chat and prompts.has_chat_template(generator.tokenizer))
        return generator, generator.tokenizer
    from vimpo_bench.models import load_policy
    from vimpo_bench.rollout.hf import HFGenerator

    model, tokenizer = load_policy(source, dtype=dtype)
    add_special = not (uses_chat and prompts.has_chat_template(tokenizer))
    return HFGenerator(model, tokenizer, add_special_tokens=add_special), tokenizer


__all__ = [
    "PRESETS",
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
    "suite_metrics",
    "wilson_interval",
    "write_records",
]
