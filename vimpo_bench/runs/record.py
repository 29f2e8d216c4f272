"""A training run's request, record and ownership, the same for both engines (`engines.native` and
`engines.trl_engine`): the run opened in MLflow and tagged before its first step, the config and
provenance recorded, the owner lock that tells other processes the run is live, and the status it
ends with. Errors: TrainingError (training cannot go on), EarlyStop (a pruned trial)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vimpo_bench.runs import locks
from vimpo_bench.runs.checkpoints import check_checkpoint, find_checkpoint, remove_partial_saves, saved_config
from vimpo_bench.config import Config
from vimpo_bench.runs.provenance import git_state, load_average, machine_state, package_versions
from vimpo_bench.runs.tracking import MlflowTracker, Tracker


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, broken checkpoint); the message says where."""


class EarlyStop(Exception):
    """Raised by an `on_eval` hook to end a run early (a pruned sweep trial); the run is marked KILLED."""


@dataclass
class TrainResult:
    run_id: str | None
    steps: int
    initial: dict[str, float]
    final: dict[str, float]
    wall_seconds: float
    checkpoint: str | None
    history: list[dict[str, float]] = field(default_factory=list)
    identity: dict[str, str] = field(default_factory=dict)  # provenance.run_identity: machine, start checksum

    def summary(self) -> dict:
        return {
            "run_id": self.run_id,
            "steps": self.steps,
            "split": "validation",
            "initial_greedy_accuracy": self.initial.get("val/greedy_accuracy"),
            "initial_sampled_accuracy": self.initial.get("val/sampled_accuracy"),
            "final_greedy_accuracy": self.final.get("val/greedy_accuracy"),
            "final_sampled_accuracy": self.final.get("val/sampled_accuracy"),
            "wall_seconds": round(self.wall_seconds, 2),
            "checkpoint": self.checkpoint,
            **self.identity,
        }


Progress = Callable[[str, int, int, dict], None]  # (phase, done, total, latest metrics)


OnEval = Callable[[int, dict], None]  # (step, validation metrics) after each evaluation past step 0; may raise EarlyStop


@dataclass(frozen=True)
class RunRequest:
    """One training run as every entry asks for it (the train CLI, a study cell, a sweep trial) and every engine
    takes it (`engines.get(name).start(request)`): the config, where and how the run is recorded, and hooks.

    resume_run_id: continue that MLflow run from its last checkpoint (with the config saved there);
    tracking_uri: the MLflow store (None: $MLFLOW_TRACKING_URI, else ./mlflow.db); tags: added to the run's own
    (a `vimpo.kind` among them replaces `train`); parent_run_id: nest the run under it; stop_after: end after
    that many steps, checkpointed, as a kill would; progress(phase, done, total, metrics); on_eval(step,
    validation metrics), which may raise EarlyStop (the run ends KILLED); run_started(run_id), once the run
    exists."""

    config: Config
    resume_run_id: str | None = None
    tracking_uri: str | None = None
    tags: dict | None = None
    parent_run_id: str | None = None
    stop_after: int | None = None
    progress: Progress | None = None
    on_eval: OnEval | None = None
    run_started: Callable[[str], None] | None = None


def checkpoint_engine(run_dir: Path) -> str | None:
    """The run.engine a run's checkpoint was saved by (None: no checkpoint): a run resumes on its own engine,
    whatever the resuming command's config says."""
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        return None
    return saved_config(checkpoint).run.engine


def start_tracker(config: Config, tags: dict | None, parent_run_id: str | None, tracking_uri: str | None):
    """A new MLflow run for `config`, tagged with its kind and config hash from the start, so that a run
    failing before its first step is still found by them (both engines)."""
    run_name = config.run.run_name or f"{config.algo_name}-s{config.run.seed}-{config.hash()[:6]}"
    first_tags = {"vimpo.kind": "train", "vimpo.config_hash": config.hash(), **(tags or {})}
    return MlflowTracker.start(run_name, config.run.experiment, tags=first_tags, parent_run_id=parent_run_id,
                               tracking_uri=tracking_uri)


def train_to_status(tracker: Tracker, total_steps: int, call: Callable[[], TrainResult]) -> TrainResult:
    """Run `call()` and close the run: FINISHED once all steps are done (a `stop_after` cut leaves it
    RUNNING, to be resumed), KILLED on EarlyStop (a pruned trial) or Ctrl-C, FAILED on any other exception."""
    try:
        result = call()
    except BaseException as exc:
        try:
            tracker.finish("KILLED" if isinstance(exc, (EarlyStop, KeyboardInterrupt)) else "FAILED")
        except Exception:  # a store that cannot take the status (a full disk) must not hide why the run ended
            pass
        raise
    if result.steps >= total_steps:
        tracker.set_tags({"machine.load_end": load_average()})  # beside machine.load_start: was it quiet?
        tracker.finish("FINISHED")
    return result


OWNER_LOCK = ".owner.lock"  # in <output_dir>/<run id>/: held by the process training that run


def prepare_output_dir(root: Path) -> None:
    """Fail now, not at the first checkpoint save, when checkpoints cannot be written there; and remove the
    temporary folders of saves cut short by a kill (`.checkpoint-*` of runs whose process is gone)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise TrainingError(f"run.output_dir {root}: not writable ({exc.strerror or exc})") from None
    remove_partial_saves(root, live=lambda run_dir: locks.held(run_dir / OWNER_LOCK))


def claim_run(run_dir: Path) -> locks.OwnerLock:
    """Hold the run's owner lock for this process's life: another process then knows the run is live (the
    kernel drops the lock when this one dies, kill -9 included). A run already held is refused."""
    lock = locks.OwnerLock(run_dir / OWNER_LOCK)
    if not lock.acquire():
        raise TrainingError(f"run {run_dir.name} is being trained by another process ({locks.owner(lock.path)})")
    return lock


def run_is_live(output_dir: str | Path, run_id: str) -> bool:
    """Whether a process is training this run now (it holds the run's owner lock)."""
    return locks.held(Path(output_dir) / run_id / OWNER_LOCK)


def record_run(tracker: Tracker, config: Config, task, tags: dict | None = None,
               identity: dict | None = None) -> None:
    """Params = the resolved config and `identity` (`provenance.run_identity`: the machine and the starting
    weights' checksum, so that runs of one config on two machines are told apart); tags = provenance (+ the
    caller's); artifact = config.yaml (house rule 7)."""
    from vimpo_bench.grading import grading_version

    tracker.log_params({**config.to_dict(), **(identity or {})})
    tracker.set_tags({
        "vimpo.kind": "train",
        "vimpo.algo": config.algo_name,
        "vimpo.seed": config.run.seed,
        "vimpo.task": config.task.name,
        "vimpo.config_hash": config.hash(),
        "grader_version": grading_version(config.task.name),
        "data.train_sha256": task.data_hash("train"),
        "data.validation_sha256": task.data_hash("validation"),
        "data.test_sha256": task.data_hash("test"),
        **git_state(),
        **package_versions(),
        **machine_state(),
        **(tags or {}),
    })
    tracker.log_dict(config.to_dict(), "config.yaml")


def open_run(config: Config, resume_run_id, tags, parent_run_id, tracking_uri):
    """(tracker, owner lock, checkpoint or None): a new MLflow run for `config`, or `resume_run_id` reopened with
    its last checkpoint; the caller holds the lock while it trains. A resume that cannot go on (no checkpoint
    in this run.output_dir, a corrupt one, no such MLflow run) is refused before anything changes: no folder
    is made and the run's record stays as it was."""
    output = Path(config.run.output_dir)
    if not resume_run_id:
        prepare_output_dir(output)
        tracker = start_tracker(config, tags, parent_run_id, tracking_uri)
        return tracker, claim_run(output / tracker.run_id), None  # live while this process trains it
    run_dir = output / resume_run_id
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        where = run_dir.resolve()
        raise TrainingError(f"cannot resume run {resume_run_id}: no checkpoint in {where} (resume from the folder "
                            f"it was trained in, or set run.output_dir to the folder holding {resume_run_id}/)")
    prepare_output_dir(output)
    owner = claim_run(run_dir)
    try:
        check_checkpoint(checkpoint)  # under the lock: no other process is saving it
        tracker = MlflowTracker.resume(resume_run_id, tracking_uri)
    except BaseException:
        owner.release()
        raise
    return tracker, owner, checkpoint
