"""The grader: a table of equivalence cases, extraction rules, multi-answer golds, and the process
pool's promises (timeouts and crashes score incorrect, are counted, and never hang)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from vimpo_bench import grading
from vimpo_bench.grading import (
    GradeResult,
    answers,
    extract_answer,
    grade,
    grade_batch,
    is_correct,
    split_gold,
)

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

# Numbers compare relatively: tiny distinct values differ, equal values written differently match.
NUMBER_CASES = [
    (B % "\\frac{1}{121}", "\\frac{1}{120}", False),
    (B % "\\frac{1}{3628801}", "\\frac{1}{3628800}", False),
    (B % "\\frac{1}{11!}", "\\frac{1}{10!}", False),
    (B % "\\frac{1}{10!}", "\\frac{1}{3628800}", True),
    (B % "0.000000000002", "0.000000000001", False),  # was equal: both round to 0.000000
    (B % "2 \\times 10^{-12}", "10^{-12}", False),
    (B % "2e-12", "1e-12", False),
    (B % "2\\cdot 10^{-20}", "10^{-20}", False),  # was equal (evalf chop)
    (B % "\\frac{\\sqrt{2}}{10^{9}+1}", "\\frac{\\sqrt{2}}{10^{9}}", False),  # was equal
    (B % "1 + 10^{-20}", "1", False),
    (B % "0.0000673", "0.0000672", False),  # was equal
    (B % "0.0000001", "\\frac{1}{3628800}", False),  # was equal
    (B % "0.0000001", "0", False),  # was equal
    (B % "0.000000000001", "10^{-12}", True),
    (B % "10^{-12}", "0.000000000001", True),
    (B % "0.0000002755732", "\\frac{1}{3628800}", True),
    (B % "0.000164", "\\frac{1}{6084}", False),  # was equal: 6 decimals, but 2e-3 apart relatively
    (B % "0.00016437", "\\frac{1}{6084}", True),  # within 1e-4 relatively
    (B % "0.00833333", "\\frac{1}{120}", True),
    (B % "0.008333", "\\frac{1}{120}", True),
    (B % "0.00833", "\\frac{1}{120}", False),
    (B % "\\{0.0000002\\}", "\\{0.0000001\\}", False),  # inside sets and tuples too
    (B % "(1, 0.0000002)", "(1, 0.0000001)", False),
    (B % "0.00", "0", True),
    # math-verify's six decimals kept at and above 0.1 (the papers' graders' answers)
    (B % "0.333333", "\\frac{1}{3}", True),
    (B % "0.3333", "\\frac{1}{3}", False),
    (B % "3.1415927", "\\pi", True),
    (B % "3.14159", "\\pi", False),
    (B % "1234567.1", "1234567.2", False),
    (B % "1.5\\times 10^{6}", "1500000", True),
    (B % "3.0", "3", True),
    (B % "0.01", "1\\%", True),
]

# An interval gold accepts the inequality that describes the same set, and the reverse.
INTERVAL_CASES = [
    (B % "2 < x \\le 5", "(2, 5]", True),
    (B % "x \\ge 3", "[3,\\infty)", True),
    (B % "x>=3", "[3,\\infty)", True),
    (B % "3 \\le y", "[3,\\infty)", True),
    (B % "x \\geq -1", "\\left[-1, \\infty\\right)", True),
    (B % "x > 3", "[3,\\infty)", False),
    (B % "x \\le 3", "[3,\\infty)", False),
    (B % "2 \\le x \\le 5", "(2, 5]", False),
    (B % "x < 0 \\text{ or } x > 1", "(-\\infty, 0) \\cup (1, \\infty)", True),
    (B % "x < 0 \\text{ or } x \\ge 1", "(-\\infty, 0) \\cup (1, \\infty)", False),
    (B % "(2, 5]", "2 < x \\le 5", True),
    (B % "[2, 5]", "2 < x \\le 5", False),
    (B % "(-\\infty, 0) \\cup (1, \\infty)", "x < 0 \\text{ or } x > 1", True),
    (B % "(1, 2)", "(1, 2)", True),
]

# Repeating-decimal notation equals its fraction.
REPEATING_CASES = [
    (B % "0.\\overline{3}", "\\frac{1}{3}", True),
    (B % "0.1\\overline{6}", "1/6", True),
    (B % "1.\\overline{142857}", "\\frac{8}{7}", True),
    (B % "0.\\overline{09}", "\\frac{1}{11}", True),
    (B % "0.\\bar{3}", "\\frac13", True),
    (B % "0.\\dot{3}", "\\frac13", True),
    (B % "0.\\dot{1}4285\\dot{7}", "\\frac{1}{7}", True),
    (B % "0.(3)", "\\frac{1}{3}", True),
    (B % "0.1(6)", "\\frac{1}{6}", True),
    (B % "-0.\\overline{6}", "-\\frac{2}{3}", True),
    (B % "0.\\overline{9}", "1", True),
    (B % "(0.\\overline{3}, 2)", "\\left(\\frac{1}{3}, 2\\right)", True),
    (B % "\\frac{1}{3}", "0.\\overline{3}", True),
    (B % "0.333333", "0.\\overline{3}", True),
    (B % "0.\\overline{3}", "\\frac{1}{4}", False),
    (B % "0.\\overline{3}", "0.3", False),
    (B % "0.1\\overline{6}", "\\frac{1}{3}", False),
    (B % "0.(3)", "\\frac{3}{10}", False),
    (B % "\\overline{AB}", "\\overline{AB}", True),  # a segment, not a decimal
]


@pytest.mark.parametrize("completion,gold,expected", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_is_correct_table(completion, gold, expected):
    assert is_correct(completion, gold) is expected


@pytest.mark.parametrize(
    "completion,gold,expected",
    NUMBER_CASES + INTERVAL_CASES + REPEATING_CASES,
    ids=[f"number-{i:02d}" for i in range(len(NUMBER_CASES))]
    + [f"interval-{i:02d}" for i in range(len(INTERVAL_CASES))]
    + [f"repeating-{i:02d}" for i in range(len(REPEATING_CASES))],
)
def test_equivalence_fixes(completion, gold, expected):
    assert is_correct(completion, gold) is expected


def test_other_callers_of_math_verify_keep_its_own_rounding():
    """Our relative comparison is hooked into math-verify for our calls only."""
    import math_verify

    grading.is_correct("\\boxed{1}", "1")  # installs the hook
    gold, answer = answers.parse_boxed("0.0000672"), answers.parse_boxed("0.0000673")
    assert math_verify.verify(list(gold), list(answer), timeout_seconds=None)


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


# The last-number fallback (no box, tag or "answer is"), read by hand: math-verify's own extraction
# (ExprExtractionConfig, 0.9.0) misreads each of these, so it does not replace ours. (completion, ours, its)
LAST_NUMBER_CASES = [
    ("=138,137=13,1345", "1345", "13134"),  # seen in an evaluation record; was read as 5 (13,134 then 5)
    ("x 12345,678", "678", "12345.678"),  # a list, not a decimal comma
]


@pytest.mark.parametrize("completion,ours,theirs", LAST_NUMBER_CASES)
def test_last_number_fallback_reads_only_whole_thousands_groups(completion, ours, theirs):
    import math_verify

    assert extract_answer(completion) == ours and is_correct(completion, ours)
    parsed = math_verify.parse(completion, extraction_config=[math_verify.ExprExtractionConfig()], parsing_timeout=5)
    assert parsed[-1] == theirs  # when math-verify reads it as we do, use its extraction for this case instead


@pytest.mark.parametrize("completion,expected", [
    ("the total is 1,234,567 apples", "1,234,567"),
    ("it costs -1,000.5 dollars", "-1,000.5"),
    ("so 12 and 7.", "7"),
    ("she has 3/4 left", "3/4"),
])
def test_last_number_fallback_keeps_whole_numbers(completion, expected):
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
    assert _in_a_thread(grade, "\\boxed{\\frac12}", "0.5")[0] == GradeResult(True, "\\frac12")


def _in_a_thread(fn, *args, **kwargs):
    """fn(*args, **kwargs) called from a new thread: (its result or exception, seconds taken)."""
    out = []

    def run():
        start = time.monotonic()
        try:
            out.append(fn(*args, **kwargs))
        except Exception as exc:
            out.append(exc)
        out.append(time.monotonic() - start)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    return out[0], out[1]


# Wall-clock slack past a deadline. Unloaded, each case returns within 0.02 s of it; a deadline that did not
# hold would run for minutes (the power tower for hours). 1 s was once too little on a loaded CI machine
# (1.50 s, with the first alarm swallowed inside a weakref callback and the re-fire doing the work).
SLACK = 3.0

# What the issue names: a huge exponent, a megabyte string, 1000 nested braces.
DEADLINE_CASES = {
    "power tower": "\\boxed{10^{10^{10^{10}}}}",
    "megabyte": "\\boxed{" + "9" * 1_000_000 + "}",
    "1000 braces": "\\boxed{" + "{" * 1000 + "1" + "}" * 1000 + "}",
    "deep fractions": "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
}


@pytest.mark.parametrize("name", list(DEADLINE_CASES))
def test_pathological_answers_return_within_the_deadline_in_the_main_thread(name):
    start = time.monotonic()
    result = grade(DEADLINE_CASES[name], "2", timeout=0.5)
    assert time.monotonic() - start < 0.5 + SLACK
    assert not result.correct


def test_threads_get_a_deadline_from_the_helper_process():
    _in_a_thread(grade, "\\boxed{1}", "1")  # the helper's start (2-3 s) is not the deadline's
    for name, completion in DEADLINE_CASES.items():
        result, seconds = _in_a_thread(grade, completion, "2", timeout=0.5)
        assert isinstance(result, GradeResult) and not result.correct, name
        assert seconds < 0.5 + grading.KILL_GRACE + SLACK, (name, seconds)
    assert _in_a_thread(grade, "\\boxed{10^{10^{10}}}", "2", timeout=0.5)[0].timed_out
    # and it grades like the main thread does
    completions, golds = [c for c, _, _ in CASES[:12]], [g for _, g, _ in CASES[:12]]
    batch, _ = _in_a_thread(grade_batch, completions, golds, workers=0)
    assert [r.correct for r in batch] == [e for _, _, e in CASES[:12]]


def test_timeout_none_grades_in_the_thread_without_a_deadline(monkeypatch):
    monkeypatch.setattr(grading, "_helper_pool", lambda: pytest.fail("the helper was used"))
    result, _ = _in_a_thread(grade, "\\boxed{\\frac12}", "0.5", timeout=None)
    assert result == GradeResult(True, "\\frac12")


def test_a_thread_is_refused_with_one_line_when_the_helper_cannot_start(monkeypatch):
    def no_children(*args, **kwargs):
        raise AssertionError("daemonic processes are not allowed to have children")

    monkeypatch.setattr(grading, "_helper", None)
    monkeypatch.setattr(grading, "GraderPool", no_children)
    error, _ = _in_a_thread(grade, "\\boxed{1}", "1")
    assert isinstance(error, grading.GraderUnavailable)
    assert "\n" not in str(error) and "timeout=None" in str(error)


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), "5"])
def test_a_bad_timeout_is_a_value_error(timeout):
    with pytest.raises(ValueError, match="timeout must be None"):
        grade("\\boxed{1}", "1", timeout=timeout)


def test_extraction_stays_linear_on_unclosed_tags_and_nested_boxes():
    start = time.monotonic()
    assert extract_answer("<answer>" * 100_000) is None
    assert extract_answer("<answer>" * 100_000 + "7</answer>") is not None
    assert extract_answer("\\boxed{" * 50_000 + "5" + "}" * 50_000) == "5"
    assert time.monotonic() - start < 5


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
    bound = len(PATHOLOGICAL) * (TIMEOUT + grading.KILL_GRACE) / 2 + 5
    assert elapsed < bound, f"{elapsed:.1f}s"
    # How many of them run into the timer depends on how fast this machine parses: not a contract. The
    # contract is that each comes back (bounded above), scored incorrect, and says why when it was cut.
    assert len(results) == len(PATHOLOGICAL)
    assert all(r.error is None or r.timed_out or "died" in r.error for r in results)


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
