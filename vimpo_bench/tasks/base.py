"""The task interface shared by training (rewards) and evaluation (suites).

A task is a source of problems plus the rule that grades a completion against a problem's gold
answer. The built-in `arith` task and the math benchmarks implement the same interface, so the
trainer and the evaluator never special-case a task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Problem:
    """One problem: `question` is the raw text (no template), `answer` the gold final answer."""

    id: str
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """What every task provides.

    - `name`: the registry name.
    - `problems(split, limit=None)`: the problems of a split ("train" or "test"), in a fixed order.
    - `grade(completion, problem) -> bool`: the verifier; the same call scores training rewards and
      evaluation samples (house rule 8: one grader).
    - `extract(completion) -> str | None`: the answer the grader read, for per-sample records.
    - `prompt(problem) -> str`: the text given to a model before its completion, before any chat
      template (templates are applied by the caller that knows the tokenizer).
    - `data_hash(split) -> str`: a stable hash of the split's contents, for the run record.
    """

    name: str

    def problems(self, split: str, limit: int | None = None) -> list[Problem]: ...

    def grade(self, completion: str, problem: Problem) -> bool: ...

    def extract(self, completion: str) -> str | None: ...

    def prompt(self, problem: Problem) -> str: ...

    def data_hash(self, split: str) -> str: ...
