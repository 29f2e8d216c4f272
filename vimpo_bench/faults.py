"""Fault injection for the reliability tests: `point(name)` kills this process with SIGKILL at a named
place when the environment asks for it, so that a test can cut a run short exactly there (mid-save,
mid-evaluation), as a crash, an OOM kill or `kill -9` would.

    VIMPO_BENCH_KILL_AT=save@2          # the 2nd time this process reaches point "save"
    VIMPO_BENCH_KILL_AT=step@3,heldout  # either point, whichever comes first (no @n: the first time)

Unset (always, outside tests), a point costs one environment lookup.

`disk_full(exc)` and `one_line(exc)` tell the user what went wrong in one line when a fault is real.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ENV = "VIMPO_BENCH_KILL_AT"
_hits: Counter[str] = Counter()


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    _hits[name] += 1
    for item in spec.split(","):
        target, _, nth = item.strip().partition("@")
        if target == name and _hits[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


# How libraries that drop the errno say it: safetensors ("No space left on device (os error 28)"), sqlite.
_FULL_MESSAGES = ("No space left on device", "database or disk is full", "Disk quota exceeded")


def disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, says the disk is full."""
    while exc is not None:
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(m in str(exc) for m in _FULL_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def one_line(message: object) -> str:
    """The first line of an error's (or any) message, its type's name when it has none."""
    lines = str(message).strip().splitlines()
    return lines[0] if lines else type(message).__name__
