"""The one grader: answer extraction and equivalence for training rewards and evaluation (rule 8).

Protocol: the extraction order of the Qwen2.5-Math evaluation harness (last box first), with
math-verify deciding equivalence:

1. Extract the model's answer (`extract_answer`): the content of the LAST complete `\\boxed{...}`
   (or `\\fbox{}` / `\\framebox{}`); else the content of the last `<answer>...</answer>`; else the
   text after the last "answer is" / "answer:"; else the last number in the completion (thousands
   groups only whole: `13,1345` is 13 then 1345; math-verify's own extraction reads it as 13134, so this
   fallback stays ours). A trailing period and a whole-answer `\\textbf{}` are dropped.
2. Parse gold and answer with math-verify, each wrapped in `\\boxed{}`, and compare them with
   `math_verify.verify` (numbers, fractions vs decimals, sets, intervals, tuples, equations such as
   `x=3` vs `3`, units, degrees and percent are normalized there), with three corrections:
   - numbers compare relatively as well as to math-verify's 6 decimals (`_numeric_eq`): a decimal
     must also be within 1e-4 relatively (the Qwen2.5-Math harness's tolerance), exact values
     within 1e-25; so 0.0000001 != 1/3628800 and 10^{-20} != 2*10^{-20}, while 0.333333 = 1/3;
   - an interval gold accepts the inequality describing the same set (`[3,\\infty)` ~ `x \\ge 3`,
     `(-\\infty,0)\\cup(1,\\infty)` ~ `x<0 \\text{ or } x>1`), as math-verify already does the reverse;
   - repeating decimals are read as their fraction (`0.\\overline{3}`, `0.1\\bar{6}`,
     `0.\\dot{1}4285\\dot{7}`, and a whole answer `0.(3)`).
   Two numerals with different base subscripts (`52_8` vs `52_9`) never match; text math-verify
   cannot parse, or longer than 10,000 characters, matches only itself (spaces, `$`, `\\text{}`
   ignored).
3. OlympiadBench golds with several answers (`a$,$b`) are split; the answer is right when it names
   the same set (one box `a, b`, or one box per answer) in any order. Parts that are themselves
   lists (`(0,1,1),(1,0,1)$,$(1,1,0)`) are compared as one flat list.

Deadlines. math-verify's parse and sympy can run for ever (`10^{10^{10^{10}}}`); every grade has a
deadline (`timeout` seconds; None opts out), and a timeout or a crash scores incorrect and is
flagged on the result (`timed_out`, `error`), so summaries can count them:

- `is_correct` / `grade` from the main thread grade in the calling process under an interval timer
  (SIGALRM). It stops Python-level work at the deadline; a single C call in progress (a regex over
  a megabyte, a big-integer operation) finishes first.
- From any other thread no signal can interrupt the work, so `grade` hands the answer to a helper
  worker process (one `GraderPool` worker, started on the first such call and shared by all
  threads, one answer at a time): the same timer runs there, and a worker that still does not
  answer within timeout + 2 s is killed and replaced. If that process cannot start, `grade`
  raises `GraderUnavailable` instead of grading without a deadline.
- `grade_batch` / `GraderPool` grade in worker processes (spawned, so safe with threads, CUDA and
  open MLflow clients in the parent), with the same timer and kill. As with any spawned process,
  a script that grades from threads or with a pool needs the `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import multiprocessing.connection
import numbers
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

# Bump the first component whenever extraction or comparison rules change (results then differ).
_RULES_VERSION = "3"


def _math_verify_version() -> str:
    try:
        return version("math-verify")
    except PackageNotFoundError:  # pragma: no cover - math-verify is a hard dependency
        return "missing"


GRADER_VERSION = f"vimpo-grader-{_RULES_VERSION}+math-verify-{_math_verify_version()}"
DEFAULT_TIMEOUT = 5.0
# Extra seconds a worker gets past its own timer before the parent kills it.
_KILL_GRACE = 2.0
# A gold with several answers: "69$,$84", "a=2$, $a=-6".
_GOLD_SEPARATOR = re.compile(r"\$\s*,\s*\$")


@dataclass(frozen=True)
class GradeResult:
    """One graded answer. `correct` is False whenever `timed_out` or `error` is set."""

    correct: bool
    extracted: str | None
    timed_out: bool = False
    error: str | None = None


class GradingTimeout(BaseException):
    """Raised by the interval timer. A BaseException so that math-verify's `except Exception` does
    not swallow it (math-verify's own TimeoutException is one for the same reason)."""


# ------------------------------------------------------------------------------------ extraction

_BOX_START = re.compile(r"\\(?:boxed|fbox|framebox)\s*\{")
_WHOLE_TEXTBF = re.compile(r"^\\textbf\{([^{}]*)\}$")
_BOX_SPACE = re.compile(r"\\boxed +([^\s$]+)")
_BRACE = re.compile(r"(?<!\\)[{}]")
_ANSWER_TAG_EDGE = re.compile(r"<(/?)answer>", re.IGNORECASE)
_ANSWER_PHRASE = re.compile(r"answer(?:\s+is|\s*:)\s*:?", re.IGNORECASE)
# A number: thousands groups only as a whole ("1,234,567"; "13,1345" is 13 then 1345, not 13,134 then 5).
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3}(?!\d))+|\d+)(?:\.\d+)?(?:/\d+)?")
_PHRASE_MAX_CHARS = 300


def _boxed_contents(text: str) -> list[tuple[int, int, int]]:
    """(box start, content start, content end) of every complete `\\boxed{...}`/`\\fbox{...}`, in
    order of their start; the content is `text[content start:content end]`.

    One pass over the braces with a stack, so it stays linear on adversarial input (thousands of
    unclosed boxes, deep nesting). Spans, not copies: 50,000 nested boxes would otherwise copy
    O(n^2) characters. Escaped braces `\\{` `\\}` are not grouping braces.
    """
    starts = {m.end() - 1: m.start() for m in _BOX_START.finditer(text)}  # "{" index -> box start
    found = [(m.start(), m.start(1), m.end(1)) for m in _BOX_SPACE.finditer(text)]
    if starts:
        stack: list[int] = []
        first = min(starts)
        for m in _BRACE.finditer(text, first):
            if m.group() == "{":
                stack.append(m.start())
            elif stack:
                open_at = stack.pop()
                if open_at in starts:
                    found.append((starts[open_at], open_at + 1, m.start()))
    found.sort(key=lambda item: item[0])
    return found


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside (), [], {}: "(1,2), 3" -> ["(1,2)", "3"]. Interval brackets may be
    mixed ("[1,2)"): any opener raises the depth, any closer lowers it."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _last_answer_tag(text: str) -> str | None:
    """Content of the last `<answer>...</answer>`: the pairs `re.findall(r"<answer>(.*?)</answer>")`
    finds (left to right, each open tag closed by the next close tag), in one linear pass; the
    regex itself is quadratic on thousands of unclosed tags, and no timer interrupts it."""
    last, open_at = None, None
    for m in _ANSWER_TAG_EDGE.finditer(text):
        if not m.group(1):
            open_at = m.end() if open_at is None else open_at
        elif open_at is not None:
            last, open_at = text[open_at : m.start()], None
    return last


_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def _clean_phrase(text: str) -> str:
    """The answer in "the answer is X. More text": first line, first sentence, no `$`/`**` wrapping."""
    text = text.strip().split("\n", 1)[0][:_PHRASE_MAX_CHARS].strip()
    text = _SENTENCE_END.split(text, 1)[0]
    text = text.replace("**", "").strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and right in text[len(left) :]:
            text = text[len(left) : len(left) + text[len(left) :].index(right)]
            break
    return text.strip().rstrip(".").strip().strip("$").strip()


def _tidy(answer: str) -> str:
    """Drop what is typography, not answer: a trailing period ("104."), a whole-answer \\textbf{}."""
    answer = answer.strip()
    answer = _WHOLE_TEXTBF.sub(r"\1", answer).strip()
    return answer[:-1].rstrip() if answer.endswith(".") and not answer.endswith("..") else answer


def _answer_candidates(completion: str, n_answers: int = 1) -> list[str]:
    """What the completion may be answering, best first (see `extract_answer`). For a gold with
    several answers, the last `n_answers` boxes joined with ", " are a second candidate."""
    if not completion:
        return []
    spans = _boxed_contents(completion)[-max(n_answers, 1) :]
    boxes = [_tidy(completion[begin:end]) for _, begin, end in spans]
    if boxes:
        last = boxes[-1]
        if n_answers <= 1 or len(boxes) < n_answers:
            return [last]
        joined = ", ".join(boxes)
        return [joined, last] if len(_split_top_level(last)) == 1 else [last, joined]
    tag = _last_answer_tag(completion)
    if tag is not None and _clean_phrase(tag):
        return [_clean_phrase(tag)]
    last_phrase = deque(_ANSWER_PHRASE.finditer(completion), maxlen=1)  # no list of them all
    if last_phrase:
        phrase = _clean_phrase(completion[last_phrase[0].end() :])
        if phrase:
            return [phrase]
    numbers = _NUMBER.findall(completion)
    return [numbers[-1]] if numbers else []


def extract_answer(completion: str, n_answers: int = 1) -> str | None:
    """The final answer a completion gives, as a string; None when it gives none.

    Order: last complete box; else last `<answer>` tag; else text after the last "answer is" /
    "answer:"; else the last number. With `n_answers` > 1 (a multi-answer gold) and one answer per
    box, the last `n_answers` boxes are joined with ", ".
    """
    candidates = _answer_candidates(completion, n_answers)
    return candidates[0] if candidates else None


def split_gold(gold: str) -> list[str]:
    """The answers a gold names: OlympiadBench's `a$,$b` -> ["a", "b"]; stray `$` and a trailing
    period (source typos such as `(-\\infty, 0) \\cup\\{1\\}$.`) are dropped."""
    parts = []
    for part in _GOLD_SEPARATOR.split(str(gold)):
        part = part.strip()
        if part.endswith("."):
            part = part[:-1]
        part = part.strip().strip("$").strip()
        if part:
            parts.append(part)
    return parts


# ------------------------------------------------------------------------------------ comparison

_mv = None
# Answers (or golds) longer than this are compared as text only: no final answer is this long, and
# parsing one costs seconds and fills the parse cache.
_MAX_PARSE_CHARS = 10_000


def _math_verify():
    """Import math-verify on first use (workers pay for sympy once; `import vimpo_bench` stays light)
    and hook our relative number comparison into it (see `_numeric_eq`). Our timer replaces
    math-verify's: its own SIGALRM would cancel ours, so it is turned off."""
    global _mv
    if _mv is None:
        import math_verify
        import math_verify.grader
        import math_verify.parser

        # We provide the timeout; silence math-verify's once-per-process "timeout disabled" warning.
        math_verify.parser.TIMEOUT_WARNING_SHOWN = True
        math_verify.grader.TIMEOUT_WARNING_SHOWN = True
        if math_verify.grader.sympy_numeric_eq is not _numeric_eq:
            global _mv_numeric_eq
            _mv_numeric_eq = math_verify.grader.sympy_numeric_eq
            math_verify.grader.sympy_numeric_eq = _numeric_eq
        config = (
            math_verify.LatexExtractionConfig(boxed_match_priority=0),
            math_verify.ExprExtractionConfig(),
        )
        _mv = (math_verify, config)
    return _mv


# ------------------------------------------------------------- numbers: relative, not absolute
#
# math-verify's numeric test is absolute: a decimal matches when both round to the same 6 decimal
# places, other numeric expressions when `(x - y).evalf(chop=True) == 0`. So 0.0000001 equals
# 1/3628800 and 10^{-20} equals 2*10^{-20}. For our calls (they carry `_RELATIVE` as
# float_rounding; anyone else calling math-verify gets its own test) `_numeric_eq` keeps that test
# and adds a relative one, so it only ever rejects more:
#
# - a decimal on either side: |x - y| <= 1e-4 * max(|x|, |y|), the tolerance of the Qwen2.5-Math
#   evaluation harness. Above 0.01 six equal decimals already imply it (math-verify's answers are
#   unchanged: 0.333333 = 1/3, 0.3333 != 1/3); below, tiny distinct values stop matching.
# - exact values: their 40-digit values agree to a relative 1e-25. An exact identity that fails
#   this (never seen: evalf would have to lose 15 digits) is still proved by math-verify's
#   symbolic check, which runs next. No absolute floor: 0 matches only what evaluates to 0 (or
#   what sympy simplifies to 0).
#
# Percentages keep math-verify's reading: 50% matches 50 and 0.5.

_DECIMAL_REL_TOL = 1e-4
_EXACT_REL_TOL = 1e-25
_EVAL_DIGITS = 40
_mv_numeric_eq = None  # math-verify's own sympy_numeric_eq, set by _math_verify()


class _RelativeRounding(int):
    """math-verify's float_rounding (6 decimals), marked: verify() passes it down to `_numeric_eq`."""


_RELATIVE = _RelativeRounding(6)


def _numeric_eq(a, b, float_rounding, numeric_precision) -> bool:
    """math-verify's `sympy_numeric_eq`, and for our calls a relative test on top (see above)."""
    equal = _mv_numeric_eq(a, b, float_rounding, numeric_precision)
    if not equal or not isinstance(float_rounding, _RelativeRounding):
        return equal
    tolerance = _DECIMAL_REL_TOL if _has_float(a) or _has_float(b) else _EXACT_REL_TOL
    xs, ys = _readings(a), _readings(b)
    if not xs or not ys:
        return True  # not plain numbers (symbols, matrices: their entries come back here)
    return any(_relatively_close(x, y, tolerance) for x in xs for y in ys)


def _has_float(expr) -> bool:
    from sympy import Basic, Float

    return isinstance(expr, Basic) and expr.has(Float)


def _readings(expr) -> list:
    """The values `expr` may stand for: its value and, for a percentage, its number (math-verify
    matches 50% with 50). Empty when it is not a finite number."""
    grader = _mv[0].grader
    forms = [grader.safe_sympy_doit(expr)]
    percent = grader.get_pct_val(expr)
    if percent is not None:
        forms.append(percent)
    values = [_complex_value(form) for form in forms]
    return [v for v in values if v is not None]


def _complex_value(expr):
    """`expr` as an mpmath complex to _EVAL_DIGITS digits; None when it is not a finite number."""
    import mpmath
    from sympy import Basic, Float, MatrixBase

    if not isinstance(expr, Basic) or isinstance(expr, MatrixBase) or expr.free_symbols:
        return None
    try:
        real, imag = expr.evalf(_EVAL_DIGITS).as_real_imag()
        if not (real.is_Number and imag.is_Number and real.is_finite and imag.is_finite):
            return None
        return mpmath.mpc(
            mpmath.mpf(Float(real, _EVAL_DIGITS)._mpf_), mpmath.mpf(Float(imag, _EVAL_DIGITS)._mpf_)
        )
    except Exception:  # sympy cannot evaluate it: math-verify's test stands
        return None


def _relatively_close(x, y, tolerance: float) -> bool:
    """|x - y| <= tolerance * max(|x|, |y|) (both 0: equal)."""
    import mpmath

    with mpmath.workdps(_EVAL_DIGITS):
        return abs(x - y) <= tolerance * max(abs(x), abs(y))


# ------------------------------------------------------- notation math-verify does not read

# 0.\overline{3}, 0.1\overline{6}, 1.\bar{142857}, 0.\dot{3}, 0.\dot{1}4285\dot{7}; and, as a whole
# answer only (inside an expression "2.5(3)" may be a product), 0.(3) and 0.1(6).
_REPEATING = re.compile(
    r"(?<![\d.])(\d*)\.(\d*)\s*\\(?:overline|bar)\s*(?:\{\s*(\d+)\s*\}|(\d))"
    r"|(?<![\d.])(\d*)\.(\d*)\\dot\s*\{?(\d)\}?(?:(\d*)\\dot\s*\{?(\d)\}?)?"
)
_REPEATING_PARENS = re.compile(r"^\s*(\d*)\.(\d*)\((\d+)\)\s*$")
_MAX_REPEATING_DIGITS = 100


def _repeating_as_fraction(whole: str, fixed: str, period: str) -> str | None:
    """`whole.fixed(period)(period)...` as `\\frac{p}{q}` (or `p`); None for absurd lengths. Bare:
    braces would make it a set to math-verify, and `\\frac` binds as tightly as a number does."""
    from fractions import Fraction

    if not period or len(whole) + len(fixed) + len(period) > _MAX_REPEATING_DIGITS:
        return None
    repeat = 10 ** len(period) - 1
    value = int(whole or 0) + Fraction(int(fixed + period) - int(fixed or 0), 10 ** len(fixed) * repeat)
    if value.denominator == 1:
        return str(value.numerator)
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _expand_repeating_decimals(text: str) -> str:
    """Rewrite repeating-decimal notation as the fraction it denotes: 0.\\overline{3} -> 1/3."""

    def replace(m: re.Match) -> str:
        g = m.groups()
        if g[0] is not None:  # overline / bar
            parts = (g[0], g[1], g[2] or g[3])
        else:  # dots over the first and last digit of the period
            parts = (g[4], g[5], g[6] + (g[7] or "") + (g[8] or ""))
        return _repeating_as_fraction(*parts) or m.group(0)

    if "." not in text:
        return text
    whole = _REPEATING_PARENS.match(text)
    if whole:
        return _repeating_as_fraction(*whole.groups()) or text
    return _REPEATING.sub(replace, text)


@lru_cache(maxsize=4096)
def _parse_boxed(text: str) -> tuple:
    """math-verify's reading of `\\boxed{text}` (repeating decimals rewritten first)."""
    mv, config = _math_verify()
    boxed = "\\boxed{" + _expand_repeating_decimals(text) + "}"
    return tuple(mv.parse(boxed, extraction_config=config, parsing_timeout=None))


def _union_of_relations(items: tuple, other: tuple) -> list:
    """`x < 0 \\text{ or } x > 1` parses as a set of relations; next to an interval or a union of
    them (`other`) it stands for the union of the sets its relations describe (one variable)."""
    from sympy import FiniteSet, Interval, Union

    if not any(isinstance(o, (Interval, Union)) for o in other):
        return list(items)
    is_relation = _mv[0].grader.is_relation
    out = []
    for item in items:
        if (
            isinstance(item, FiniteSet)
            and len(item) > 1
            and all(is_relation(r) for r in item.args)
            and len(item.free_symbols) == 1
        ):
            try:
                item = Union(*(r.as_set() for r in item.args))
            except Exception:  # sympy cannot solve one of them: compare as written
                pass
        out.append(item)
    return out


def _normalized_text(text: str) -> str:
    text = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r"\1", text)
    return re.sub(r"[\s$]|\\[,;!]|\\left|\\right", "", text).lower()


def _same_text(gold: str, answer: str) -> bool:
    """Answers math-verify cannot parse (free text) match only the same text."""
    return bool(_normalized_text(gold)) and _normalized_text(gold) == _normalized_text(answer)


_BASE_SUBSCRIPT = re.compile(r"^\s*[0-9A-Za-z]+\s*_\s*\{?\s*(\d+)\s*\}?\s*$")


def _equivalent(gold: str, answer: str) -> bool:
    # math-verify reads 52_8 as 52: two numerals written in different bases are never equal.
    gold_base, answer_base = _BASE_SUBSCRIPT.match(gold), _BASE_SUBSCRIPT.match(answer)
    if gold_base and answer_base and gold_base.group(1) != answer_base.group(1):
        return False
    if max(len(gold), len(answer)) > _MAX_PARSE_CHARS:
        return _same_text(gold, answer)
    mv, _ = _math_verify()
    parsed_gold, parsed_answer = _parse_boxed(gold), _parse_boxed(answer)
    if not parsed_gold or not parsed_answer:
        return _same_text(gold, answer)
    return mv.verify(
        _union_of_relations(parsed_gold, parsed_answer),
        _union_of_relations(parsed_answer, parsed_gold),
        float_rounding=_RELATIVE,  # relative number comparison (`_numeric_eq`)
        allow_set_relation_comp=True,  # an interval gold accepts `x \\ge 3`, not only the reverse
        timeout_seconds=None,
    )


def _matches_all(golds: list[str], answers: list[str]) -> bool:
    """Is there a one-to-one pairing of equivalent gold and given answers? (k <= ~5: backtracking)"""
    if len(golds) != len(answers):
        return False
    if not golds:
        return True
    first, rest = golds[0], golds[1:]
    for i, answer in enumerate(answers):
        if _equivalent(first, answer) and _matches_all(rest, answers[:i] + answers[i + 1 :]):
            return True
    return False


def _grade_core(completion: str, gold: str, seen: dict) -> tuple[bool, str | None]:
    """(correct, extracted answer). `seen["extracted"]` holds the answer as soon as it is known, so
    that a timeout during the comparison can still report it without extracting again."""
    golds = split_gold(gold)
    candidates = _answer_candidates(completion, n_answers=max(len(golds), 1))
    seen["extracted"] = candidates[0] if candidates else None
    if not candidates or not golds:
        return False, candidates[0] if candidates else None
    if len(golds) == 1:
        return _equivalent(golds[0], candidates[0]), candidates[0]
    for extracted in candidates:
        if _equivalent(", ".join(golds), extracted):
            return True, extracted
        given = _split_top_level(extracted)
        if _matches_all(golds, given):
            return True, extracted
        # Some golds split one list arbitrarily ("(0,1,1),(1,0,1)$,$(1,1,0)"): compare flat lists.
        flat = [item for part in golds for item in _split_top_level(part)]
        if len(flat) != len(golds) and _matches_all(flat, given):
            return True, extracted
    return False, candidates[0]


# -------------------------------------------------------------------------- in-process grading


def _raise_timeout(signum, frame):
    raise GradingTimeout()


def _grade_with_timer(completion: str, gold: str, timeout: float | None) -> GradeResult:
    """Grade in this thread: with an interval-timer deadline (main thread only), or none (None).
    After a timeout nothing more is computed: `extracted` is None if extraction was cut short."""
    seen: dict = {}
    if timeout is None:
        try:
            correct, extracted = _grade_core(completion, gold, seen)
            return GradeResult(correct, extracted)
        except RecursionError:
            return GradeResult(False, seen.get("extracted"), error="RecursionError")
    _math_verify()  # outside the timer: an import cut short by it leaves math-verify half-loaded
    previous_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    started = time.monotonic()
    try:
        # Re-fire every 0.1 s after the deadline in case some library code swallows the first one.
        previous_timer = signal.setitimer(signal.ITIMER_REAL, timeout, 0.1)
        try:
            try:
                correct, extracted = _grade_core(completion, gold, seen)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            result = GradeResult(correct, extracted)
        except GradingTimeout:
            result = GradeResult(False, seen.get("extracted"), timed_out=True)
        except RecursionError:
            result = GradeResult(False, seen.get("extracted"), error="RecursionError")
    except GradingTimeout:  # delivered between the grade's end and the timer's reset
        result = GradeResult(False, seen.get("extracted"), timed_out=True)
    finally:
        signal.signal(signal.SIGALRM, previous_handler)
    if previous_timer[0] > 0:  # someone else's alarm was pending: put back what is left of it
        signal.setitimer(
            signal.ITIMER_REAL, max(previous_timer[0] - (time.monotonic() - started), 1e-3), previous_timer[1]
        )
    return result


def _one_line(exc: BaseException) -> str:
    """`Type: message` on one line, at most 200 characters (record fields, log lines)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not (isinstance(timeout, numbers.Real) and 0 < timeout < math.inf):
        raise ValueError(f"timeout must be None (no deadline) or seconds > 0, got {timeout!r}")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def grade(completion: str, gold: str, timeout: float | None = DEFAULT_TIMEOUT) -> GradeResult:
    """Grade one answer within `timeout` seconds (None: no deadline, the caller's risk).

    From the main thread it grades here, under an interval timer (the first call in a process
    imports math-verify, 1-2 s, before its deadline starts). From any other thread (where no
    signal can interrupt it) it grades in a helper worker process (started on the first such
    call, 2-3 s, and shared by all threads: one answer at a time), which is killed and replaced
    if it overruns; see the module doc. Never raises for a bad answer or gold: a timeout, a
    parser crash or a killed worker scores incorrect and is flagged (`timed_out`, `error`, one
    line). Raises ValueError for a timeout that is not None or > 0, and GraderUnavailable when
    a thread's helper process cannot start.
    """
    _check_timeout(timeout)
    if timeout is not None and not _in_main_thread():
        return _grade_in_helper([completion], [gold], timeout)[0]
    try:
        return _grade_with_timer(completion, gold, timeout)
    except Exception as exc:  # a parser bug must not end an evaluation: incorrect, and counted
        return GradeResult(False, None, error=_one_line(exc))


def is_correct(completion: str, gold: str, timeout: float | None = DEFAULT_TIMEOUT) -> bool:
    """True when the completion's final answer is equivalent to `gold` (see `grade`)."""
    return grade(completion, gold, timeout).correct


# ------------------------------------------------------------------------------ process pool


# Graded by each worker before it reports ready: imports sympy and warms the LaTeX parser's caches
# (ANTLR's prediction cache and sympy's), which otherwise slow a new worker's first ~100 answers.
_WARMUP = (
    ("\\frac{3}{4}", "0.75"),
    ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
    ("x=3", "3"),
    ("(1, 2]", "(1,2]"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("\\left(3, \\frac{\\pi}{2}\\right)", "(3,\\pi/2)"),
    ("30^\\circ", "30"),
    ("50\\%", "0.5"),
    ("5\\text{ cm}", "5"),
    ("\\text{(C)}", "C"),
    ("2x^2+3x-1", "2x^2+3x-1"),
    ("-\\frac{1}{2}", "-0.5"),
    ("10\\sqrt{2}", "\\sqrt{200}"),
    ("\\pi", "3.14"),
    ("p - q", "q - p"),
    ("(-\\infty, 0) \\cup \\{1\\}", "(-\\infty,0)\\cup\\{1\\}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1,2)"),
    ("1,000", "1000"),
    ("\\$18.90", "18.90"),
    ("\\infty", "\\infty"),
    ("e^{i\\pi}", "-1"),
    ("\\binom{5}{2}", "10"),
)


def _worker_main(conn, warmup: bool = True) -> None:
    """Worker loop: warm up, say "ready", then grade chunks `(timeout, items)`, one reply per
    answer, in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    for answer, gold in _WARMUP if warmup else _WARMUP[:1]:
        grade(f"\\boxed{{{answer}}}", gold, timeout=None)
    _parse_boxed.cache_clear()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        timeout, items = message
        for index, completion, gold in items:
            result = grade(completion, gold, timeout)
            conn.send((index, result.correct, result.extracted, result.timed_out, result.error))


class _Worker:
    def __init__(self, ctx, warmup: bool):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, warmup), daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.queue: deque = deque()  # items sent and not yet answered, in order
        self.last_progress = time.monotonic()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class GraderPool:
    """Worker processes that grade with a per-answer timeout. Reuse one across batches (workers
    start in ~1-2 s: they import sympy); close it, or use it as a context manager.

    `workers` defaults to min(cpu count, 8). Start method "spawn" by default (safe when the parent
    has threads or CUDA); "forkserver" also works. `warmup=False` skips the parser warm-up (quicker
    start, slower first answers).
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        start_method: str = "spawn",
        warmup: bool = True,
    ):
        if timeout is None or timeout <= 0:
            raise ValueError(f"GraderPool needs a positive timeout, got {timeout!r}")
        self.workers = workers or min(os.cpu_count() or 1, 8)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.timeout = float(timeout)
        self._ctx = multiprocessing.get_context(start_method)
        self.warmup = warmup
        self._pool: list[_Worker] = [_Worker(self._ctx, warmup) for _ in range(self.workers)]
        self.restarts = 0
        self._lock = threading.Lock()  # one batch at a time; callers on other threads wait

    def __enter__(self) -> GraderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._pool:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._pool:
            worker.process.join(timeout=2)
            worker.kill()
        self._pool = []

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._pool[self._pool.index(worker)] = _Worker(self._ctx, self.warmup)
        self.restarts += 1

    def grade(
        self, completions: Sequence[str], golds: Sequence[str], timeout: float | None = None
    ) -> list[GradeResult]:
        """Grade `completions[i]` against `golds[i]`; results in input order. `timeout`: seconds
        per answer for this batch (default: the pool's)."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        timeout = self.timeout if timeout is None else timeout
        _check_timeout(timeout)
        with self._lock:
            if not self._pool:
                raise RuntimeError("GraderPool is closed")
            return self._grade(completions, golds, float(timeout))

    def _grade(self, completions: Sequence[str], golds: Sequence[str], timeout: float) -> list[GradeResult]:
        n = len(completions)
        results: list[GradeResult | None] = [None] * n
        # Small chunks: few messages, yet a slow answer holds up little other work.
        chunk = max(1, min(16, math.ceil(n / (self.workers * 4))))
        todo = deque(
            [(i, str(completions[i]), str(golds[i])) for i in range(s, min(s + chunk, n))]
            for s in range(0, n, chunk)
        )
        remaining = n
        while remaining:
            for worker in self._pool:
                if worker.ready and not worker.queue and todo:
                    items = todo.popleft()
                    worker.queue.extend(items)
                    worker.last_progress = time.monotonic()
                    worker.conn.send((timeout, items))
            busy = [w for w in self._pool if w.queue or not w.ready]
            deadline = (
                min(w.last_progress for w in busy if w.queue) + timeout + _KILL_GRACE
                if any(w.queue for w in busy)
                else time.monotonic() + 60.0
            )
            ready = multiprocessing.connection.wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy],
                timeout=max(deadline - time.monotonic(), 0.0),
            )
            for worker in list(busy):
                if worker.conn in ready or worker.process.sentinel in ready:
                    remaining -= self._drain(worker, results, todo)
            limit = timeout + _KILL_GRACE
            for worker in list(self._pool):
                if worker.queue and time.monotonic() - worker.last_progress > limit:
                    remaining -= self._drain(worker, results, todo)  # replies already on their way
                    if worker.queue and time.monotonic() - worker.last_progress > limit:
                        remaining -= self._fail_first(worker, results, todo, timed_out=True)
        return results  # type: ignore[return-value]

    def _drain(self, worker: _Worker, results: list, todo: deque) -> int:
        """Read every reply the worker has sent; on its death, fail the answer it was on."""
        done, dead = 0, False
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                if message[0] == "ready":
                    worker.ready = True
                    continue
                index, correct, extracted, timed_out, error = message
                worker.queue.popleft()
                results[index] = GradeResult(correct, extracted, timed_out, error)
                worker.last_progress = time.monotonic()
                done += 1
        except (EOFError, OSError):
            dead = True
        if dead or not worker.process.is_alive():
            if not worker.ready:
                worker.kill()
                raise RuntimeError(f"a grader worker failed to start (exit code {worker.process.exitcode})")
            if worker.queue:
                done += self._fail_first(worker, results, todo, timed_out=False)
            else:
                self._replace(worker)
        return done

    def _fail_first(self, worker: _Worker, results: list, todo: deque, timed_out: bool) -> int:
        """Score the answer the worker is stuck on (or died on) incorrect, requeue the rest, restart."""
        index, completion, _ = worker.queue.popleft()
        code = worker.process.exitcode
        error = None if timed_out else f"worker died (exit code {code})"
        results[index] = GradeResult(False, extract_answer(completion), timed_out=timed_out, error=error)
        if worker.queue:
            todo.appendleft(list(worker.queue))
            worker.queue.clear()
        self._replace(worker)
        return 1


# ---------------------------------------------------------------- a deadline for other threads

_helper: GraderPool | None = None
_helper_pid = 0
_helper_lock = threading.Lock()


class GraderUnavailable(RuntimeError):
    """Grading with a deadline off the main thread needs a helper process, and it could not start
    (for example inside a daemonic process, which may not have children)."""


def _helper_pool() -> GraderPool:
    """The one-worker pool that grades for threads other than the main one, started on first use
    (again after a fork: a child cannot share its parent's pipes) and closed at exit."""
    global _helper, _helper_pid
    with _helper_lock:
        if _helper is None or _helper_pid != os.getpid():
            _helper = GraderPool(workers=1)
            _helper_pid = os.getpid()
        return _helper


def _grade_in_helper(completions: Sequence[str], golds: Sequence[str], timeout: float) -> list[GradeResult]:
    """Grade in the helper process; GraderUnavailable (one line) when it cannot start."""
    try:
        return _helper_pool().grade(completions, golds, timeout=timeout)
    except (RuntimeError, AssertionError, OSError) as exc:  # spawn refused, worker failed to start
        raise GraderUnavailable(
            f"cannot grade with a deadline off the main thread ({_one_line(exc)}); "
            "use timeout=None to grade without one"
        ) from exc


@atexit.register
def _close_helper() -> None:
    if _helper is not None and _helper_pid == os.getpid():  # not a forked child's inherited copy
        _helper.close()


def grade_batch(
    completions: Sequence[str],
    golds: Sequence[str],
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    pool: GraderPool | None = None,
) -> list[GradeResult]:
    """Grade many answers: in `pool` if given (with the pool's timeout), else in a fresh pool of
    `workers` processes (`workers=0`: one after another as `grade` does, so off the main thread
    in its helper process). Results are in input order."""
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
    if pool is not None:
        return pool.grade(completions, golds)
    if workers == 0 and timeout is not None and not _in_main_thread():
        return _grade_in_helper(completions, golds, timeout)
    if workers == 0:
        return [grade(c, g, timeout) for c, g in zip(completions, golds, strict=True)]
    with GraderPool(workers, timeout) as fresh:
        return fresh.grade(completions, golds)


def count_failures(results: Sequence[GradeResult]) -> dict[str, int]:
    """{"timeouts": ..., "errors": ...} over `results`, for run summaries."""
    return {
        "timeouts": sum(r.timed_out for r in results),
        "errors": sum(r.error is not None for r in results),
    }
