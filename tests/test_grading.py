"""The grader: a table of equivalence cases, extraction rules, multi-answer golds, and the process
pool's promises (timeouts and crashes score incorrect, are counted, and never hang)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from vimpo_bench import grading
from vimpo_bench.grading import GradeResult, extract_answer, grade, grade_batch, is_correct, split_gold

B = "\\boxed{%s}"

# (completion, gold, expected)
CASES = [
    # fractions, decimals, \dfrac, spacing
    (B % "0.5", "\\frac{1}{2}", True),
    (B % "\\dfrac{1}{2}", "\\frac12", True),
    (B % "1 / 2", "\\frac{1}{2}", True),
    (B % "\\frac {3}{ 4 }", "0.75", True),
    (B % "\\sqrt{2}/2", "\\frac{\\sqrt2}{2}", True),
    (B % "1,000", "1000", True),
    (B % "0204", "204", True),
    # degrees, units, percent, money
    (B % "30^\\circ", "30", True),
    (B % "30", "30^\\circ", True),
    (B % "5\\text{ cm}", "5", True),
    (B % "10", "10\\text{ inches}", True),
    (B % "50\\%", "50", True),
    (B % "50", "50\\%", True),
    (B % "18.90", "\\$18.90", True),
    # sets, intervals, tuples
    (B % "\\{1,2\\}", "\\{2,1\\}", True),
    (B % "[1,2)", "[1,2)", True),
    (B % "(1,2]", "[1,2)", False),
    (B % "(-\\infty, 0) \\cup \\{1\\}", "(-\\infty, 0) \\cup\\{1\\}", True),
    (B % "(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    (B % "(\\pi/2, 3)", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    # equations vs values
    (B % "x=3", "3", True),
    (B % "3", "x=3", True),
    (B % "x \\in [2,5]", "[2,5]", True),
    # expressions
    (B % "p-q", "p - q", True),
    (B % "q-p", "p - q", False),
    # several boxes: the last one wins
    ("first \\boxed{1}, on reflection \\boxed{2}", "2", True),
    ("first \\boxed{1}, on reflection \\boxed{2}", "1", False),
    # no box: fallbacks
    ("So the answer is $\\frac{1}{2}$.", "0.5", True),
    ("Final answer: 42", "42", True),
    ("<think>7 * 6</think> <answer>42</answer>", "42", True),
    ("we get 7, and then finally 42", "42", True),
    ("no number at all", "42", False),
    # text answers
    (B % "\\text{(C)}", "\\text{(C)}", True),
    (B % "C", "\\text{(C)}", True),
    (B % "(C)", "\\text{(C)}", True),
    (B % "D", "\\text{(C)}", False),
    (B % "\\text{even}", "\\text{even}", True),
    (B % "\\text{odd}", "\\text{even}", False),
    # typography around the answer
    ("so $CE = \\boxed{104.}$", "104", True),
    ("\\boxed{\\textbf{(073)}}", "73", True),
    ("\\framebox{204} minutes", "204", True),
    # near misses that must be wrong
    (B % "0.33", "\\frac{1}{3}", False),
    (B % "3.14", "\\pi", False),
    (B % "2 04", "204", False),
    (B % "4", "2", False),
    (B % "-5", "5", False),
    (B % "\\frac{1}{2}", "\\frac{1}{3}", False),
    (B % "52_9", "52_8", False),
    (B % "4210_{6}", "4210_{5}", False),
    (B % "52_8", "52_8", True),
    (B % "52", "52_8", True),
    # OlympiadBench multi-answer golds ($,$)
    (B % "69, 84", "69$,$84", True),
    (B % "84, 69", "69$,$84", True),
    ("\\boxed{69} and \\boxed{84}", "69$,$84", True),
    (B % "69", "69$,$84", False),
    (B % "69, 85", "69$,$84", False),
    (B % "f(x)=x+1, f(x)=-1", "f(x)=-1$,$f(x)=x+1", True),
    (B % "f(x)=x", "f(x)=x$,$f(x)=2-x", False),
    (B % "90^\\circ, 60^\\circ", "90^{\\circ}$,$60^{\\circ}", True),
    (B % "(-\\infty,0)\\cup\\{1\\}", "(-\\infty, 0) \\cup\\{1\\}$.", True),
]


@pytest.mark.parametrize("completion,gold,expected", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_is_correct_table(completion, gold, expected):
    assert is_correct(completion, gold) is expected


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("\\boxed{1} then \\boxed{\\frac{2}{3}}", "\\frac{2}{3}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("nested \\boxed{\\boxed{5}}", "5"),
        ("\\boxed 7 is it", "7"),
        ("\\boxed{3} and an unfinished \\boxed{12", "3"),
        ("The answer is: **17**.", "17"),
        ("so the answer is $x=3$. We check it: 3 + 0 = 3.", "x=3"),
        ("the answer is 3.5 meters", "3.5 meters"),
        ("<answer> $x=2$ </answer>", "x=2"),
        ("I think it's 3 or maybe 4", "4"),
        ("", None),
        ("no answer here", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_extract_joins_one_box_per_answer_for_multi_answer_golds():
    assert extract_answer("\\boxed{1}, \\boxed{2} and \\boxed{3}", n_answers=2) == "2, 3"
    assert extract_answer("\\boxed{1, 2}", n_answers=2) == "1, 2"


def test_split_gold():
    assert split_gold("69$,$84") == ["69", "84"]
    assert split_gold("a=2$, $a=-6-4 \\sqrt{2}") == ["a=2", "a=-6-4 \\sqrt{2}"]
    assert split_gold("(-\\infty, 0) \\cup\\{1\\}$.") == ["(-\\infty, 0) \\cup\\{1\\}"]
    assert split_gold("\\frac{1}{2}") == ["\\frac{1}{2}"]


def test_grader_version_names_math_verify():
    from importlib.metadata import version

    assert grading.GRADER_VERSION.endswith(f"math-verify-{version('math-verify')}")


def test_grade_reports_the_extracted_answer():
    assert grade("so \\boxed{7}", "7") == GradeResult(True, "7")


def test_grade_works_off_the_main_thread():
    out = []
    thread = threading.Thread(target=lambda: out.append(grade("\\boxed{\\frac12}", "0.5")))
    thread.start()
    thread.join(30)
    assert out == [GradeResult(True, "\\frac12")]


def test_in_process_timeout_is_reported_and_restores_the_alarm_handler():
    import signal

    before = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    result = grade("\\boxed{10^{10^{10}}}", "2", timeout=0.5)
    assert result.timed_out and not result.correct
    assert time.monotonic() - start < 3
    assert signal.getsignal(signal.SIGALRM) is before


# ---------------------------------------------------------------------------------- the pool

PATHOLOGICAL = {
    "power tower": "\\boxed{10^{10^{10}}}",
    "huge power": "\\boxed{2^{1000000000}}",
    "deep braces": "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "deep fractions": "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    "100 kB sum": "\\boxed{" + "1+" * 50000 + "1}",
    "100 kB digits": "\\boxed{" + "9" * 100000 + "}",
    "100 kB unclosed boxes": "\\boxed{" * 14000,
    "100 kB words": "answer is " * 10000,
    "100 kB left": "\\boxed{" + "\\left(" * 17000 + "}",
}
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def pool():
    """For checks of results: a generous timeout, so a loaded CI machine does not flip one."""
    with grading.GraderPool(workers=2, timeout=30.0) as p:
        yield p


def test_pool_matches_in_process_grading(pool):
    completions = [c for c, _, _ in CASES]
    golds = [g for _, g, _ in CASES]
    results = pool.grade(completions, golds)
    assert [r.correct for r in results] == [e for _, _, e in CASES]
    assert [r.extracted for r in results] == [extract_answer(c, len(split_gold(g))) for c, g, _ in CASES]


def test_pathological_inputs_come_back_within_the_timeout():
    golds = ["1"] * len(PATHOLOGICAL)
    with grading.GraderPool(workers=2, timeout=TIMEOUT, warmup=False) as pool:
        pool.grade(["\\boxed{1}", "\\boxed{2}"], ["1", "2"])  # both workers up
        start = time.monotonic()
        results = pool.grade(list(PATHOLOGICAL.values()), golds)
        elapsed = time.monotonic() - start
        # A normal answer right after still grades.
        assert pool.grade(["\\boxed{3}"], ["3"])[0].correct
    assert not any(r.correct for r in results)
    # Two workers, each answer capped at TIMEOUT (+ the kill grace for an uninterruptible one).
    bound = len(PATHOLOGICAL) * (TIMEOUT + grading._KILL_GRACE) / 2 + 5
    assert elapsed < bound, f"{elapsed:.1f}s"
    assert sum(r.timed_out for r in results) >= 4


def test_a_killed_worker_scores_its_answer_incorrect_and_the_rest_still_grade():
    with grading.GraderPool(workers=1, timeout=20.0, warmup=False) as solo:
        solo.grade(["\\boxed{1}"], ["1"])  # wait until the worker is up
        victim = solo._pool[0].process.pid
        timer = threading.Timer(1.0, os.kill, args=(victim, 9))
        timer.start()
        results = solo.grade(["\\boxed{10^{10^{10}}}", "\\boxed{3}", "\\boxed{4}"], ["2", "3", "5"])
        timer.join()
        assert results[0].error is not None and "died" in results[0].error and not results[0].correct
        assert [r.correct for r in results[1:]] == [True, False]
        assert solo.restarts == 1
        assert grading.count_failures(results) == {"timeouts": 0, "errors": 1}


def test_grade_batch_in_process_and_in_a_pool_agree(pool):
    completions = ["\\boxed{2}", "\\boxed{3}", "the answer is 4"]
    golds = ["2", "2", "4"]
    assert [r.correct for r in grade_batch(completions, golds, workers=0)] == [True, False, True]
    assert grade_batch(completions, golds, pool=pool) == grade_batch(completions, golds, workers=0)


def test_grade_batch_checks_lengths():
    with pytest.raises(ValueError, match="2 completions but 1 golds"):
        grade_batch(["a", "b"], ["1"], workers=0)
