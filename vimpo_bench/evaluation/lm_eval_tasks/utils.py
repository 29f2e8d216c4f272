"""Functions the task YAMLs name with `!function utils.<name>`: prompt and scoring through
vimpo-bench's own template and grader, so lm-eval scores exactly as `vimpo-bench eval` does."""

from __future__ import annotations

from vimpo_bench import grading
from vimpo_bench.tasks import prompts


def doc_to_text(doc: dict) -> str:
    """The default prompt when the YAMLs are run by `lm_eval` directly: qwen-boxed, no chat template."""
    return prompts.render("qwen-boxed", doc["problem"])


def completions_of(results: list) -> list[str]:
    """lm-eval passes [response] (take_first) or [[response, ...]] (take_first_k with repeats)."""
    first = results[0]
    return list(first) if isinstance(first, (list, tuple)) else [first]


def process_results(doc: dict, results: list) -> dict[str, float]:
    """accuracy = fraction of the doc's responses that `vimpo_bench.grading` marks correct."""
    graded = [grading.grade(c, str(doc["answer"])) for c in completions_of(results)]
    return {"accuracy": sum(g.correct for g in graded) / len(graded)}
