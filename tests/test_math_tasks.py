"""Math benchmark loaders on ../shared/data: exact counts and hashes, suites, clear data errors, and
the reference solutions graded by the one grader."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

from vimpo_bench import grading, tasks
from vimpo_bench.tasks.base import Task
from vimpo_bench.tasks.math_benchmarks import HUB_SOURCES, DataError, MathTrain, read_jsonl

DATA = Path(
    os.environ.get("VIMPO_BENCH_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
needs_data = pytest.mark.skipif(
    not (DATA / "math500" / "test.jsonl").is_file(),
    reason=f"benchmark data not found at {DATA} (set VIMPO_BENCH_DATA to a folder laid out like ../shared/data)",
)

# From shared/data/README.md.
EXPECTED = {
    "math500": (500, "680cfd5f6d38b444f5ae6662c0da445210a362f6826b5a2d27df98c92ab42b67"),
    "aime24": (30, "4c0e6dd415d464bbc9c46a99bdd24c8e7ac5bff5a35bd528e183d910f399c31f"),
    "aime25": (30, "95b4c09f7524dcf35d5d2f5e07b6a889c072755571de4861ff5c7a277df863ac"),
    "olympiadbench": (675, "9e9ad8e6e9917c1947145eeb85e8113b24d06ff67e4d8fafaf71526278db5339"),
}


@needs_data
@pytest.mark.parametrize("name", list(EXPECTED))
def test_loader_counts_and_hashes(name):
    task = tasks.get(name, data_dir=DATA)
    assert isinstance(task, Task)
    count, sha = EXPECTED[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right size gives no warning
        problems = task.problems("test")
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert all(p.answer.strip() and p.question.strip() for p in problems)
    assert task.data_hash("test") == sha
    assert task.source("test") == str(DATA / name / "test.jsonl")
    assert task.problems("test", limit=3) == problems[:3]
    assert task.prompt(problems[0]) == problems[0].question


@needs_data
def test_suites_and_load():
    assert tasks.expand_suites("aime") == ["aime24", "aime25"]
    assert tasks.expand_suites("math,aime24") == ["math500", "aime24", "aime25", "olympiadbench"]
    assert len(tasks.load("aime", data_dir=DATA)) == 60
    assert len(tasks.load("math", data_dir=DATA)) == 500 + 30 + 30 + 675
    assert len(tasks.load("arith")) == tasks.get("arith").n_test
    with pytest.raises(ValueError, match="unknown suite 'gsm8k'; valid suites: math500"):
        tasks.expand_suites("gsm8k")


@needs_data
def test_env_var_names_the_data_dir(monkeypatch):
    monkeypatch.setenv("VIMPO_BENCH_DATA", str(DATA))
    assert len(tasks.load("aime24")) == 30


@needs_data
def test_math500_meta_and_math_train():
    problems = tasks.get("math500", data_dir=DATA).problems("test")
    levels = [p.meta["level"] for p in problems]
    assert [levels.count(level) for level in range(1, 6)] == [43, 90, 105, 128, 134]
    assert {p.meta["subject"] for p in problems} >= {"Algebra", "Geometry", "Precalculus"}
    train = MathTrain(data_dir=DATA)
    # 500 of the 7,472 training problems are held out as the validation split
    assert len(train.problems("train")) + len(train.problems("validation")) == 7472
    leveled = MathTrain(data_dir=DATA, min_level=3)
    assert len(leveled.problems("train")) + len(leveled.problems("validation")) == 5561
    assert train.problems("test", limit=5) == problems[:5]
    with pytest.raises(ValueError, match="no 'train' split"):
        tasks.get("aime24", data_dir=DATA).problems("train")


@needs_data
def test_olympiadbench_multi_answer_golds_are_split():
    problems = tasks.get("olympiadbench", data_dir=DATA).problems("test")
    multi = [p for p in problems if "$,$" in p.answer.replace(" ", "")]
    assert len(multi) >= 15
    for p in multi:
        parts = grading.split_gold(p.answer)
        assert len(parts) >= 2 and all("$" not in part for part in parts)
        # One box per answer, in reverse order, is right.
        completion = " and ".join(f"\\boxed{{{part}}}" for part in reversed(parts))
        assert grading.is_correct(completion, p.answer), p.id


@pytest.fixture(scope="module")
def pool():
    with grading.GraderPool(workers=2, timeout=30.0) as p:
        yield p


@needs_data
def test_gold_answers_grade_as_correct_against_themselves(pool):
    golds = [p.answer for p in tasks.load("math", data_dir=DATA)][::7]
    completions = [f"The final answer is \\boxed{{{', '.join(grading.split_gold(g))}}}." for g in golds]
    wrong = [g for g, r in zip(golds, pool.grade(completions, golds), strict=True) if not r.correct]
    assert not wrong


@needs_data
def test_math500_reference_solutions_all_grade_correct(pool):
    problems = tasks.get("math500", data_dir=DATA).problems("test")
    results = pool.grade([p.meta["solution"] for p in problems], [p.answer for p in problems])
    assert sum(r.correct for r in results) == 500


# ------------------------------------------------------------------------------- data errors


def _write(folder: Path, name: str, lines: list[str]) -> Path:
    path = folder / name / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"aime24/test.jsonl: data file not found"):
        tasks.get("aime24", data_dir=tmp_path).problems("test")


def test_malformed_line_names_file_and_line(tmp_path):
    good = json.dumps({"id": "a", "problem": "1+1?", "answer": "2"})
    path = _write(tmp_path, "aime24", [good, "{not json"])
    with pytest.raises(DataError, match=f"{path}:2: malformed JSON"):
        tasks.get("aime24", data_dir=tmp_path).problems("test")


def test_empty_answer_names_file_and_line(tmp_path):
    rows = [
        json.dumps({"id": "a", "problem": "1+1?", "answer": "2"}),
        json.dumps({"id": "b", "problem": "2+2?", "answer": "  "}),
    ]
    path = _write(tmp_path, "aime25", rows)
    with pytest.raises(DataError, match=f"{path}:2: empty answer"):
        read_jsonl(path)


def test_missing_field_and_duplicate_id(tmp_path):
    path = _write(tmp_path, "math500", [json.dumps({"id": "a", "problem": "x"})])
    with pytest.raises(DataError, match=f"{path}:1: missing field 'answer'"):
        read_jsonl(path)
    dup = json.dumps({"id": "a", "problem": "x", "answer": "1"})
    path = _write(tmp_path, "aime24", [dup, dup])
    with pytest.raises(DataError, match=f"{path}:2: duplicate id 'a'"):
        read_jsonl(path)


def test_size_mismatch_warns_and_hash_is_of_the_file(tmp_path):
    import hashlib

    path = _write(tmp_path, "aime24", [json.dumps({"id": "a", "problem": "1+1?", "answer": "2"})])
    task = tasks.get("aime24", data_dir=tmp_path)
    with pytest.warns(UserWarning, match="1 problems, expected 30 for aime24"):
        assert len(task.problems("test")) == 1
    assert task.data_hash("test") == hashlib.sha256(path.read_bytes()).hexdigest()


def test_hub_rows_map_to_the_local_fields():
    # Field names of the hub copies (see docs/eval.md); mapped rows go through the same checks.
    ob = HUB_SOURCES["olympiadbench"].mapper(
        {
            "id": 1606,
            "question": "Q?",
            "final_answer": ["$69$,$84$"],
            "subfield": "Algebra",
            "answer_type": "Numerical",
            "is_multiple_answer": True,
            "unit": None,
        },
        0,
    )
    assert ob["id"] == "olympiadbench-1606" and ob["answer"] == "69$,$84" and ob["problem"] == "Q?"
    m5 = HUB_SOURCES["math500"].mapper(
        {"unique_id": "test/x/1.json", "problem": "P", "answer": "3", "subject": "Algebra", "level": 4}, 0
    )
    assert m5 == {"id": "test/x/1.json", "problem": "P", "answer": "3", "subject": "Algebra", "level": 4}
    mt = HUB_SOURCES["math_train"].mapper(
        {"problem": "P", "solution": "so \\boxed{7}.", "type": "Algebra", "level": "Level 3"}, 12
    )
    assert mt["answer"] == "7" and mt["level"] == 3 and mt["id"] == "math_train-12"
    assert HUB_SOURCES["aime25"].mapper({"id": "0", "problem": "P", "answer": 70}, 0)["answer"] == "70"
