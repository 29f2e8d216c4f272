"""Where a study's cells run: one after the other in this process, in N local worker processes, or as Ray
tasks on a cluster (`vimpo-bench study run --executor local|ray`).

Every executor goes through the one loop, `drive`, in the process that runs the study (the driver): it
starts cells while the executor has room and the budget's minutes last, and reports each outcome once.
The bookkeeping is `vimpo_bench.experiments.study`'s and the same for all (this module knows nothing of studies; it
is handed two functions): a worker calls `run` (`study.run_cell`, which opens, tags and closes the cell's
MLflow runs), and when a Ray worker dies under a cell (kill -9, out of memory, its node gone), the driver
calls `replan`, which plans that cell again from the store exactly as a rerun of the study would
(`study.plan`: a run left RUNNING without a live owner is superseded and marked KILLED, or resumed from its
checkpoint; a cell found done is not run again), and starts it again, at most `retries` times.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from vimpo_bench import net
from vimpo_bench.config import clip

RETRIES = 2
"""Times a Ray cell whose worker died is started again before it is reported failed."""
POLL_SECONDS = 10.0
"""How often the Ray driver looks for room that nodes joining the cluster add."""
FORWARDED_ENV = ("VIMPO_BENCH_", "MLFLOW_", "HF_")
"""Environment variables of the driver that Ray workers get too (the model cache, the MLflow server's
credentials, the Hugging Face cache and token); set others in the environment of `ray start` on each node."""
INSTALL = "pip install 'vimpo-bench[ray]'"


CellStatus = Callable[[int, int], None]  # (cells running now, cells started again after their worker died)
CellRun = Callable[..., "CellOutcome"]  # run(planned, threads=None, train_progress=None): `study.run_cell`


@dataclass
class CellOutcome:
    index: int
    label: str
    status: str
    """done | skipped | failed | not started (the budget's minutes ran out)."""
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    wall_seconds: float = 0.0
    attempts: int = 0
    """Times the cell was started by this command (more than 1: its worker died and it was started again)."""


def error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return clip(f"{type(exc).__name__}: {text[0] if text else ''}")


class ExecutorError(ValueError):
    """An executor cannot run (Ray missing, no cluster at the address, no node with room for a cell)."""


class WorkerLost(Exception):
    """The process running a cell died under it: the cell may be started again."""


class Inline:
    """One cell at a time in this process (`--workers 1`); `train_progress` sees its training steps."""

    retries = 0

    def __init__(self, train_progress=None):
        self.train_progress = train_progress

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def capacity(self) -> int:
        return 1

    def submit(self, run: CellRun, planned: Any) -> Future:
        future: Future = Future()
        future.set_result(run(planned, train_progress=self.train_progress))
        return future

    def wait(self, handles: list) -> list:
        return list(wait(handles, return_when=FIRST_COMPLETED)[0])

    def result(self, handle: Future) -> CellOutcome:
        return handle.result()  # a pool's dead worker raises here: the cell is failed, not retried


class LocalPool(Inline):
    """`workers` cells at once, each in its own process on this machine (torch threads split between them)."""

    def __init__(self, workers: int):
        super().__init__()
        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self):
        self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"))
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown()

    def capacity(self) -> int:
        return self.workers

    def submit(self, run: CellRun, planned: Any) -> Future:
        return self.pool.submit(run, planned, threads=self.threads)


def local(workers: int = 1, train_progress=None) -> Inline:
    """`--executor local`: this process for one worker, else a pool of `workers` processes."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    return Inline(train_progress) if workers == 1 else LocalPool(workers)


def import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


class RayExecutor:
    """Each cell a Ray task taking `num_cpus` CPUs and `num_gpus` GPUs, on the cluster at `address` (the
    head node's HOST:PORT, as `ray start --head` prints it) or, without one, on a Ray instance started here.
    The driver submits as many cells as the live nodes have room for (rechecked as nodes join or leave).
    Ray's own retries are off: a cell whose worker died is planned again by `drive`."""

    def __init__(self, address: str | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0,
                 retries: int = RETRIES):
        if not num_cpus > 0:
            raise ExecutorError(f"--num-cpus must be > 0, got {num_cpus:g}")
        if not num_gpus >= 0:
            raise ExecutorError(f"--num-gpus must be >= 0, got {num_gpus:g}")
        self.ray = import_ray()
        self.address, self.num_cpus, self.num_gpus, self.retries = address, num_cpus, num_gpus, retries
        self.threads = max(1, int(num_cpus))
        self.where = f"the Ray cluster at {address}" if address else "a local Ray instance"

    def __enter__(self):
        if self.address:
            check_address(self.address)
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        debug, failure = bool(os.environ.get("VIMPO_BENCH_DEBUG")), None
        with _stderr_to_file() as said:  # Ray's C++ client writes a line there per retry
            try:
                self.ray.init(address=self.address or "local", runtime_env={"env_vars": env}, log_to_driver=debug,
                              logging_level=logging.WARNING)
            except Exception as exc:
                failure = exc
        if debug:
            sys.stderr.write(said[0])
        if failure is not None:
            hint = (" (it uses token authentication: set RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or "
                    "~/.ray/auth_token)") if "InvalidAuthToken" in said[0] else ""
            raise ExecutorError(f"cannot start or join {self.where}: {error_line(failure)}{hint}")
        if not self._room():
            nodes = "; ".join(f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPU, "
                              f"{n['Resources'].get('GPU', 0):g} GPU" for n in self._nodes()) or "none alive"
            self.ray.shutdown()
            raise ExecutorError(f"no node of {self.where} has room for a cell ({self.num_cpus:g} CPU, "
                                f"{self.num_gpus:g} GPU; --num-cpus/--num-gpus or study.resources); nodes: {nodes}")
        self.task = self.ray.remote(_in_dir)
        return self

    def __exit__(self, *exc) -> None:
        self.ray.shutdown()  # a cell still running is stopped with the job; a rerun resumes it

    def _nodes(self) -> list[dict]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def _room(self) -> int:
        """Cells the live nodes can hold at once."""
        def fits(have: dict) -> int:
            cells = int(have.get("CPU", 0) / self.num_cpus + 1e-9)
            return min(cells, int(have.get("GPU", 0) / self.num_gpus + 1e-9)) if self.num_gpus else cells

        return sum(fits(n["Resources"]) for n in self._nodes())

    def capacity(self) -> int:
        return max(1, self._room())  # with every node gone, one cell waits for a node to come back

    def submit(self, run: CellRun, planned: Any):
        task = self.task.options(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0,
                                 retry_exceptions=False, name=f"cell {planned.cell.label}")
        return task.remote(os.getcwd(), run, planned, self.threads)

    def wait(self, handles: list) -> list:
        return self.ray.wait(handles, num_returns=1, timeout=POLL_SECONDS)[0]

    def result(self, handle) -> CellOutcome:
        errors = self.ray.exceptions
        lost = (errors.WorkerCrashedError, errors.NodeDiedError, errors.OutOfMemoryError, errors.ObjectLostError)
        try:
            return self.ray.get(handle)
        except errors.RayTaskError as exc:  # run_cell raised (it reports a cell's own failures as outcomes)
            raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None
        except lost as exc:
            raise WorkerLost(error_line(exc)) from None


def _in_dir(cwd: str, run: CellRun, planned: Any, threads: int) -> CellOutcome:
    """A Ray task: `run` in the driver's working directory where this node has it (relative paths of the
    study, e.g. run.output_dir, then name the same folders as on the driver)."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    return run(planned, threads=threads)


@contextlib.contextmanager
def _stderr_to_file():
    """Send file descriptor 2 (C++ libraries' output too) to a temporary file for the block; what was
    written there is the one item of the yielded list once the block ends."""
    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+", errors="replace") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.append(sink.read())


def check_address(address: str) -> None:
    """Fail within seconds, in one line, when nothing listens at a Ray cluster address (ray.init would retry
    for a minute)."""
    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"--address {address!r}: expected HOST:PORT of the head node (`ray start --head` "
                            "prints it)")
    try:
        net.connect_any(net.resolve(host, int(port), 10.0), time.monotonic() + 10.0)
    except OSError as exc:
        raise ExecutorError(f"no Ray cluster at {address}: {exc.strerror or exc} (start one with "
                            f"`ray start --head --port {port}`)") from None


def drive(executor, todo: list, run: CellRun, replan: Callable[[Any], Any], deadline: float | None,
          finished: Callable[[CellOutcome], None], status: CellStatus | None = None) -> None:
    """Run the planned cells (`study.PlannedCell`s) on `executor`: `run(planned, threads=, train_progress=)`
    runs one in a worker, `replan(cell)` plans again a cell whose worker died. `finished` gets each cell's
    outcome once, `status` the cells running and the restarts so far whenever they change. No new cell
    starts past `deadline`."""
    queue, running, starts, restarts = list(todo), {}, {}, 0

    def report(extra: int = 0) -> None:
        if status:
            status(len(running) + extra, restarts)

    while queue or running:
        while queue and len(running) < executor.capacity():
            p = queue.pop(0)
            cell = p.cell
            if deadline and time.monotonic() > deadline:
                finished(CellOutcome(cell.index, cell.label, "not started", attempts=starts.get(cell.index, 0)))
                continue
            starts[cell.index] = starts.get(cell.index, 0) + 1
            report(extra=1)  # before submitting: Inline runs the cell in submit
            running[executor.submit(run, p)] = p
        for handle in executor.wait(list(running)) if running else []:
            cell = running.pop(handle).cell
            try:
                outcome = executor.result(handle)
            except WorkerLost as exc:
                if starts[cell.index] > executor.retries:
                    outcome = CellOutcome(cell.index, cell.label, "failed", error=f"its worker died "
                                          f"{starts[cell.index]} time(s); the last time: {exc}")
                else:
                    restarts += 1
                    again = replan(cell)
                    if again.action != "skip":
                        queue.insert(0, again)
                        report()
                        continue
                    outcome = CellOutcome(cell.index, cell.label, "done", again.run_id)  # recorded before it died
            except Exception as exc:
                outcome = CellOutcome(cell.index, cell.label, "failed", error=error_line(exc))
            outcome.attempts = starts[cell.index]
            report()
            finished(outcome)
