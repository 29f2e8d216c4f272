import hashlib

import pytest

from vimpo_bench import tasks
from vimpo_bench.tasks.arith import ArithTask, extract_answer, parse_question, solution_steps
from vimpo_bench.tasks.base import Problem, Task


@pytest.fixture(scope="module")
def task():
    return ArithTask()


def _problem(question: str, answer: str) -> Problem:
    return Problem(id="hand", question=question, answer=answer)


def test_registry_builds_a_task_that_satisfies_the_protocol():
    task = tasks.get("arith", digits=1, terms=2, n_train=10, n_test=5, n_validation=5)
    assert isinstance(task, ArithTask) and isinstance(task, Task)
    assert task.name == "arith"


def test_worked_solutions_by_hand(task):
    # 2-digit operands: a sum of two fits 3 digits (<= 198), so partial results are padded to 3.
    problem = _problem("12+34+56=", "102")
    assert task.worked_solution(problem) == "12+34=046,046+56=102#102"
    assert task.grade(task.worked_solution(problem), problem)
    one_digit = ArithTask(digits=1, terms=3, operators="+-*", n_train=50, n_test=10)
    cases = {
        ("2+3*4-5=", "9"): "3*4=12,2+12=14,14-5=09#9",  # precedence: * first; widths 2 (81), 2 (90), 2 (99)
        ("1-9+5=", "-3"): "1-9=-08,-08+5=-03#-3",  # negative partials carry a sign before the padding
        ("3*4*5=", "60"): "3*4=12,12*5=060#60",  # 9*9*9 = 729: three digits
        ("7-2*3=", "1"): "2*3=06,7-06=01#1",
    }
    for (question, answer), expected in cases.items():
        assert one_digit.worked_solution(_problem(question, answer)) == expected
        assert one_digit.grade(expected, _problem(question, answer))


def test_unpadded_steps_by_hand():
    assert solution_steps([12, 34, 56], ["+", "+"]) == (["12+34=46", "46+56=102"], 102)
    assert solution_steps([7, 2, 3, 2], ["-", "*", "*"]) == (["2*3=6", "6*2=12", "7-12=-5"], -5)


def test_solution_steps_value_matches_python_eval():
    for operands, ops in [([9, 8, 7, 6], ["-", "*", "+"]), ([5, 0, 3], ["*", "-"]), ([1, 2], ["+"])]:
        expression = "".join(f"{a}{op}" for a, op in zip(operands, ops, strict=False)) + str(operands[-1])
        assert solution_steps(operands, ops)[1] == eval(expression)  # noqa: S307 - digits and +-* only


def test_extract_and_grade_right_wrong_malformed(task):
    problem = _problem("12+34+56=", "102")
    assert task.grade("12+34=46,46+56=102#102", problem)
    assert task.grade("#102", problem) and task.grade("# 0102 \n", problem)
    assert task.grade("garbage#7#102", problem)  # the LAST marker counts
    assert task.grade("#### 102", problem)  # GSM8K style
    assert not task.grade("12+34=46,46+56=102#103", problem)
    assert not task.grade("12+34=46,46+56=102", problem)  # no marker
    for malformed in ["", "102", "#", "#10x", "#1 2", "#102,5", "#+102", "#1.0"]:
        assert extract_answer(malformed) is None, malformed
        assert not task.grade(malformed, problem)
    assert extract_answer("#-17") == "-17" and extract_answer("#007") == "7"
    assert task.extract("...#102") == "102"


def test_deterministic_by_seed():
    a, b, c = ArithTask(seed=3), ArithTask(seed=3), ArithTask(seed=4)
    assert a.problems("test") == b.problems("test")
    assert a.problems("train", limit=50) == b.problems("train", limit=50)
    assert a.problems("test") != c.problems("test")
    assert a.data_hash("train") == b.data_hash("train") != c.data_hash("train")


def test_splits_are_disjoint_and_sized(task):
    train, test = task.problems("train"), task.problems("test")
    assert len(train) == 20000 and len(test) == 200
    train_q, test_q = {p.question for p in train}, {p.question for p in test}
    assert len(train_q) == 20000 and len(test_q) == 200  # no repeats within a split either
    assert not train_q & test_q
    assert task.problems("test", limit=3) == test[:3]


def test_test_split_does_not_depend_on_n_train():
    assert ArithTask(n_train=100).problems("test") == ArithTask(n_train=5000).problems("test")


def test_default_solutions_fit_28_tokens_and_grade_correct(task):
    problems = task.problems("test") + task.problems("train")
    longest = max(len(task.worked_solution(p)) for p in problems)
    assert longest <= 24  # "99+99=198,198+99=297#297"; + EOS <= 28 new tokens
    assert {len(task.worked_solution(p).split("#")[0]) for p in problems} == {20}  # fixed layout
    for p in problems[:2000]:
        assert p.question == task.prompt(p)
        assert task.grade(task.worked_solution(p), p)
        operands, ops = parse_question(p.question)
        assert len(operands) == 3 and ops == ["+", "+"] and all(10 <= x <= 99 for x in operands)
        assert int(p.answer) == sum(operands)


def test_knobs_shape_the_questions():
    task = ArithTask(digits=3, terms=4, operators="*-", n_train=300, n_test=50, seed=1)
    assert task.operators == "-*"  # canonical order, so equal option sets give equal data
    seen_ops = set()
    for p in task.problems("train") + task.problems("test"):
        operands, ops = parse_question(p.question)
        assert len(operands) == 4 and all(100 <= x <= 999 for x in operands)
        seen_ops.update(ops)
        assert task.grade(task.worked_solution(p), p)
    assert seen_ops == {"-", "*"}
    one_digit = ArithTask(digits=1, terms=2, n_train=50, n_test=10, n_validation=10)
    assert all(0 <= x <= 9 for p in one_digit.problems("train") for x in parse_question(p.question)[0])


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"digits": 0}, "digits must be between 1 and 9"),
        ({"digits": 2.0}, "digits must be an integer"),
        ({"terms": 1}, "terms must be between 2 and 10"),
        ({"operators": "/"}, "unsupported operator(s) '/'"),
        ({"operators": ""}, "non-empty string"),
        ({"n_test": 0}, "n_test must be >= 1"),
        ({"digits": 1, "terms": 2, "n_train": 85, "n_test": 10, "n_validation": 10}, "only 100 distinct questions"),
        ({"n_validation": 0}, "n_validation must be >= 1"),
    ],
)
def test_bad_options_fail_with_a_clear_message(options, fragment):
    with pytest.raises(ValueError) as err:
        ArithTask(**options)
    assert fragment in str(err.value)


def test_whole_space_can_be_drawn():
    task = ArithTask(digits=1, terms=2, n_train=80, n_test=10, n_validation=10)
    questions = {p.question for p in task.problems("train") + task.problems("validation") + task.problems("test")}
    assert len(questions) == 100


def test_unknown_split(task):
    with pytest.raises(ValueError, match="valid splits: train, validation, test"):
        task.problems("dev")


def test_data_hash_is_sha256_of_question_answer_lines():
    task = ArithTask(n_train=20, n_test=5)
    lines = "".join(f"{p.question}\t{p.answer}\n" for p in task.problems("test"))
    assert task.data_hash("test") == hashlib.sha256(lines.encode()).hexdigest()
    assert task.data_hash("test") != task.data_hash("train")
