"""The math benchmarks: MATH-500, AIME 2024, AIME 2025, OlympiadBench (test sets) and MATH train.

Data comes from a local folder laid out like `../shared/data` (`<name>/test.jsonl`, one JSON object
per line with at least `id`, `problem`, `answer`), given as `data_dir` or `$VIMPO_BENCH_DATA`;
without one, from the Hugging Face hub through `datasets` (the `HUB_SOURCES` below, mapped to the
same fields). Loading checks every line: a missing file, a malformed line or an empty answer raises
`DataError` naming the file and line; a row count other than the published size warns.

Grading is `vimpo_bench.grading` (the one grader); `prompt(problem)` is the raw problem text:
templates (`vimpo_bench.tasks.prompts`) are applied by the caller that knows the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vimpo_bench import grading
from vimpo_bench.config import short
from vimpo_bench.tasks.base import Problem

DATA_ENV = "VIMPO_BENCH_DATA"


class DataError(ValueError):
    """A data file that cannot be used as is; the message names the file (and line)."""


def default_data_dir() -> Path | None:
    """`$VIMPO_BENCH_DATA` when set, else None (load from the hub)."""
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


# ------------------------------------------------------------------------------ hub row mappers


def _level(value: Any) -> int | None:
    """MATH levels come as 3, "3" or "Level 3"; "Level ?" and missing -> None."""
    if value is None:
        return None
    digits = "".join(ch for ch in str(value) if ch.isdigit())
    return int(digits) if digits else None


def _from_math500(row: dict, index: int) -> dict:
    return {
        "id": row["unique_id"],
        "problem": row["problem"],
        "answer": row["answer"],
        "subject": row.get("subject"),
        "level": _level(row.get("level")),
    }


def _from_aime24(row: dict, index: int) -> dict:
    return {
        "id": f"aime24-{row.get('id', index)}",
        "problem": row["problem"],
        "answer": str(row["answer"]),
        "url": row.get("url"),
    }


def _from_aime25(row: dict, index: int) -> dict:
    return {"id": f"aime25-{row.get('id', index)}", "problem": row["problem"], "answer": str(row["answer"])}


def _from_olympiadbench(row: dict, index: int) -> dict:
    # Same gold as the Qwen2.5-Math harness: the first final answer, outer `$` stripped.
    final = row.get("final_answer") or [""]
    return {
        "id": f"olympiadbench-{row['id']}",
        "problem": row["question"],
        "answer": str(final[0]).strip().strip("$"),
        "subject": row.get("subfield"),
        "answer_type": row.get("answer_type"),
        "is_multiple_answer": row.get("is_multiple_answer"),
        "unit": row.get("unit"),
    }


def _from_math_train(row: dict, index: int) -> dict:
    # MATH-lighteval has no answer column: the gold is the last boxed answer of the reference solution.
    return {
        "id": f"math_train-{index}",
        "problem": row["problem"],
        "answer": grading.extract_answer(row["solution"]) or "",
        "subject": row.get("type"),
        "level": _level(row.get("level")),
    }


@dataclass(frozen=True)
class HubSource:
    """Where the hub copy lives: `datasets.load_dataset(path, name, split=split)`, rows mapped by `mapper`."""

    path: str
    split: str
    mapper: Callable[[dict, int], dict]
    name: str | None = None

    def describe(self) -> str:
        return f"hf://{self.path}" + (f"/{self.name}" if self.name else "") + f"[{self.split}]"


HUB_SOURCES: dict[str, HubSource] = {
    "math500": HubSource("HuggingFaceH4/MATH-500", "test", _from_math500),
    "aime24": HubSource("HuggingFaceH4/aime_2024", "train", _from_aime24),
    "aime25": HubSource("math-ai/aime25", "test", _from_aime25),
    "olympiadbench": HubSource(
        "Hothan/OlympiadBench", "train", _from_olympiadbench, name="OE_TO_maths_en_COMP"
    ),
    "math_train": HubSource("DigitalLearningGmbH/MATH-lighteval", "train", _from_math_train),
}


# ------------------------------------------------------------------------------------- loading

_META_SKIP = ("id", "problem", "answer")


def _row_to_problem(row: Any, where: str) -> Problem:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("id", "problem", "answer"):
        if key not in row:
            raise DataError(f"{where}: missing field {key!r}")
    answer = row["answer"]
    if answer is None or not str(answer).strip():
        raise DataError(f"{where}: empty answer (id {short(row['id'])})")
    if not str(row["problem"]).strip():
        raise DataError(f"{where}: empty problem (id {short(row['id'])})")
    meta = {k: v for k, v in row.items() if k not in _META_SKIP}
    return Problem(id=str(row["id"]), question=str(row["problem"]), answer=str(answer).strip(), meta=meta)


def read_jsonl(path: Path) -> tuple[list[Problem], str]:
    """(problems, sha256 of the file's bytes). Raises DataError naming the file and line."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found (expected one JSON object per line)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x})") from None
    problems, seen = [], set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(f"{where}: JSON nested too deeply") from None
        problem = _row_to_problem(row, where)
        if problem.id in seen:
            raise DataError(f"{where}: duplicate id {short(problem.id)}")
        seen.add(problem.id)
        problems.append(problem)
    if not problems:
        raise DataError(f"{path}: no problems in the file")
    return problems, hashlib.sha256(raw).hexdigest()


_TRUE = ("1", "true", "yes", "on")


def hub_unavailable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face hub cannot serve a dataset now (offline mode is set, or its host does not answer
    within `timeout` s), or None. `datasets` would otherwise retry for about 25 s before failing."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    from vimpo_bench import net

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").lower() in _TRUE:
            return f"{var} is set"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        net.connect_url(constants.ENDPOINT, timeout)
    except OSError as exc:
        return f"{urlsplit(constants.ENDPOINT).hostname} is unreachable ({exc.strerror or type(exc).__name__})"
    return None


def in_datasets_cache(source: HubSource) -> bool:
    """Whether `datasets` holds a copy of `source` it can load offline (where its cache factory looks)."""
    import glob

    from datasets import config
    from datasets.naming import camelcase_to_snakecase

    *namespace, name = source.path.split("/")
    folder = Path(config.HF_DATASETS_CACHE).expanduser() / "___".join([*namespace, camelcase_to_snakecase(name)])
    return any(os.path.isdir(p) for p in glob.glob(str(folder / "*" / "*" / "*")))


def read_hub(source: HubSource, local_file: str = "<name>/test.jsonl") -> tuple[list[Problem], str]:
    """(problems, sha256 over the mapped rows as canonical JSON lines) from the Hugging Face hub. Offline
    (or with the hub unreachable) and without a cached copy: DataError at once, saying how to give the local
    file instead (`local_file`, its path under a data folder)."""
    why = hub_unavailable()
    if why is not None and not in_datasets_cache(source):
        raise DataError(f"no local data for {local_file} and {source.describe()} cannot be downloaded ({why}): "
                        f"give a folder holding {local_file} (laid out like ../shared/data) with --data-dir "
                        f"(a training config: task.options.data_dir), or set {DATA_ENV} to it")
    import datasets

    rows = datasets.load_dataset(source.path, source.name, split=source.split)
    problems, digest = [], hashlib.sha256()
    for index, row in enumerate(rows):
        mapped = source.mapper(dict(row), index)
        problems.append(_row_to_problem(mapped, f"{source.describe()} row {index}"))
        digest.update((json.dumps(mapped, sort_keys=True, default=str) + "\n").encode())
    return problems, digest.hexdigest()


class MathBenchmark:
    """A benchmark read from `<data_dir>/<folder>/<file>` or the hub. Subclasses set the constants."""

    name: str = ""
    folder: str = ""
    splits: dict[str, str] = {"test": "test.jsonl"}  # split -> file name
    expected_rows: dict[str, int] = {}

    def __init__(self, data_dir: str | os.PathLike | None = None):
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        self._cache: dict[str, tuple[list[Problem], str]] = {}

    # -- data
    def source(self, split: str = "test") -> str:
        """Where `split` is read from: a file path or an `hf://` dataset."""
        self._check_split(split)
        if self.data_dir is not None:
            return str(self.data_dir / self.folder / self.splits[split])
        return HUB_SOURCES[self.folder].describe()

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"{self.name}: no {split!r} split; valid splits: {', '.join(self.splits)}")

    def _load(self, split: str) -> tuple[list[Problem], str]:
        self._check_split(split)
        if split not in self._cache:
            if self.data_dir is not None:
                problems, sha = read_jsonl(self.data_dir / self.folder / self.splits[split])
            else:
                problems, sha = read_hub(HUB_SOURCES[self.folder], f"{self.folder}/{self.splits[split]}")
            expected = self.expected_rows.get(split)
            if expected is not None and len(problems) != expected:
                warnings.warn(
                    f"{self.source(split)}: {len(problems)} problems, expected {expected} for {self.name}",
                    stacklevel=3,
                )
            self._cache[split] = (problems, sha)
        return self._cache[split]

    def problems(self, split: str = "test", limit: int | None = None) -> list[Problem]:
        problems = self._load(split)[0]
        return list(problems if limit is None else problems[:limit])

    def data_hash(self, split: str = "test") -> str:
        """sha256 of the data file's bytes (hub: of the mapped rows)."""
        return self._load(split)[1]

    # -- grading
    def prompt(self, problem: Problem) -> str:
        return problem.question

    def extract(self, completion: str) -> str | None:
        return grading.extract_answer(completion)

    def grade(self, completion: str, problem: Problem) -> bool:
        return grading.is_correct(completion, problem.answer)

    def grade_batch(
        self, completions: Sequence[str], problems: Sequence[Problem], pool: grading.GraderPool | None = None
    ) -> list[grading.GradeResult]:
        """Grade many completions (in `pool`'s worker processes when given, else in this process)."""
        golds = [p.answer for p in problems]
        return grading.grade_batch(completions, golds, workers=0, pool=pool)


class Math500(MathBenchmark):
    """MATH-500 (Lightman et al. 2023's test subset of MATH); meta: subject, level, unique_id, solution."""

    name = folder = "math500"
    expected_rows = {"test": 500}


class Aime24(MathBenchmark):
    """AIME 2024 I and II (30 integer answers, leading zeros dropped)."""

    name = folder = "aime24"
    expected_rows = {"test": 30}


class Aime25(MathBenchmark):
    """AIME 2025 I and II (30 integer answers)."""

    name = folder = "aime25"
    expected_rows = {"test": 30}


class OlympiadBench(MathBenchmark):
    """OlympiadBench, English text-only open-ended math competition subset (OE_TO_maths_en_COMP, 675).
    Multi-answer golds (`a$,$b`) are split by the grader."""

    name = folder = "olympiadbench"
    expected_rows = {"test": 675}


class MathTrain(MathBenchmark):
    """MATH train (7,472 problems with answers) for RL training; its "test" split is MATH-500,
    which shares no problem with it. The "validation" split is `n_validation` problems held out of the
    training file (the lowest sha256 of their ids: a fixed choice that does not depend on row order);
    "train" is the rest, so sweeps and in-training evaluation never see a test problem."""

    name = folder = "math_train"
    splits = {"train": "train.jsonl"}
    expected_rows = {"train": 7472, "test": 500}

    def __init__(self, data_dir: str | os.PathLike | None = None, min_level: int | None = None,
                 n_validation: int = 500):
        super().__init__(data_dir)
        self.min_level = min_level
        if isinstance(n_validation, bool) or not isinstance(n_validation, int) or not 0 < n_validation < 7472:
            raise ValueError(f"math_train: n_validation must be an integer in [1, 7471], got {n_validation!r}")
        self.n_validation = n_validation
        self._test = Math500(data_dir)

    def source(self, split: str = "train") -> str:
        if split == "test":
            return self._test.source()
        return super().source("train") + ("" if split == "train" else f" (held-out {split})")

    def _partition(self, split: str) -> list[Problem]:
        if split not in ("train", "validation"):
            raise ValueError(f"{self.name}: no {split!r} split; valid splits: train, validation, test")
        every = self._load("train")[0]
        ranked = sorted(every, key=lambda p: hashlib.sha256(p.id.encode()).hexdigest())
        held = {p.id for p in ranked[: self.n_validation]}
        return [p for p in every if (p.id in held) == (split == "validation")]

    def problems(self, split: str = "train", limit: int | None = None) -> list[Problem]:
        if split == "test":
            return self._test.problems("test", limit)
        problems = self._partition(split)
        if self.min_level is not None:  # the usual "levels 3-5" subset: min_level=3 (5,561 rows)
            problems = [p for p in problems if (p.meta.get("level") or 0) >= self.min_level]
        return list(problems if limit is None else problems[:limit])

    def data_hash(self, split: str = "train") -> str:
        if split == "test":
            return self._test.data_hash()
        digest = hashlib.sha256(super().data_hash("train").encode())
        for problem in self._partition(split):  # the file's hash plus which rows this split holds
            digest.update(f"{problem.id}\n".encode())
        return digest.hexdigest()
