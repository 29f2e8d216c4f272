"""What an evaluation produces: metrics with intervals, per-sample records, result objects, and how
they are logged. Both harnesses build on it: `evaluate` (our generation loop) and `lm_eval_tasks` (the
lm-evaluation-harness loop), so this module imports neither of them.

Metric definitions (per suite; MLflow names `eval/<suite>/<name>`, see docs/eval.md):
  accuracy        mean over problems of (correct samples / n): greedy accuracy at n=1, avg@n above
  pass_at_k       unbiased pass@k of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), for k = 1..n,
                  computed as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i) (no huge binomials)
  maj_at_n        majority vote over the n extracted answers (n > 1); see `majority_correct`
  *_ci_low/high   95% interval over problems: Wilson when per-problem scores are 0/1, else normal
                  (mean +- 1.96 * sd / sqrt(N)); the variation is over problems, not over seeds
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vimpo_bench import grading, tasks
from vimpo_bench.grading import grading_version
from vimpo_bench.runs.tracking import Tracker
from vimpo_bench.tasks import prompts

Z95 = 1.959963984540054


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
                "grader_version": grading_version(suite),
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



# ------------------------------------------------------------------------------------ results

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
            **({"arith_options": self.config["arith_options"]} if self.config.get("arith_options") else {}),
            "output_dir": self.output_dir,
            "suites": {name: s.summary() for name, s in self.suites.items()},
            **self.extra,
        }


def _suite_data(task: Any, suite: str) -> tuple[str, str]:
    source = task.source("test") if hasattr(task, "source") else f"builtin:{suite}"
    return task.data_hash("test"), source



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



def suites_grader_version(suites: Sequence[str]) -> str:
    """The grader version of an eval run over `suites`: each suite's (arith: exact match; the math suites:
    math-verify), the distinct ones joined with commas."""
    return ",".join(dict.fromkeys(grading_version(s) for s in suites))


# The params of an eval run, from its resolved EvalConfig record, that with each suite's `data.<suite>.sha256`
# determine its numbers: `evaluate.settings_params` compares an existing run's with a config's.
SETTINGS_KEYS = ("template", "sampling", "limit", "seed", "suites")


def log_result(tracker: Tracker, result: EvalResult, tokenizer: Any = None, step: int = 0) -> None:
    """Params, tags (with the code's commit and the package versions, as training runs carry them),
    `eval/<suite>/<metric>` metrics and record artifacts of an eval run."""
    from vimpo_bench.runs.provenance import git_state, package_versions

    config = result.config
    suites = list(result.suites)
    tracker.set_tags(
        {
            "vimpo.kind": "eval",
            "vimpo.suite": ",".join(suites),
            "vimpo.harness": result.harness,
            "grader_version": result.grader_version,
            **git_state(),
            **package_versions(),
        }
    )
    params: dict[str, Any] = {
        "grader_version": result.grader_version,
        "preset": config["preset"],
        **{key: config[key] for key in SETTINGS_KEYS},
        "harness": result.harness,
        "grader_timeout": config["grader_timeout"],
    }
    if result.model:
        params["model"] = result.model
    if config.get("arith_options"):  # what generated the arith problems (their hash is data.arith.sha256)
        params["arith_options"] = config["arith_options"]
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
