"""Fuzzing the grader's public functions with random and adversarial strings (nested braces, huge
exponents, megabyte inputs, unicode, NUL bytes, lone backslashes): every call returns within its
deadline, with the documented types, and never raises. Seeded and small (a few hundred inputs,
most short); `benchmarks/bench_fuzz.py` runs the same generators at scale and prints the figures.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from vimpo_bench import grading
from vimpo_bench.grading import GradeResult, answers

# Pieces random inputs are made of: LaTeX the grader reads, the notation it rewrites, text it
# extracts from, and characters that have broken parsers before.
# fmt: off
ATOMS = [
    "\\boxed{", "\\fbox{", "\\boxed ", "{", "}", "\\{", "\\}", "\\frac", "\\dfrac", "\\sqrt", "^", "_",
    "\\overline{", "\\bar", "\\dot{", "(", ")", "[", "]", "\\left(", "\\right)", "\\left[", "\\right]",
    "\\infty", "\\cup", "\\le", "\\ge", "<", ">", "=", "\\in", "\\text{", "\\mathrm{", "\\pi", "e", "i",
    "x", "y", "!", "%", "\\%", "\\$", "$", ",", ".", "-", "+", "*", "/", "\\cdot", "\\times", "\\circ",
    "\\begin{pmatrix}", "\\end{pmatrix}", "&", "\\\\", "\\", " ", "\n", "\t", "\x00", "<answer>",
    "</answer>", "the answer is ", "Answer: ", "$,$", "\\textbf{", "or", "∞", "√", "½", "é", "𝑥", "→",
    "\u202e", "\ufeff", "\u0301", "🙂", "中", "\ud800",
]
# fmt: on


def random_input(rng: random.Random) -> str:
    """A short string of ATOMS and numbers (up to ~60 pieces)."""
    pieces = []
    for _ in range(rng.randint(1, 60)):
        if rng.random() < 0.3:
            pieces.append(str(rng.randint(0, 10 ** rng.randint(1, 30))))
        else:
            pieces.append(rng.choice(ATOMS))
    return "".join(pieces)


def adversarial_inputs() -> dict[str, str]:
    """Named inputs that have hung, blown up or crashed graders."""
    mb = 1_000_000
    return {
        "power tower": "\\boxed{10^{10^{10^{10}}}}",
        "tower of twos": "\\boxed{2^{2^{2^{2^{2^{2^{2}}}}}}}",
        "tiny power": "\\boxed{10^{-10^{10}}}",
        "huge factorial": "\\boxed{100000000!}",
        "huge binomial": "\\boxed{\\binom{10^{9}}{5 \\cdot 10^{8}}}",
        "1e999999999": "\\boxed{1e999999999}",
        "1000 nested braces": "\\boxed{" + "{" * 1000 + "1" + "}" * 1000 + "}",
        "100k nested braces": "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
        "300 nested fractions": "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
        "megabyte digits": "\\boxed{" + "9" * mb + "}",
        "megabyte of x": "\\boxed{" + "x" * mb + "}",
        "megabyte of {": "{" * mb,
        "megabyte unicode": "∞√½中🙂" * (mb // 5),
        "megabyte text": "the answer is " * (mb // 14),
        "100k unclosed boxes": "\\boxed{" * 100_000,
        "50k nested boxes": "\\boxed{" * 50_000 + "5" + "}" * 50_000,
        "100k unclosed tags": "<answer>" * 100_000,
        "NUL bytes": "\\boxed{1\x002}" + "\x00" * 1000,
        "lone backslash": "\\",
        "backslash box": "\\boxed{\\}",
        "10k backslashes": "\\" * 10_000,
        "long repeating decimal": "\\boxed{0.\\overline{" + "3" * 5000 + "}}",
        "division by zero": "\\boxed{\\frac{1}{0}}",
        "nan": "\\boxed{0/0 - \\infty + \\infty}",
        "100k pmatrix": "\\boxed{" + "\\begin{pmatrix}" * 5000 + "}",
        "lone surrogate": "\\boxed{\ud800}",
    }


def assert_well_formed(result, seconds: float, bound: float, what: str) -> None:
    assert isinstance(result, GradeResult), what
    assert isinstance(result.correct, bool) and isinstance(result.timed_out, bool), what
    assert result.extracted is None or isinstance(result.extracted, str), what
    assert result.error is None or ("\n" not in result.error and len(result.error) <= 200), what
    assert not (result.correct and (result.timed_out or result.error)), what
    assert seconds < bound, f"{what}: {seconds:.2f}s"


TIMEOUT = 0.25
# Past the deadline: the timer's signal waits for the C call in progress (a regex over a megabyte,
# a sympy integer operation) to return, and on a loaded machine that call gets a fraction of a core.
SLACK = 2.0
# The timer can fire inside a library's __del__, where Python reports the exception as
# "unraisable" and drops it; the timer fires again 0.1 s later and that one lands.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _cases(rng: random.Random, n_random: int) -> list[tuple[str, str, str]]:
    """(name, completion, gold): adversarial completions against a plain gold, adversarial golds,
    and random strings as either."""
    cases = [(name, text, "2") for name, text in adversarial_inputs().items()]
    cases += [(f"gold: {name}", "\\boxed{2}", text) for name, text in list(adversarial_inputs().items())[:8]]
    for i in range(n_random):
        gold = random_input(rng) if rng.random() < 0.5 else str(rng.randint(0, 100))
        cases.append((f"random {i}", random_input(rng), gold))
    return cases


def test_extraction_is_total_and_fast_on_fuzz():
    rng = random.Random(1)
    texts = list(adversarial_inputs().values()) + [random_input(rng) for _ in range(300)]
    for text in texts:
        start = time.monotonic()
        answer = grading.extract_answer(text)
        golds = grading.split_gold(text)
        assert answer is None or isinstance(answer, str)
        assert isinstance(golds, list) and all(isinstance(g, str) for g in golds)
        # Linear: about 0.3 s per megabyte on an idle core; quadratic would take minutes.
        assert time.monotonic() - start < 1.0 + 3.0 * len(text) / 1e6, repr(text[:40])


def test_main_thread_grading_returns_within_the_deadline_on_fuzz():
    grading.grade("\\boxed{1}", "1")  # imports math-verify (before any deadline starts)
    for i, (name, completion, gold) in enumerate(_cases(random.Random(0), n_random=150)):
        start = time.monotonic()
        result = grading.grade(completion, gold, timeout=TIMEOUT)
        assert_well_formed(result, time.monotonic() - start, TIMEOUT + SLACK, name)
        if i % 10 == 0:
            assert grading.is_correct(completion, gold, timeout=TIMEOUT) is result.correct or result.timed_out


def test_thread_grading_returns_within_the_deadline_on_fuzz():
    cases = _cases(random.Random(2), n_random=30)
    picked = [c for c in cases if not c[0].startswith("random")]
    picked = random.Random(3).sample(picked, 6) + [c for c in cases if c[0].startswith("random")]
    failures: list[str] = []

    def run() -> None:
        grading.grade("\\boxed{1}", "1")  # starts the helper process: not part of a deadline
        for name, completion, gold in picked:
            start = time.monotonic()
            try:
                result = grading.grade(completion, gold, timeout=TIMEOUT)
                assert_well_formed(
                    result, time.monotonic() - start, TIMEOUT + grading.KILL_GRACE + SLACK, name
                )
            except Exception as exc:  # collected: an assert in a thread would not fail the test
                failures.append(f"{name}: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(300)
    assert not thread.is_alive()
    assert failures == []


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
def test_the_documented_error_for_a_bad_deadline(timeout):
    with pytest.raises(ValueError) as info:
        grading.grade("\\boxed{1}", "1", timeout=timeout)
    assert "\n" not in str(info.value)


def test_last_answer_tag_pairs_tags_as_the_regex_did():
    import re

    regex = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
    rng = random.Random(4)
    pieces = ["<answer>", "</answer>", "<ANSWER>", "a", "1", " ", "\n", "<", ">"]
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        found = regex.findall(text)
        assert answers.last_answer_tag(text) == (found[-1] if found else None), repr(text)
