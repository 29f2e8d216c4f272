"""Owner locks for runs other than training runs (eval runs), found from the run's own record.

A training run's lock sits at a path known from its run id (`runs.claim_run`). An eval run's records can
go anywhere (`--output-dir`), and its run id only exists once the MLflow run does, so the order here is:
take a fresh lock file first, then create the run with a tag naming it (host and path), finish the run,
and only then release the lock. A run is therefore never visible without its owner recorded, and

    the tag's lock is not held  +  the run, read AFTER that check, is still RUNNING  =>  its process died

(a process that ended normally set its final status before it let go of the lock). Only this machine's
locks can be checked: runs owned on another host are left alone.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

from vimpo_bench.runs import locks

OWNER_TAG = "vimpo.owner_lock"  # "<host>:<absolute path of the lock file>"
END_TAG = "vimpo.end_reason"


class RunOwner:
    """This process's claim on a run it is about to create: `tags` go on the run, `release()` after its end."""

    def __init__(self, folder: str | Path):
        path = (Path(folder) / ".owners" / f"{uuid.uuid4().hex}.lock").resolve()
        self.lock = locks.OwnerLock(path)
        if not self.lock.acquire():  # a fresh uuid: only fails if something else is badly wrong
            raise RuntimeError(f"could not take the new lock file {path}")
        self.tags = {OWNER_TAG: f"{socket.gethostname()}:{path}"}

    def release(self) -> None:
        self.lock.release()
        self.lock.path.unlink(missing_ok=True)


def owner_gone(tags: dict) -> bool:
    """Whether the run's recorded owner is a process of this machine that no longer holds its lock. False
    when the run records no owner (older runs, training runs) or one on another host: those cannot be told."""
    host, path = _owner(tags)
    return host == socket.gethostname() and not locks.held(path)


def close_dead_evals(experiment: str, tracking_uri: str | None) -> list[str]:
    """Mark eval runs of `experiment` whose process died (`owner_gone`) KILLED, tagged why; returns their ids."""
    from vimpo_bench.runs import tracking

    closed = []
    running = tracking.search_runs(
        [experiment], "attributes.status = 'RUNNING' and tags.`vimpo.kind` = 'eval'", tracking_uri)
    for run in running:
        if not owner_gone(run["tags"]):
            continue
        (now,) = tracking.get_runs([run["run_id"]], tracking_uri)  # re-read after the lock check (see above)
        if now["status"] != "RUNNING":
            continue
        handle = tracking.MlflowTracker.attach(run["run_id"], tracking_uri)
        handle.set_tags({END_TAG: "its process died (no live owner)"})
        handle.finish("KILLED")
        Path(_owner(run["tags"])[1]).unlink(missing_ok=True)
        closed.append(run["run_id"])
    return closed


def _owner(tags: dict) -> tuple[str, str]:
    host, _, path = str(tags.get(OWNER_TAG, "")).partition(":")
    return host, path
