"""Hostile input to the data loaders and the study parser: random bytes, non-UTF-8, huge lines, random
YAML, alias bombs. Every call returns quickly with a result or a one-line error that names the file.
(benchmarks/bench_faults.py runs a larger campaign of the same generators.)"""

from __future__ import annotations

import random
import time

import pytest

from vimpo_bench.config import ConfigError, load_config
from vimpo_bench.experiments.study import expand, load_study
from vimpo_bench.tasks.math_benchmarks import DataError, read_jsonl

DEADLINE = 5.0  # seconds per call, generous for a loaded 2-core machine


def random_jsonl(rng: random.Random) -> bytes:
    """Bytes that look a little like a data file: some good rows, some broken ones, some noise."""
    good = b'{"id": "%d", "problem": "1+1", "answer": "2"}'
    parts = []
    for i in range(rng.randint(0, 5)):
        kind = rng.random()
        if kind < 0.4:
            parts.append(good % i)
        elif kind < 0.6:
            parts.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))))
        elif kind < 0.75:
            parts.append(b"[" * rng.randint(1, 50_000))  # deep nesting
        elif kind < 0.9:
            parts.append(b'{"id": "x", "problem": "' + b"q" * rng.randint(1, 2_000_000) + b'", "answer": "1"}')
        else:
            parts.append(rng.choice([b"{}", b"[]", b"null", b'{"id": [1], "problem": {}, "answer": 3}', b"\xff\xfe"]))
    return b"\n".join(parts)


def random_yaml(rng: random.Random) -> str:
    pieces = ["study:", "axes:", "run.seed:", "[0, 1]", "{", "}", "[", "]", "&a", "*a", ": ", "- ", "\n", "  ",
              "optim:", "lr: .nan", "budget:", "minutes: .inf", "extends: tiny_demo", "algo:", "name: vimpo",
              "beta: -1", "'", '"', "!!python/object:os.system", "<<: *a", "\t", "é", "\x00", "1e999"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 40)))


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def alias_bomb_flow(levels: int = 9, width: int = 9) -> str:
    """The same bomb as one flow sequence (a --set value)."""
    items = ["&a0 [" + ", ".join(['"lol"'] * width) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def one_line_error(call) -> str | None:
    """Run call(); None if it returned, else its one-line error message (anything else fails the test)."""
    started = time.monotonic()
    try:
        call()
        message = None
    except (ConfigError, DataError) as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 1500, message[:2000]
    assert time.monotonic() - started < DEADLINE
    return message


def test_data_loader_survives_random_files(tmp_path):
    rng = random.Random(0)
    for i in range(60):
        path = tmp_path / f"f{i}.jsonl"
        path.write_bytes(random_jsonl(rng))
        message = one_line_error(lambda path=path: read_jsonl(path))
        assert message is None or str(path) in message


def test_non_utf8_data_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "1", "problem": "x", "answer": "1"}\n{"id": "2", "problem": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: not UTF-8 text"):
        read_jsonl(path)


def test_study_parser_survives_random_yaml(tmp_path):
    rng = random.Random(1)
    for i in range(150):
        path = tmp_path / f"s{i}.yaml"
        path.write_text(random_yaml(rng), encoding="utf-8")
        one_line_error(lambda path=path: expand(load_study(path)))


@pytest.mark.parametrize("where", ["study file", "--set"])
def test_alias_bombs_are_refused_quickly(where, tmp_path):
    started = time.monotonic()
    if where == "study file":
        path = tmp_path / "bomb.yaml"
        path.write_text("extends: tiny_demo\nstudy:\n  description: boom\n" + alias_bomb())
        with pytest.raises(ConfigError, match="alias"):
            load_study(path)
    else:
        with pytest.raises(ConfigError, match="alias"):
            load_config(overrides=["optim.lr=" + alias_bomb_flow()])
    assert time.monotonic() - started < 2


def test_echoed_values_are_bounded(tmp_path):
    huge = "x" * 1_000_000
    for call in (lambda: load_config(overrides=[f"optim.lr={huge}"]),
                 lambda: load_config(overrides=[f"model.dtype={huge}"]),
                 lambda: load_config(data={"optim": {huge: 1}})):
        with pytest.raises(ConfigError) as err:
            call()
        assert len(str(err.value)) < 600
