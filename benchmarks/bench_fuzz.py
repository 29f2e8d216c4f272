"""A fuzz campaign against the grader: does every call come back within its deadline, with a result
of the documented shape? Prints the figures.

    python benchmarks/bench_fuzz.py                          # 3,000 random + the adversarial set
    python benchmarks/bench_fuzz.py --inputs 20000 --timeout 1 --thread-inputs 500

Inputs come from the generators of tests/test_grading_fuzz.py (seeded): random strings of LaTeX
pieces, numbers and awkward characters (a tenth of them repeated up to ~100 kB), and the named
adversarial set (huge exponents, 100k nested braces, megabyte inputs, unicode, NUL bytes, lone
backslashes), each once as the answer and once as the gold. Every input is graded from the main
thread (in-process, interval timer); `--thread-inputs` of them also from a second thread (the
helper worker process). A failure is an exception out of `grade`, a result of the wrong shape, or a
call past its deadline by more than `--slack` seconds (the main thread) or the kill grace plus
`--slack` (a thread).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from test_grading_fuzz import adversarial_inputs, random_input  # noqa: E402

from vimpo_bench import grading  # noqa: E402


def inputs(count: int, seed: int) -> list[tuple[str, str, str]]:
    """(name, completion, gold): the adversarial set both ways, then `count` random pairs."""
    rng = random.Random(seed)
    cases = [(name, text, "2") for name, text in adversarial_inputs().items()]
    cases += [(f"gold: {name}", "\\boxed{2}", text) for name, text in adversarial_inputs().items()]
    for i in range(count):
        completion = random_input(rng)
        if rng.random() < 0.1:  # long: the same random piece over and over
            completion *= rng.randint(10, max(11, 100_000 // max(len(completion), 1)))
        gold = random_input(rng) if rng.random() < 0.5 else str(rng.randint(0, 1000))
        cases.append((f"random {i}", completion, gold))
    return cases


def problem(result, seconds: float, bound: float) -> str | None:
    """Why this call fails the promise, or None."""
    if not isinstance(result, grading.GradeResult) or not isinstance(result.correct, bool):
        return f"not a GradeResult: {result!r:.80}"
    if result.error is not None and ("\n" in result.error or len(result.error) > 200):
        return "error is not one line"
    if seconds > bound:
        return f"past the deadline: {seconds:.2f} s"
    return None


def campaign(cases, timeout: float, bound: float) -> dict:
    """Grade every case in this thread; latencies, outcomes and failures."""
    latencies, failures, outcomes = [], [], {"correct": 0, "incorrect": 0, "timed_out": 0, "error": 0}
    for name, completion, gold in cases:
        start = time.monotonic()
        try:
            result = grading.grade(completion, gold, timeout=timeout)
        except Exception as exc:  # the promise: never
            result = exc
        seconds = time.monotonic() - start
        latencies.append((seconds, name, len(completion) + len(gold)))
        why = problem(result, seconds, bound)
        if why:
            failures.append(f"{name}: {why}")
        if isinstance(result, grading.GradeResult):
            key = (
                "timed_out"
                if result.timed_out
                else "error"
                if result.error
                else "correct"
                if result.correct
                else "incorrect"
            )
            outcomes[key] += 1
    return {"latencies": latencies, "failures": failures, "outcomes": outcomes}


def in_a_thread(cases, timeout: float, bound: float) -> dict:
    out: dict = {}

    def run() -> None:
        started = time.monotonic()
        grading.grade("\\boxed{1}", "1")  # starts the helper process
        out["helper_start_s"] = time.monotonic() - started
        out.update(campaign(cases, timeout, bound))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out


def report(label: str, r: dict, timeout: float) -> None:
    seconds = sorted(s for s, _, _ in r["latencies"])

    def pct(q: float) -> float:
        return seconds[min(len(seconds) - 1, int(q * len(seconds)))]

    print(f"{label}: {len(seconds)} inputs, outcomes {r['outcomes']}")
    print(
        f"  latency: median {statistics.median(seconds) * 1e3:.1f} ms, p90 {pct(0.9) * 1e3:.1f} ms, "
        f"p99 {pct(0.99) * 1e3:.0f} ms, p99.9 {pct(0.999) * 1e3:.0f} ms, max {seconds[-1] * 1e3:.0f} ms "
        f"(deadline {timeout * 1e3:.0f} ms; {sum(s > timeout for s in seconds)} calls past it at all)"
    )
    slowest = sorted(r["latencies"], reverse=True)[:5]
    print("  slowest: " + ", ".join(f"{name} ({size:,} chars) {s:.2f} s" for s, name, size in slowest))
    print(f"  failures: {len(r['failures'])}" + "".join(f"\n    {f}" for f in r["failures"][:10]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", type=int, default=3000, help="random pairs (plus the adversarial set)")
    parser.add_argument("--thread-inputs", type=int, default=300, help="of those, graded from a thread too")
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--slack", type=float, default=1.0, help="seconds past the deadline still passing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cases = inputs(args.inputs, args.seed)
    print(
        f"fuzzing {grading.GRADER_VERSION}: {len(cases)} inputs, deadline {args.timeout} s, seed {args.seed}"
    )
    grading.grade("\\boxed{1}", "1")  # imports math-verify outside any deadline
    t0, c0 = time.monotonic(), time.process_time()
    main_thread = campaign(cases, args.timeout, args.timeout + args.slack)
    print(f"main thread: {time.monotonic() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU")
    report("main thread", main_thread, args.timeout)
    if args.thread_inputs:
        picked = random.Random(args.seed).sample(cases, min(args.thread_inputs, len(cases)))
        other = in_a_thread(picked, args.timeout, args.timeout + grading.KILL_GRACE + args.slack)
        print(f"helper process start (first call from a thread): {other['helper_start_s']:.1f} s")
        report("other thread", other, args.timeout)


if __name__ == "__main__":
    main()
