"""File locks (fcntl.flock on a lock file beside the thing they guard).

Two uses: `file_lock` serializes a short critical section between processes on this machine (the first
use of a new sqlite store, whose schema creation two processes must not race), and `OwnerLock` is held
by a training process for its whole life, so that another process can tell a live run from one whose
process is gone: the kernel releases a flock when its holder dies, even by kill -9, so a lock that can
be taken has no live owner. The lock file also records the owner's host and pid, for people.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block; other processes wait. Where the
    lock file cannot be created (a read-only folder) the block runs unlocked: a reader cannot race a writer's
    schema creation there anyway."""
    try:
        handle = open(path, "a")  # noqa: SIM115 - closed below
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class OwnerLock:
    """An exclusive, non-blocking lock held for a process's lifetime; `acquire()` says whether it got it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - kept open while held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{socket.gethostname()} {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def held(path: str | Path) -> bool:
    """Whether a live process holds the lock file `path` (False when there is no such file)."""
    try:
        handle = open(path)  # noqa: SIM115 - closed below
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def owner(path: str | Path) -> str:
    """`host pid` of the lock file's last holder ('' when unknown)."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""
