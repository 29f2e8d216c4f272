"""The built-in arithmetic task: generated multi-step problems with an exact integer verifier.

A problem is an expression such as `12+34*56=`; standard precedence applies (`*` before `+`/`-`,
then left to right). The worked solution reduces the expression one binary operation at a time and
ends with the final-answer marker:

    question         12+34+56=                 (digits=2)
    worked solution  12+34=046,046+56=102#102
    question         2+3*4-5=                  (digits=1, operators="+-*")
    worked solution  3*4=12,2+12=14,14-5=09#9

Every step `a op b=c` is a true statement, so a model trained on the solutions learns to compute
rather than to memorise answers. Partial results are zero-padded to the widest value the step can
take (`046`: two 2-digit numbers sum to at most 198), which fixes the position of every digit; the
answer after the marker is the plain integer. With the defaults (2-digit operands, 3 terms, `+`) a
solution plus answer is at most 24 characters ("99+99=198,198+99=297#297"), so 28 new tokens
always suffice for a character-level model (EOS included). The marker `#` also reads GSM8K-style
answers ("#### 102") correctly.

Problems are drawn without replacement from the space of all distinct questions: the test split
first, then the validation split (carved from what would otherwise be training questions), then the
train split, from one seeded stream. So no two splits share a question, and neither test nor
validation depends on `n_train`. Validation is for in-training evaluation, warm-start stopping and
sweeps; test is for the final numbers.
"""

from __future__ import annotations

import hashlib
import random
import re
from functools import cached_property

from vimpo_bench.tasks.base import Problem

OPERATORS = "+-*"
ANSWER_MARKER = "#"
STEP_SEPARATOR = ","
SPLITS = ("train", "validation", "test")

_MAX_DIGITS = 9
_MAX_TERMS = 10
# An answer is the text after the LAST marker: an optional minus sign and digits, nothing else.
_ANSWER_RE = re.compile(r"-?\d+")
_QUESTION_RE = re.compile(r"^(\d+(?:[-+*]\d+)+)=$")


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def solution_steps(
    operands: list[int], ops: list[str], max_operand: int | None = None
) -> tuple[list[str], int]:
    """Reduce `operands[0] ops[0] operands[1] ...` step by step with standard precedence.

    Multiplications go first (leftmost first), then `+`/`-` from left to right. Returns the steps
    as strings `"a op b=c"` and the value. Right operands are always original operands or products
    (never negative), so a step never reads `a--b`.

    With `max_operand`, each result is zero-padded to the number of digits of the largest magnitude
    that step can reach when every operand is at most `max_operand` (a sign is added when negative),
    and is written padded where a later step reuses it. For a given operator pattern every digit then
    sits at the same position in every solution, which a small model learns several times faster
    than a layout that shifts with the size of each partial result.
    """
    values, pending = list(operands), list(ops)
    texts = [str(x) for x in operands]
    bounds = [max_operand or 0] * len(operands)
    steps: list[str] = []
    while pending:
        i = pending.index("*") if "*" in pending else 0
        op = pending[i]
        c = _apply(values[i], op, values[i + 1])
        # |a - b| <= |a| + |b|: subtraction is bounded like addition.
        bound = bounds[i] * bounds[i + 1] if op == "*" else bounds[i] + bounds[i + 1]
        width = len(str(bound)) if max_operand is not None else 0
        c_text = ("-" if c < 0 else "") + str(abs(c)).zfill(width)
        steps.append(f"{texts[i]}{op}{texts[i + 1]}={c_text}")
        values[i : i + 2], texts[i : i + 2], bounds[i : i + 2] = [c], [c_text], [bound]
        del pending[i]
    return steps, values[0]


def parse_question(question: str) -> tuple[list[int], list[str]]:
    """`"12+34*5="` -> `([12, 34, 5], ["+", "*"])`; ValueError on anything else."""
    match = _QUESTION_RE.match(question)
    if match is None:
        raise ValueError(f"not an arith question: {question!r}")
    body = match.group(1)
    return [int(x) for x in re.split(r"[-+*]", body)], re.findall(r"[-+*]", body)


def format_solution(steps: list[str], answer: int) -> str:
    """Steps joined by `,`, then the marker and the answer: `"12+34=46,46+56=102#102"`."""
    return f"{STEP_SEPARATOR.join(steps)}{ANSWER_MARKER}{answer}"


def extract_answer(completion: str) -> str | None:
    """The integer after the last `#` (surrounding whitespace allowed), canonicalised; else None.

    `"...=102#102"` -> `"102"`; `"#0102 "` -> `"102"`; no marker, `"#"`, `"#10x"`, `"#1 2"` -> None.
    """
    _, marker, tail = completion.rpartition(ANSWER_MARKER)
    if not marker:
        return None
    tail = tail.strip()
    if _ANSWER_RE.fullmatch(tail) is None:
        return None
    return str(int(tail))


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"arith: {name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"arith: {name} must be {bound}, got {value}")
    return value


def normalize_operators(operators: object) -> str:
    """Validate a subset of `"+-*"` and return it in canonical order (so `"*+"` == `"+*"`)."""
    if not isinstance(operators, str) or not operators:
        raise ValueError(
            f"arith: operators must be a non-empty string drawn from {OPERATORS!r}, got {operators!r}"
        )
    bad = sorted(set(operators) - set(OPERATORS))
    if bad:
        raise ValueError(f"arith: unsupported operator(s) {''.join(bad)!r}; choose from {OPERATORS!r}")
    return "".join(op for op in OPERATORS if op in operators)


class ArithTask:
    """Generated arithmetic problems (registry name "arith").

    Knobs: `digits` per operand (1-digit operands are 0..9, d >= 2 digits are 10^(d-1)..10^d - 1),
    `terms` operands per question, `operators` a subset of "+-*". `n_train` / `n_validation` / `n_test`
    problems per split, drawn deterministically from `seed`.
    """

    name = "arith"

    def __init__(
        self,
        digits: int = 2,
        terms: int = 3,
        operators: str = "+",
        n_train: int = 20000,
        n_test: int = 200,
        seed: int = 0,
        n_validation: int = 500,
    ):
        self.digits = _check_int("digits", digits, 1, _MAX_DIGITS)
        self.terms = _check_int("terms", terms, 2, _MAX_TERMS)
        self.operators = normalize_operators(operators)
        self.n_train = _check_int("n_train", n_train, 1)
        self.n_test = _check_int("n_test", n_test, 1)
        self.n_validation = _check_int("n_validation", n_validation, 1)
        self.seed = _check_int("seed", seed, 0)
        low, high = self._operand_range()
        self._n_values = high - low + 1
        space = self._n_values**self.terms * len(self.operators) ** (self.terms - 1)
        if self.n_train + self.n_validation + self.n_test > space:
            raise ValueError(
                f"arith: only {space} distinct questions exist for digits={self.digits}, terms={self.terms}, "
                f"operators={self.operators!r}; n_train + n_validation + n_test = "
                f"{self.n_train + self.n_validation + self.n_test} is too many"
            )
        self._space = space

    @property
    def options(self) -> dict:
        """The resolved options (operators canonicalised): what determines the data."""
        return {
            "digits": self.digits,
            "terms": self.terms,
            "operators": self.operators,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "n_validation": self.n_validation,
            "seed": self.seed,
        }

    def _operand_range(self) -> tuple[int, int]:
        if self.digits == 1:
            return 0, 9
        return 10 ** (self.digits - 1), 10**self.digits - 1

    def _decode(self, index: int) -> tuple[list[int], list[str]]:
        """Index in [0, space) -> (operands, operators), a mixed-radix digit expansion."""
        low, _ = self._operand_range()
        operands, ops = [], []
        for _ in range(self.terms):
            index, r = divmod(index, self._n_values)
            operands.append(low + r)
        for _ in range(self.terms - 1):
            index, r = divmod(index, len(self.operators))
            ops.append(self.operators[r])
        return operands, ops

    @cached_property
    def _splits(self) -> dict[str, list[Problem]]:
        # One stream, rejection of repeats: test is drawn first, so it does not depend on n_train,
        # and no question can land in both splits.
        rng = random.Random(self.seed)
        seen: set[int] = set()
        out: dict[str, list[Problem]] = {}
        for split, count in (("test", self.n_test), ("validation", self.n_validation), ("train", self.n_train)):
            problems = []
            while len(problems) < count:
                index = rng.randrange(self._space)
                if index in seen:
                    continue
                seen.add(index)
                operands, ops = self._decode(index)
                question = (
                    "".join(f"{a}{op}" for a, op in zip(operands, ops, strict=False)) + f"{operands[-1]}="
                )
                _, value = solution_steps(operands, ops)
                problems.append(
                    Problem(id=f"arith-{split}-{len(problems):05d}", question=question, answer=str(value))
                )
            out[split] = problems
        return out

    def problems(self, split: str, limit: int | None = None) -> list[Problem]:
        """The problems of `split` ("train", "validation" or "test") in a fixed order; the first `limit` if given."""
        if split not in SPLITS:
            raise ValueError(f"arith: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        problems = self._splits[split]
        return list(problems if limit is None else problems[:limit])

    def prompt(self, problem: Problem) -> str:
        """The question itself (`"12+34+56="`); the model continues with the worked solution."""
        return problem.question

    def worked_solution(self, problem: Problem) -> str:
        """The supervised target, e.g. `"12+34=046,046+56=102#102"` (no EOS; the caller adds it).

        Partial results are zero-padded to a fixed width per step (see `solution_steps`); the final
        answer after the marker is the plain integer.
        """
        operands, ops = parse_question(problem.question)
        steps, value = solution_steps(operands, ops, max_operand=self._operand_range()[1])
        return format_solution(steps, value)

    def extract(self, completion: str) -> str | None:
        return extract_answer(completion)

    def grade(self, completion: str, problem: Problem) -> bool:
        """Exact: the extracted integer equals the gold answer."""
        answer = extract_answer(completion)
        return answer is not None and int(answer) == int(problem.answer)

    def data_hash(self, split: str) -> str:
        """sha256 over the split's `question<TAB>answer<LF>` lines, in order."""
        digest = hashlib.sha256()
        for problem in self.problems(split):
            digest.update(f"{problem.question}\t{problem.answer}\n".encode())
        return digest.hexdigest()
