"""The suites as lm-eval tasks: the shipped YAMLs load in lm-eval, read the same files, and score
the same completions exactly as the native harness does; `--harness lm-eval` end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vimpo_bench import grading, tasks
from vimpo_bench.evaluation import evaluate as ev
from vimpo_bench.evaluation.lm_eval_tasks import SUITE_TASKS, TASK_DIR, load_task_yaml, task_config, utils

DATA = Path(
    os.environ.get("VIMPO_BENCH_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
needs_data = pytest.mark.skipif(
    not (DATA / "math500" / "test.jsonl").is_file(),
    reason=f"benchmark data not found at {DATA} (set VIMPO_BENCH_DATA to a folder laid out like ../shared/data)",
)


def test_yamls_ship_with_the_package_and_point_at_the_data_files():
    for suite, name in SUITE_TASKS.items():
        cfg = load_task_yaml(suite)
        assert cfg["task"] == name
        assert cfg["dataset_path"] == "json"
        assert cfg["dataset_kwargs"]["data_files"]["test"].endswith(f"{suite}/test.jsonl")
        assert cfg["process_results"] is utils.process_results
        assert cfg["output_type"] == "generate_until" and cfg["metric_list"][0]["metric"] == "accuracy"
    assert sorted(p.name for p in TASK_DIR.glob("*.yaml")) == sorted(
        ["_vimpo_math_base.yaml", *(f"{name}.yaml" for name in SUITE_TASKS.values())]
    )


def test_lm_eval_indexes_the_tasks_with_its_own_loader():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    assert set(SUITE_TASKS.values()) <= set(manager.all_tasks)
    assert "vimpo_math" in manager.all_tags


def _lm_eval_task(suite: str, template: str = "qwen-boxed", n: int = 1):
    from lm_eval.api.task import ConfigurableTask

    config = ev.EvalConfig(
        suites=suite, template=template, data_dir=str(DATA), **({"n": n, "temperature": 1.0} if n > 1 else {})
    )
    return ConfigurableTask(config=task_config(suite, DATA, template, None, config.sampling(), add_bos=True))


@needs_data
@pytest.mark.parametrize("suite", list(SUITE_TASKS))
def test_both_harnesses_score_the_same_completions_the_same(suite):
    task = _lm_eval_task(suite)
    docs = list(task.test_docs())[:10]
    problems = tasks.get(suite, data_dir=DATA).problems("test", limit=10)
    assert [str(d["id"]) for d in docs] == [p.id for p in problems]  # same file, same order
    assert task.doc_to_text(docs[0]) == ev.prompts.render("qwen-boxed", problems[0].question)
    completions, expanded = [], []
    for p in problems:
        for text in (
            f"Thus the answer is \\boxed{{{p.answer}}}.",
            "\\boxed{17}",
            f"The answer is {p.answer}",
            tail if "boxed" in (tail := (p.meta.get("solution") or "")[-300:]) else f"get {p.answer}, then 1",
        ):
            completions.append(text)
            expanded.append(p)
    native = [r.correct for r in tasks.get(suite, data_dir=DATA).grade_batch(completions, expanded)]
    by_lm_eval = [
        task.process_results(docs[i // 4], [c])["accuracy"] == 1.0 for i, c in enumerate(completions)
    ]
    assert by_lm_eval == native
    assert sum(native) >= 10  # the boxed gold at least


@needs_data
def test_repeats_are_scored_as_the_mean_over_samples():
    task = _lm_eval_task("aime24", n=4)
    doc = next(iter(task.test_docs()))
    assert task.config.repeats == 4
    answers = [f"\\boxed{{{doc['answer']}}}", "\\boxed{0}", "\\boxed{1}", f"so {doc['answer']}"]
    assert task.process_results(doc, [answers]) == {"accuracy": 0.5}


@needs_data
def test_lm_eval_harness_end_to_end_matches_the_native_harness(tmp_path):
    from test_evaluate import _tiny_model

    model = str(_tiny_model(tmp_path / "model"))
    config = ev.EvalConfig(
        suites="math500,aime25", limit=2, max_new_tokens=12, data_dir=str(DATA), grader_workers=0
    )
    native = ev.run_eval(model, config, track=False, output_dir=tmp_path / "native")
    harness = ev.run_eval(model, config, harness="lm-eval", track=False, output_dir=tmp_path / "lm-eval")
    assert harness.harness == "lm-eval" and harness.summary()["lm_eval"]["version"]
    for suite in ("math500", "aime25"):
        ours, theirs = native.suites[suite], harness.suites[suite]
        assert theirs.metrics["harness_disagreements"] == 0
        assert theirs.metrics["lm_eval_accuracy"] == theirs.metrics["accuracy"]
        assert theirs.data_sha256 == ours.data_sha256
        assert [r["prompt"] for r in theirs.records] == [r["prompt"] for r in ours.records]
        # Same greedy completions from both generation loops, graded the same.
        assert [r["completion"] for r in theirs.records] == [r["completion"] for r in ours.records]
        assert [r["correct"] for r in theirs.records] == [r["correct"] for r in ours.records]
        assert all(r["grader_version"] == grading.GRADER_VERSION for r in theirs.records)


def test_lm_eval_harness_refuses_suites_it_has_no_task_for():
    from vimpo_bench.evaluation.lm_eval_tasks import evaluate_with_lm_eval

    with pytest.raises(ValueError, match="not arith"):
        evaluate_with_lm_eval("unused", ev.EvalConfig(suites="arith"))


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (lazy imports count too)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_lm_eval_package_never_imports_evaluate():
    """One-way dependency: evaluate -> lm_eval_tasks -> results; neither of the last two reaches back."""
    import subprocess
    import sys

    import vimpo_bench

    root = Path(vimpo_bench.__file__).parent / "evaluation"
    for path in [*sorted((root / "lm_eval_tasks").glob("*.py")), root / "results.py"]:
        assert "vimpo_bench.evaluation.evaluate" not in _imported_modules(path), path
    assert "vimpo_bench.evaluation.lm_eval_tasks" in _imported_modules(root / "evaluate.py")
    evaluate = "vimpo_bench.evaluation.evaluate"
    for module in ("vimpo_bench.evaluation.lm_eval_tasks", "vimpo_bench.evaluation.results", evaluate):
        check = (f"import sys, {module}; "
                 f"assert ({evaluate!r} in sys.modules) == (sys.argv[1] == {evaluate!r})")
        proc = subprocess.run([sys.executable, "-c", check, module], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
