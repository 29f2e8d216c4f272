"""Which trial a sweep worker runs next, and what becomes of a trial whose worker dies, on any machine.

Optuna's RDB storage keeps a heartbeat per running trial (`heartbeat_interval`, `grace_period`): a worker
records one every `interval` seconds while its trial runs (`beating`), and before each ask every worker
fails the trials silent for longer than `grace` (`optuna.storages.fail_stale_trials`), which the storage
hands to `StaleTrial`: the trial's MLflow run is marked KILLED and the trial is queued again with its
parameters (Optuna's RetryHeartbeatStaleTrialCallback); the next ask of any worker pops it. This works
across machines sharing one PostgreSQL database, where a process id means nothing.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import socket
import threading
import warnings
import zlib
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Heartbeat:
    """Optuna's trial heartbeat: a running trial records one every `interval` seconds; one silent for
    `grace` seconds is failed by the next worker that looks, and queued again with its parameters at most
    `retries` times (None: always)."""

    interval: int = 60
    grace: int = 180
    retries: int | None = 2


def counted(trials) -> int:
    """Trials that count toward `--trials`: all but those that ended without an `error` of their own
    (their worker died or was interrupted) and were queued again: the retry counts instead."""
    from optuna.trial import TrialState

    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return sum(1 for t in trials
               if not (t.state == TrialState.FAIL and "error" not in t.user_attrs and t.number in retried))


@contextlib.contextmanager
def quiet():
    """Optuna's heartbeat API is marked experimental, and its ask() warns outside Study.optimize (whose loop
    a sweep worker is: fail stale trials, ask, beat while the trial runs, tell): say nothing."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


# Attributes of a trial that belong to one attempt at it: a retry starts without them.
ATTEMPT_ATTRS = ("worker", "heartbeat", "mlflow_run_id", "error")


class StaleTrial:
    """The storage's `heartbeat_stale_trial_callback`: a trial Optuna has just failed for its silent heartbeat
    (its worker killed, its machine gone) gets its MLflow run marked KILLED (tag optuna.state=FAIL), and
    goes back in the queue with its parameters through Optuna's RetryHeartbeatStaleTrialCallback (the
    RetryFailedTrialCallback of Optuna < 4.9), at most `retries` times."""

    def __init__(self, tracking_uri: str | None, retries: int | None):
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        self.tracking_uri = tracking_uri
        with quiet():
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=retries)

    def __call__(self, study, trial) -> None:
        from vimpo_bench.runs import tracking

        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and self.tracking_uri:
            with contextlib.suppress(Exception):  # a run in a store out of reach: the trial is queued all the same
                handle = tracking.MlflowTracker.attach(run_id, self.tracking_uri)
                handle.set_tags({"optuna.state": "FAIL", "optuna.error": "its worker stopped (no heartbeat)"})
                handle.finish("KILLED")
        fresh = copy.copy(trial)
        fresh.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        with quiet():
            self.retry(study, fresh)


# A RUNNING trial without the `heartbeat` attribute its worker records right after Optuna's ask (with its
# first heartbeat) this long after it started was orphaned in between, or by a command of a version before
# heartbeats: Optuna's heartbeat cannot judge a trial that never beat, so these are failed here.
ORPHAN_AFTER_S = 300


def fail_stale(optuna_study, storage) -> None:
    """Fail the study's trials whose worker is gone, each queued again by the storage's StaleTrial: those
    whose heartbeat is older than the grace period (Optuna's fail_stale_trials), and orphans that never beat."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    with quiet():
        optuna.storages.fail_stale_trials(optuna_study)
    callback = storage.get_heartbeat_stale_trial_callback()
    study_id, now = storage.get_study_id_from_name(optuna_study.study_name), datetime.now()
    for t in optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "heartbeat" in t.user_attrs or t.datetime_start is None:
            continue
        if (now - t.datetime_start).total_seconds() > ORPHAN_AFTER_S:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            with contextlib.suppress(UpdateFinishedTrialError):  # another worker failed it first
                if storage.set_trial_state_values(trial_id, state=TrialState.FAIL) and callback:
                    callback(optuna_study, storage.get_trial(trial_id))


@contextlib.contextmanager
def beating(storage, trial_id: int, interval: int):
    """Record the trial's heartbeat every `interval` seconds while the block runs, as Study.optimize does
    (the first one is recorded at ask). A failed write (the server briefly out of reach) is retried at the
    next beat instead of ending the thread: only a dead worker should go silent."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@functools.lru_cache(maxsize=4)
def _engine(url: str):
    import sqlalchemy

    return sqlalchemy.create_engine(url, pool_size=1, max_overflow=0)


@contextlib.contextmanager
def study_lock(url: str, optuna_name: str):
    """On PostgreSQL, one command at a time, on any machine, counts and asks: a transaction-level advisory
    lock, released when the block ends (or when the server drops a dead machine's idle transaction after
    two minutes). Other storages: the worker processes' own lock is all (sqlite lives on one machine)."""
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    conn = _engine(url).connect()
    try:
        conn.execute(sqlalchemy.text("SET LOCAL idle_in_transaction_session_timeout = '120s'"))
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(optuna_name.encode())})
        yield
    finally:
        with contextlib.suppress(Exception):  # ending the transaction releases the lock (gone with a dropped one)
            conn.rollback()
        conn.close()


WAIT = "wait"  # next_trial: nothing to ask for yet, but trials of other workers are still running


def next_trial(optuna_study, storage, budget: int, interval: int):
    """(trial, its storage id) to run next, Optuna's ask (a queued retry first, else a new trial), with its
    first heartbeat and its worker recorded; None when the study holds `budget` counted trials and none
    runs; WAIT while the budget is full but others still run (one may die and come back as a retry)."""
    from optuna.trial import TrialState

    fail_stale(optuna_study, storage)
    trials = optuna_study.get_trials(deepcopy=False)
    if counted(trials) >= budget and not any(t.state == TrialState.WAITING for t in trials):
        return WAIT if any(t.state == TrialState.RUNNING for t in trials) else None
    with quiet():
        trial = optuna_study.ask()
    study_id = storage.get_study_id_from_name(optuna_study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    storage.record_heartbeat(trial_id)
    trial.set_user_attr("heartbeat", interval)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    return trial, trial_id
