"""The one grader: answer extraction and equivalence for training rewards and evaluation (rule 8).

Protocol: the extraction order of the Qwen2.5-Math evaluation harness (last box first), with
math-verify deciding equivalence:

1. Extract the model's answer (`extract_answer`): the content of the LAST complete `\\boxed{...}`
   (or `\\fbox{}` / `\\framebox{}`); else the content of the last `<answer>...</answer>`; else the
   text after the last "answer is" / "answer:"; else the last number in the completion. A trailing
   period and a whole-answer `\\textbf{}` are dropped.
2. Parse gold and answer with math-verify, each wrapped in `\\boxed{}`, and compare them with
   `math_verify.verify` (numbers, fractions vs decimals, sets, intervals, tuples, equations such as
   `x=3` vs `3`, units, degrees and percent are normalized there). Two numerals with different
   base subscripts (`52_8` vs `52_9`) never match; text math-verify cannot parse matches only
   itself (spaces, `$`, `\\text{}` ignored).
3. OlympiadBench golds with several answers (`a$,$b`) are split; the answer is right when it names
   the same set (one box `a, b`, or one box per answer) in any order. Parts that are themselves
   lists (`(0,1,1),(1,0,1)$,$(1,1,0)`) are compared as one flat list.

math-verify interrupts slow parses with SIGALRM, which only works in a process's main thread. So:

- `is_correct` / `grade` run in the calling process, with a per-answer deadline (an interval timer)
  when called from the main thread, and with NO deadline from any other thread.
- `grade_batch` / `GraderPool` grade in worker processes (spawned, so safe with threads, CUDA and
  open MLflow clients in the parent). Each answer gets `timeout` seconds; a worker that does not
  come back (a C-level loop the timer cannot interrupt) is killed and replaced. A timeout or a crash
  scores incorrect and is flagged on the result (`timed_out`, `error`), so summaries can count them.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
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
_RULES_VERSION = "1"


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
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_PHRASE = re.compile(r"answer(?:\s+is|\s*:)\s*:?", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_PHRASE_MAX_CHARS = 300


def _boxed_contents(text: str) -> list[tuple[int, str]]:
    """(start, content) of every complete `\\boxed{...}`/`\\fbox{...}` in order of their start.

    One pass over the braces with a stack, so it stays linear on adversarial input (thousands of
    unclosed boxes, deep nesting). Escaped braces `\\{` `\\}` are not grouping braces.
    """
    starts = {m.end() - 1: m.start() for m in _BOX_START.finditer(text)}  # "{" index -> box start
    found: list[tuple[int, str]] = [(m.start(), m.group(1)) for m in _BOX_SPACE.finditer(text)]
    if starts:
        stack: list[int] = []
        first = min(starts)
        for m in _BRACE.finditer(text, first):
            if m.group() == "{":
                stack.append(m.start())
            elif stack:
                open_at = stack.pop()
                if open_at in starts:
                    found.append((starts[open_at], text[open_at + 1 : m.start()]))
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
    boxes = _boxed_contents(completion)
    if boxes:
        last = _tidy(boxes[-1][1])
        if n_answers <= 1 or len(boxes) < n_answers:
            return [last]
        joined = ", ".join(_tidy(content) for _, content in boxes[-n_answers:])
        return [joined, last] if len(_split_top_level(last)) == 1 else [last, joined]
    tags = _ANSWER_TAG.findall(completion)
    if tags and _clean_phrase(tags[-1]):
        return [_clean_phrase(tags[-1])]
    phrases = list(_ANSWER_PHRASE.finditer(completion))
    if phrases:
        phrase = _clean_phrase(completion[phrases[-1].end() :])
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


def _math_verify():
    """Import math-verify on first use (workers pay for sympy once; `import vimpo_bench` stays light).
    Our timer replaces math-verify's: its own SIGALRM would cancel ours, so it is turned off."""
    global _mv
    if _mv is None:
        import math_verify
        import math_verify.grader
        import math_verify.parser

        # We provide the timeout; silence math-verify's once-per-process "timeout disabled" warning.
        math_verify.parser.TIMEOUT_WARNING_SHOWN = True
        math_verify.grader.TIMEOUT_WARNING_SHOWN = True
        config = (
            math_verify.LatexExtractionConfig(boxed_match_priority=0),
            math_verify.ExprExtractionConfig(),
        )
        _mv = (math_verify, config)
    return _mv


@lru_cache(maxsize=4096)
def _parse_boxed(text: str) -> tuple:
    mv, config = _math_verify()
    return tuple(mv.parse("\\boxed{" + text + "}", extraction_config=config, parsing_timeout=None))


def _normalized_text(text: str) -> str:
    text = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r"\1", text)
    return re.sub(r"[\s$]|\\[,;!]|\\left|\\right", "", text).lower()


_BASE_SUBSCRIPT = re.compile(r"^\s*[0-9A-Za-z]+\s*_\s*\{?\s*(\d+)\s*\}?\s*$")


def _equivalent(gold: str, answer: str) -> bool:
    # math-verify reads 52_8 as 52: two numerals written in different bases are never equal.
    gold_base, answer_base = _BASE_SUBSCRIPT.match(gold), _BASE_SUBSCRIPT.match(answer)
    if gold_base and answer_base and gold_base.group(1) != answer_base.group(1):
        return False
    mv, _ = _math_verify()
    parsed_gold, parsed_answer = _parse_boxed(gold), _parse_boxed(answer)
    if (
        parsed_gold
        and parsed_answer
        and mv.verify(list(parsed_gold), list(parsed_answer), timeout_seconds=None)
    ):
        return True
    # Answers math-verify cannot parse (free text) still match when they are the same text.
    if not parsed_gold or not parsed_answer:
        return bool(_normalized_text(gold)) and _normalized_text(gold) == _normalized_text(answer)
    return False


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


def _grade_core(completion: str, gold: str) -> tuple[bool, str | None]:
    golds = split_gold(gold)
    candidates = _answer_candidates(completion, n_answers=max(len(golds), 1))
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
    """Grade in this thread; SIGALRM-based deadline only when this is the main thread."""
    if not timeout or threading.current_thread() is not threading.main_thread():
        try:
            correct, extracted = _grade_core(completion, gold)
            return GradeResult(correct, extracted)
        except RecursionError:
            return GradeResult(False, extract_answer(completion), error="RecursionError")
    previous_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    started = time.monotonic()
    try:
        # Re-fire every 0.1 s after the deadline in case some library code swallows the first one.
        previous_timer = signal.setitimer(signal.ITIMER_REAL, timeout, 0.1)
        try:
            try:
                correct, extracted = _grade_core(completion, gold)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            result = GradeResult(correct, extracted)
        except GradingTimeout:
            result = GradeResult(False, extract_answer(completion), timed_out=True)
        except RecursionError:
            result = GradeResult(False, extract_answer(completion), error="RecursionError")
    except GradingTimeout:  # delivered just after the grade finished: the answer stands
        result = GradeResult(False, extract_answer(completion), timed_out=True)
    finally:
        signal.signal(signal.SIGALRM, previous_handler)
    if previous_timer[0] > 0:  # someone else's alarm was pending: put back what is left of it
        signal.setitimer(
            signal.ITIMER_REAL, max(previous_timer[0] - (time.monotonic() - started), 1e-3), previous_timer[1]
        )
    return result


def grade(completion: str, gold: str, timeout: float | None = DEFAULT_TIMEOUT) -> GradeResult:
    """Grade one answer in this process (deadline only in the main thread; see the module doc)."""
    try:
        return _grade_with_timer(completion, gold, timeout)
    except Exception as exc:  # a parser bug must not end an evaluation: incorrect, and counted
        return GradeResult(False, None, error=f"{type(exc).__name__}: {exc}"[:200])


def is_correct(completion: str, gold: str, timeout: float | None = DEFAULT_TIMEOUT) -> bool:
    """True when the completion's final answer is equivalent to `gold` (in-process; see `grade`)."""
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


def _worker_main(conn, timeout: float, warmup: bool = True) -> None:
    """Worker loop: warm up, say "ready", then grade chunks, one reply per answer, in order."""
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
        for index, completion, gold in message:
            result = grade(completion, gold, timeout)
            conn.send((index, result.correct, result.extracted, result.timed_out, result.error))


class _Worker:
    def __init__(self, ctx, timeout: float, warmup: bool):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, timeout, warmup), daemon=True)
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
        self._pool: list[_Worker] = [_Worker(self._ctx, self.timeout, warmup) for _ in range(self.workers)]
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
        self._pool[self._pool.index(worker)] = _Worker(self._ctx, self.timeout, self.warmup)
        self.restarts += 1

    def grade(self, completions: Sequence[str], golds: Sequence[str]) -> list[GradeResult]:
        """Grade `completions[i]` against `golds[i]`; results in input order."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        with self._lock:
            if not self._pool:
                raise RuntimeError("GraderPool is closed")
            return self._grade(completions, golds)

    def _grade(self, completions: Sequence[str], golds: Sequence[str]) -> list[GradeResult]:
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
                    worker.conn.send(items)
            busy = [w for w in self._pool if w.queue or not w.ready]
            deadline = (
                min(w.last_progress for w in busy if w.queue) + self.timeout + _KILL_GRACE
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
            limit = self.timeout + _KILL_GRACE
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


def grade_batch(
    completions: Sequence[str],
    golds: Sequence[str],
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    pool: GraderPool | None = None,
) -> list[GradeResult]:
    """Grade many answers: in `pool` if given, else in a fresh pool of `workers` processes
    (`workers=0`: in this process, one after another). Results are in input order."""
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
    if pool is not None:
        return pool.grade(completions, golds)
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
