"""Answer rules of the one grader: extraction and equivalence (rule 8); `grading` runs them under a deadline.

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

Every name here is pure: no process, signal or timer (vimpo_bench/grading/__init__.py has those).
"""

from __future__ import annotations

import re
from collections import deque
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
# A gold with several answers: "69$,$84", "a=2$, $a=-6".
_GOLD_SEPARATOR = re.compile(r"\$\s*,\s*\$")


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


def last_answer_tag(text: str) -> str | None:
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
    tag = last_answer_tag(completion)
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


def load_math_verify():
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
_mv_numeric_eq = None  # math-verify's own sympy_numeric_eq, set by load_math_verify()


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
def parse_boxed(text: str) -> tuple:
    """math-verify's reading of `\\boxed{text}` (repeating decimals rewritten first)."""
    mv, config = load_math_verify()
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
    mv, _ = load_math_verify()
    parsed_gold, parsed_answer = parse_boxed(gold), parse_boxed(answer)
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


def grade_core(completion: str, gold: str, seen: dict) -> tuple[bool, str | None]:
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
