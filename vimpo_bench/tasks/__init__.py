"""Task registry: `get(name, **options)` builds a task; unknown names fail listing the valid ones."""

from __future__ import annotations

import importlib

from vimpo_bench.tasks.base import Problem, Task

# name -> "module:factory"; imported lazily so that `arith` never pays for the math-benchmark stack.
_REGISTRY: dict[str, str] = {
    "arith": "vimpo_bench.tasks.arith:ArithTask",
    "math500": "vimpo_bench.tasks.math_benchmarks:Math500",
    "aime24": "vimpo_bench.tasks.math_benchmarks:Aime24",
    "aime25": "vimpo_bench.tasks.math_benchmarks:Aime25",
    "olympiadbench": "vimpo_bench.tasks.math_benchmarks:OlympiadBench",
    "math_train": "vimpo_bench.tasks.math_benchmarks:MathTrain",
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, **options) -> Task:
    """Build the task `name` with its options (e.g. `get("arith", digits=2)`, `get("math500", data_dir=...)`)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(names())}")
    module_name, factory_name = _REGISTRY[name].split(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    return factory(**options)


__all__ = ["Problem", "Task", "get", "names"]
