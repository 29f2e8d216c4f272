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


# Evaluation suites: one task each, plus aliases that expand to several (reported per task).
SUITES: dict[str, tuple[str, ...]] = {
    "math500": ("math500",),
    "aime24": ("aime24",),
    "aime25": ("aime25",),
    "aime": ("aime24", "aime25"),
    "olympiadbench": ("olympiadbench",),
    "math": ("math500", "aime24", "aime25", "olympiadbench"),
    "arith": ("arith",),
}
# Tasks that read files from a data folder (take `data_dir`).
DATA_TASKS = ("math500", "aime24", "aime25", "olympiadbench", "math_train")


def expand_suites(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """ "aime,math500" or ["aime", "math500"] -> ["aime24", "aime25", "math500"] (order kept, no repeats).
    Unknown names fail listing the valid ones."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item not in SUITES:
            raise ValueError(f"unknown suite {item!r}; valid suites: {', '.join(SUITES)}")
        out.extend(name for name in SUITES[item] if name not in out)
    if not out:
        raise ValueError(f"no suite given; valid suites: {', '.join(SUITES)}")
    return out


def get_suite_task(name: str, data_dir=None, **options) -> Task:
    """The task behind one expanded suite name; data tasks get `data_dir` (None: env, then hub)."""
    if name in DATA_TASKS:
        return get(name, data_dir=data_dir, **options)
    return get(name, **options)


def resolve_arith_options(options: dict | None) -> dict:
    """Full, canonical arith options (defaults filled in); ValueError on unknown keys or bad values."""
    from vimpo_bench.tasks.arith import ArithTask

    options = dict(options or {})
    valid = ArithTask().options
    unknown = sorted(set(options) - set(valid), key=str)
    if unknown:
        raise ValueError(f"unknown arith option(s) {', '.join(map(str, unknown))}; valid: {', '.join(valid)}")
    return ArithTask(**options).options


def load(name: str, data_dir=None) -> list[Problem]:
    """The test problems of suite `name` (an alias concatenates its tasks' problems in order).

    Data tasks read `<data_dir>/<task>/test.jsonl` (`data_dir` None: `$VIMPO_BENCH_DATA`, else the
    Hugging Face hub); errors name the file and line.
    """
    problems: list[Problem] = []
    for task_name in expand_suites(name):
        problems.extend(get_suite_task(task_name, data_dir).problems("test"))
    return problems


__all__ = ["DATA_TASKS", "SUITES", "Problem", "Task", "expand_suites", "get", "get_suite_task", "load", "names"]
