"""Fault injection for the reliability tests: `point(name)` kills this process with SIGKILL at a named
place when the environment asks for it, so that a test can cut a run short exactly there (mid-save,
mid-evaluation), as a crash, an OOM kill or `kill -9` would.

    VIMPO_BENCH_KILL_AT=save@2          # the 2nd time this process reaches point "save"
    VIMPO_BENCH_KILL_AT=step@3,heldout  # either point, whichever comes first (no @n: the first time)

Unset (always, outside tests), a point costs one environment lookup.
"""

from __future__ import annotations

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
