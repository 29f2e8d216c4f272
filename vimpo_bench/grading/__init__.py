"""The one grader (rule 8): the answer rules of `vimpo_bench.grading.answers` run under a deadline, in this process
or in worker processes. `grade`, `is_correct`, `grade_batch` and `GraderPool` are the entry points;
`extract_answer`, `split_gold` and `GRADER_VERSION` are the rules' own, re-exported here.

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
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from vimpo_bench.grading.answers import (  # noqa: F401 - extract_answer, split_gold, GRADER_VERSION: the rules' public names, re-exported
    GRADER_VERSION,
    extract_answer,
    grade_core,
    load_math_verify,
    parse_boxed,
    split_gold,
)

DEFAULT_TIMEOUT = 5.0
# Extra seconds a worker gets past its own timer before the parent kills it.
KILL_GRACE = 2.0
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


# -------------------------------------------------------------------------- in-process grading


def _raise_timeout(signum, frame):
    raise GradingTimeout()


def _grade_with_timer(completion: str, gold: str, timeout: float | None) -> GradeResult:
    """Grade in this thread: with an interval-timer deadline (main thread only), or none (None).
    After a timeout nothing more is computed: `extracted` is None if extraction was cut short."""
    seen: dict = {}
    if timeout is None:
        try:
            correct, extracted = grade_core(completion, gold, seen)
            return GradeResult(correct, extracted)
        except RecursionError:
            return GradeResult(False, seen.get("extracted"), error="RecursionError")
    load_math_verify()  # outside the timer: an import cut short by it leaves math-verify half-loaded
    previous_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    started = time.monotonic()
    try:
        # Re-fire every 0.1 s after the deadline in case some library code swallows the first one.
        previous_timer = signal.setitimer(signal.ITIMER_REAL, timeout, 0.1)
        try:
            try:
                correct, extracted = grade_core(completion, gold, seen)
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
    parse_boxed.cache_clear()
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
                min(w.last_progress for w in busy if w.queue) + timeout + KILL_GRACE
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
            limit = timeout + KILL_GRACE
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


def grading_version(task_name: str) -> str:
    """The grader version recorded with a run: exact integer match for arith, math-verify otherwise."""
    if task_name == "arith":
        return "arith-exact-v1"
    return GRADER_VERSION
