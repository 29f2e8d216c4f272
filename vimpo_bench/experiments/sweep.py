"""Optuna sweeps over a study's hyperparameters; each trial is a training run nested in MLflow.

The study file declares the ranges (built-in defaults below cover the usual names):

    study:
      sweep:
        metric: val/sampled_accuracy         # the training run's evaluations on the VALIDATION split
        direction: maximize
        params:
          beta: {key: algo.beta, low: 0.005, high: 0.5, log: true}
          adv:  {key: algo.advantage, choices: [implied, mc]}
        pruner: {kind: median, n_startup_trials: 2, n_warmup_steps: 0}
        sampler: {kind: tpe, seed: 0}
        heartbeat: {interval: 60, grace: 180, retries: 2}   # seconds; docs/sweeps.md

Every held-out evaluation during training reports its value to the trial, so the pruner can stop a
bad trial early. The Optuna study lives in a SQLAlchemy storage (a sqlite file by default; PostgreSQL
for several machines): running the same command again continues it, and `--trials` counts every
trial of the study, on any machine. "Count, then ask" runs under a lock (between the worker processes
of a command, and on PostgreSQL between commands on any machine), so no more than `--trials` start.
A dead worker's trial is found by Optuna's heartbeat on any machine and queued again (docs/sweeps.md).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from vimpo_bench import faults
from vimpo_bench.config import ConfigError, clip, coerce, short
from vimpo_bench.experiments.study import Study
from vimpo_bench.experiments.sweep_trials import (
    WAIT,
    Heartbeat,
    StaleTrial,
    beating,
    next_trial,
    quiet,
    study_lock,
)
from vimpo_bench.runs import locks

DEFAULT_STORAGE = "sqlite:///optuna.db"
# Sweeps tune on the validation split, never on the test problems a study then reports.
METRICS = ("val/sampled_accuracy", "val/greedy_accuracy")
# name -> its config key and range, used unless the study file declares the name itself
BUILTIN_PARAMS = {
    "beta": {"key": "algo.beta", "low": 0.005, "high": 0.5, "log": True},
    "lr": {"key": "optim.lr", "low": 1e-5, "high": 1e-3, "log": True},
    "value_scale": {"key": "algo.value_scale", "low": 0.05, "high": 5.0, "log": True},
    "value_coef": {"key": "algo.value_coef", "low": 0.5, "high": 20.0, "log": True},
    # the clip range is symmetric here: both bounds move together (DAPO's clip-higher is its own option)
    "clip": {"key": ["algo.eps_low", "algo.eps_high"], "low": 0.1, "high": 0.4, "log": False},
}
PARAM_FIELDS = ("key", "low", "high", "log", "step", "choices")
SWEEP_FIELDS = ("metric", "direction", "params", "pruner", "sampler", "heartbeat")
HEARTBEAT_FIELDS = ("interval", "grace", "retries")
PRUNERS = ("median", "percentile", "threshold", "none")


@dataclass(frozen=True)
class Param:
    name: str
    keys: tuple[str, ...]
    """The config keys the suggested value is written to (several move together, e.g. both clip bounds)."""
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        is_int = isinstance(self.low, int) and isinstance(self.high, int) and not self.log and self.step is None
        if is_int:
            return trial.suggest_int(self.name, self.low, self.high)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def assign(self, value: Any) -> dict[str, Any]:
        """Dotted config key -> value for each of the parameter's keys."""
        return {key: value for key in self.keys}

    @property
    def key(self) -> str:
        """The keys as shown to a user: `algo.eps_low=algo.eps_high` when several move together."""
        return "=".join(self.keys)


@dataclass
class SweepSpec:
    metric: str = "val/sampled_accuracy"
    direction: str = "maximize"
    pruner: dict = field(default_factory=lambda: {"kind": "median"})
    sampler: dict = field(default_factory=lambda: {"kind": "tpe", "seed": None})
    heartbeat: Heartbeat = field(default_factory=Heartbeat)


# ------------------------------------------------------------------------------------------ parsing


def sweep_spec(study: Study) -> SweepSpec:
    where = f"{study.path}: study.sweep"
    raw = study.sweep
    unknown = sorted(set(raw) - set(SWEEP_FIELDS), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(SWEEP_FIELDS)}")
    spec = SweepSpec(
        metric=coerce(raw.get("metric", "val/sampled_accuracy"), str, f"{where}.metric"),
        direction=coerce(raw.get("direction", "maximize"), str, f"{where}.direction"),
        pruner={"kind": "median", **coerce(raw.get("pruner") or {}, dict, f"{where}.pruner")},
        sampler={"kind": "tpe", "seed": None, **coerce(raw.get("sampler") or {}, dict, f"{where}.sampler")},
        heartbeat=_heartbeat(raw.get("heartbeat"), f"{where}.heartbeat"),
    )
    if spec.metric not in METRICS:
        raise ConfigError(f"{where}.metric: {short(spec.metric)} is not a held-out metric; valid: {', '.join(METRICS)}")
    if spec.direction not in ("maximize", "minimize"):
        raise ConfigError(f"{where}.direction: {short(spec.direction)} is not one of maximize, minimize")
    make_pruner(spec, where)
    make_sampler(spec, 0, where)
    return spec


def _heartbeat(raw: Any, where: str) -> Heartbeat:
    raw = coerce(raw or {}, dict, where)
    unknown = sorted(set(raw) - set(HEARTBEAT_FIELDS), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(HEARTBEAT_FIELDS)}")
    default = Heartbeat()
    interval = coerce(raw.get("interval", default.interval), int, f"{where}.interval")
    grace = coerce(raw.get("grace", default.grace), int, f"{where}.grace")
    retries = coerce(raw.get("retries", default.retries), int | None, f"{where}.retries")
    if interval < 1 or grace <= interval:
        raise ConfigError(f"{where}: needs 1 <= interval < grace (seconds), got interval {interval}, grace {grace}")
    if retries is not None and retries < 0:
        raise ConfigError(f"{where}.retries: must be >= 0 (or null: no limit), got {retries}")
    return Heartbeat(interval, grace, retries)


def resolve_params(study: Study, names: list[str]) -> list[Param]:
    """The named parameters with their ranges (the study file's, else the built-in ones), checked:
    the key must be a config key that accepts both ends of the range."""
    where = f"{study.path}: study.sweep.params"
    declared = coerce(study.sweep.get("params") or {}, dict, where)
    if not names:
        raise ConfigError("name at least one parameter to sweep, e.g. `vimpo-bench sweep beta`")
    if len(set(names)) != len(names):
        raise ConfigError(f"a parameter is named twice: {' '.join(names)}")
    params = []
    for name in names:
        if name in declared:
            raw, here = declared[name], f"{where}.{name}"
        elif name in BUILTIN_PARAMS:
            raw, here = BUILTIN_PARAMS[name], f"built-in parameter {name}"
        else:
            known = sorted(set(declared) | set(BUILTIN_PARAMS), key=str)
            raise ConfigError(f"unknown parameter {short(name)}: declare it under study.sweep.params in {study.path} "
                              f"(known: {', '.join(known)})")
        params.append(_param(name, raw, here))
    for p in params:  # both ends of each range must make a valid config
        for value in ([p.low, p.high] if p.choices is None else list(p.choices)):
            study.base_config(p.assign(value), f"sweep parameter {p.name} ({p.key}={value})")
    return params


def _param(name: str, raw: Any, where: str) -> Param:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a mapping {{key, low, high[, log]}} or {{key, choices}}, got {short(raw)}")
    unknown = sorted(set(raw) - set(PARAM_FIELDS), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(PARAM_FIELDS)}")
    key = raw.get("key", name)
    keys = tuple(key) if isinstance(key, list) else (key,)
    if not keys or not all(isinstance(k, str) and "." in k for k in keys):
        raise ConfigError(f"{where}.key: a config key such as algo.beta (or a list of them), got {short(key)}")
    if "choices" in raw:
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: a non-empty list, got {short(choices)}")
        return Param(name, keys, choices=tuple(choices))
    if "low" not in raw or "high" not in raw:
        raise ConfigError(f"{where}: needs low and high (or choices)")
    low, high = (_number(raw[k], f"{where}.{k}") for k in ("low", "high"))
    for k, value in (("low", low), ("high", high)):
        if not math.isfinite(value):
            raise ConfigError(f"{where}.{k}: must be a finite number, got {value}")
    log = coerce(raw.get("log", False), bool, f"{where}.log")
    if not low < high:
        raise ConfigError(f"{where}: empty range: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
    step = None if raw.get("step") is None else coerce(raw["step"], float, f"{where}.step")
    if step is not None and not (math.isfinite(step) and step > 0):
        raise ConfigError(f"{where}.step: must be finite and > 0, got {step}")
    return Param(name, keys, low, high, log, step)


def _number(value: Any, where: str) -> int | float:
    """An int stays an int (an integer parameter); anything else must read as a float."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return coerce(value, float, where)


def make_pruner(spec: SweepSpec, where: str = "study.sweep"):
    import optuna

    opts = {k: v for k, v in spec.pruner.items() if k != "kind"}
    kind = spec.pruner["kind"]
    classes = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
               "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}
    if kind not in classes:
        raise ConfigError(f"{where}.pruner.kind: {short(kind)} is not one of {', '.join(PRUNERS)}")
    try:
        return classes[kind](**opts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.pruner: {exc}") from None


def make_sampler(spec: SweepSpec, worker: int, where: str = "study.sweep"):
    import optuna

    opts = {k: v for k, v in spec.sampler.items() if k != "kind"}
    seed = opts.pop("seed", None)
    if seed is not None:
        seed = int(seed) + worker  # each worker draws its own sequence
    classes = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    kind = spec.sampler["kind"]
    if kind not in classes:
        raise ConfigError(f"{where}.sampler.kind: {short(kind)} is not one of {', '.join(classes)}")
    try:
        return classes[kind](seed=seed, **opts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.sampler: {exc}") from None


# ------------------------------------------------------------------------------------------ storage


def redact(url: str) -> str:
    """The URL with its password hidden (for logs and tags)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def make_storage(url: str, heartbeat: Heartbeat | None = None, tracking_uri: str | None = None):
    """An Optuna RDB storage for any SQLAlchemy URL; a bad URL or an unreachable server is a ValueError.
    With `heartbeat`, the storage records and judges trial heartbeats, and a stale trial goes to
    `StaleTrial` (its MLflow run in `tracking_uri` marked KILLED, the trial queued again)."""
    import optuna
    import sqlalchemy.exc

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    beat = {} if heartbeat is None else {"heartbeat_interval": heartbeat.interval, "grace_period": heartbeat.grace,
                                         "heartbeat_stale_trial_callback": StaleTrial(tracking_uri, heartbeat.retries)}
    # Workers creating a new sqlite storage at once race in its table creation: one at a time on this machine.
    lock_file = url[len("sqlite:///"):] + ".lock" if url.startswith("sqlite:///") else None
    for attempt in range(3):
        try:
            with locks.file_lock(lock_file) if lock_file else contextlib.nullcontext():
                with quiet():
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **beat)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            # another process (another machine, or one not taking the lock) was creating the tables at the
            # same moment: try again; any other operational error is the user's to fix
            racing = not isinstance(exc, sqlalchemy.exc.OperationalError) or "already exists" in str(exc)
            if attempt == 2 or not racing:
                lines = str(exc).strip().splitlines()
                raise ValueError(f"--storage {redact(url)}: {lines[0] if lines else type(exc).__name__}") from None
            time.sleep(1 + attempt)
        except (sqlalchemy.exc.SQLAlchemyError, ModuleNotFoundError, ValueError, ImportError) as exc:
            lines = str(exc).strip().splitlines()
            raise ValueError(f"--storage {redact(url)}: {lines[0] if lines else type(exc).__name__}") from None
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------ trials


@dataclass
class SweepJob:
    """Everything a worker needs (picklable: worker processes are spawned)."""

    study: Study
    params: list[Param]
    spec: SweepSpec
    trials: int
    storage: str
    optuna_name: str
    parent_run_id: str
    tracking_uri: str
    deadline: float | None  # time.time() after which no trial starts
    threads: int | None = None


def run_trial(job: SweepJob, trial, progress=None) -> None:
    """Train one trial's config, reporting each held-out evaluation; tell Optuna how it ended."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from vimpo_bench.engines import start
    from vimpo_bench.runs import tracking
    from vimpo_bench.runs.record import EarlyStop, RunRequest

    values = {p.name: p.suggest(trial) for p in job.params}
    assigned = {key: value for p in job.params for key, value in p.assign(values[p.name]).items()}
    config = job.study.base_config(assigned, f"trial {trial.number}")
    config.run.run_name = f"{job.optuna_name}#{trial.number}"
    if job.threads and config.run.threads is None:
        config.run.threads = job.threads
    tags = {"vimpo.kind": "sweep", "vimpo.study": job.study.name, "vimpo.sweep": job.optuna_name,
            "optuna.study": job.optuna_name, "optuna.trial": trial.number, "optuna.state": "RUNNING",
            **{f"sweep.{k}": v for k, v in values.items()}}
    reported: dict[int, float] = {}
    run_id: list[str] = []

    def on_eval(step: int, metrics: dict) -> None:
        reported[step] = metrics[job.spec.metric]
        trial.report(reported[step], step)
        if trial.should_prune():
            raise EarlyStop(f"pruned at step {step}")

    def started(rid: str) -> None:
        run_id.append(rid)
        trial.set_user_attr("mlflow_run_id", rid)

    state, value, error = TrialState.COMPLETE, None, None
    try:
        result = start(RunRequest(config, progress=progress, tracking_uri=job.tracking_uri, tags=tags,
                                  parent_run_id=job.parent_run_id, on_eval=on_eval, run_started=started))
        value = result.final[job.spec.metric]
    except EarlyStop:
        state = TrialState.PRUNED
        value = reported[max(reported)]
    except KeyboardInterrupt:  # interrupted, not failed: queued again at once, as a dead worker's trial is
        with contextlib.suppress(Exception), quiet():
            frozen = trial.study.tell(trial, state=TrialState.FAIL)
            StaleTrial(job.tracking_uri, job.spec.heartbeat.retries)(trial.study, frozen)
        raise
    except Exception as exc:
        state, lines = TrialState.FAIL, str(exc).strip().splitlines()
        error = clip(f"{type(exc).__name__}: {lines[0] if lines else ''}")
    handle = tracking.MlflowTracker.attach(run_id[0], job.tracking_uri) if run_id else None
    if handle:
        handle.set_tags({"optuna.state": state.name, **({"optuna.error": error} if error else {})})
        if value is not None:
            handle.log_metrics({"sweep/objective": value}, step=max(reported) if reported else config.optim.steps)
    try:
        if error:
            trial.set_user_attr("error", error)
        # A pruned trial keeps its last reported value in Optuna without being told it again.
        trial.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    except UpdateFinishedTrialError:  # silent past the grace period (a stalled machine): failed and queued again
        if handle:
            handle.set_tags({"optuna.state": "FAIL", "optuna.error": "heartbeat lapsed; the trial was queued again"})


def worker(job: SweepJob, worker_index: int, lock=None, progress=None, parent_pid: int | None = None) -> None:
    """Ask for and run trials, keeping each one's heartbeat, until the study holds `job.trials` counted
    trials and none runs, or the deadline passes (or, in a worker process, its command is gone: an orphan
    finishes its trial but starts no other). While the budget is full but other workers' trials still run,
    wait: one whose worker dies comes back as a retry after the grace period."""
    import optuna

    beat = job.spec.heartbeat
    storage = make_storage(job.storage, beat, job.tracking_uri)
    optuna_study = optuna.load_study(study_name=job.optuna_name, storage=storage,
                                     sampler=make_sampler(job.spec, worker_index), pruner=make_pruner(job.spec))
    guard = lock if lock is not None else contextlib.nullcontext()
    while True:
        if job.deadline and time.time() > job.deadline:
            return
        if parent_pid is not None and os.getppid() != parent_pid:
            return
        with guard, study_lock(job.storage, job.optuna_name):
            asked = next_trial(optuna_study, storage, job.trials, beat.interval)
        if asked is None:
            return
        if asked is WAIT:
            time.sleep(min(beat.interval, 2))  # cheap: two queries; ends soon after the last trial
            continue
        trial, trial_id = asked
        with beating(storage, trial_id, beat.interval):
            faults.point("trial-asked")
            run_trial(job, trial, progress)


def _worker_process(job: SweepJob, worker_index: int, lock) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker(job, worker_index, lock, parent_pid=os.getppid())


@dataclass
class SweepResult:
    optuna_study: str
    storage: str
    parent_run_id: str
    trials: int
    states: dict[str, int]
    best: dict[str, Any] | None

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


SweepProgress = Callable[[int, int, float | None], None]  # (trials ended, trials wanted, best value so far)


def plan_sweep(study: Study, param_names: list[str], trials: int | None = None,
               storage: str | None = None) -> dict[str, Any]:
    """What `sweep` would do, checked as a run checks it, and what the storage holds already; runs nothing and
    creates no storage (a sqlite file that does not exist is read as empty)."""
    import optuna

    spec = sweep_spec(study)
    params = resolve_params(study, param_names)
    trials = trials if trials is not None else study.budget.trials
    if trials is None or trials < 1:
        raise ConfigError(f"give --trials N >= 1 (or study.budget.trials in {study.path})")
    url = storage or DEFAULT_STORAGE
    name = f"{study.name}:{'+'.join(param_names)}"
    held: dict[str, int] = {}
    local = url.startswith("sqlite:///") and url != "sqlite:///:memory:"
    if not local or Path(url.removeprefix("sqlite:///")).is_file():
        try:
            stored = optuna.load_study(study_name=name, storage=make_storage(url, spec.heartbeat))
            for trial in stored.get_trials(deepcopy=False):
                held[trial.state.name] = held.get(trial.state.name, 0) + 1
        except KeyError:  # no such study in that storage yet
            pass
    return {"optuna_study": name, "storage": redact(url), "metric": spec.metric, "direction": spec.direction,
            "params": {p.name: _describe(p) for p in params}, "trials": trials, "held": held,
            "to_run": max(trials - sum(n for s, n in held.items() if s in ("COMPLETE", "PRUNED")), 0),
            "steps": study.base_config().optim.steps}


def run_sweep(
    study: Study,
    param_names: list[str],
    trials: int | None = None,
    storage: str | None = None,
    workers: int = 1,
    tracking_uri: str | None = None,
    progress: SweepProgress | None = None,
    train_progress=None,
) -> SweepResult:
    """Create or continue the Optuna study `<study>:<params>` and run trials until it holds `trials`."""
    import optuna

    from vimpo_bench.runs import tracking

    spec = sweep_spec(study)
    params = resolve_params(study, param_names)
    trials = trials if trials is not None else study.budget.trials
    if trials is None or trials < 1:
        raise ConfigError(f"give --trials N >= 1 (or study.budget.trials in {study.path})")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    tracking_uri = tracking_uri or tracking.default_tracking_uri()
    url = storage or DEFAULT_STORAGE
    optuna_name = f"{study.name}:{'+'.join(param_names)}"
    optuna_study = optuna.create_study(storage=make_storage(url), study_name=optuna_name,
                                       direction=spec.direction, load_if_exists=True)
    if optuna_study.direction.name.lower() != spec.direction:
        raise ConfigError(f"{study.path}: study.sweep.direction is {spec.direction} but the stored study "
                          f"{optuna_name!r} maximizes/minimizes the other way; use another --storage")
    parent_run_id = _parent_run(study, optuna_study, optuna_name, url, params, spec, tracking_uri)
    deadline = time.time() + 60 * study.budget.minutes if study.budget.minutes else None
    job = SweepJob(study, params, spec, trials, url, optuna_name, parent_run_id, tracking_uri, deadline,
                   threads=max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None)

    def report() -> None:
        if progress:
            ended = [t for t in optuna_study.get_trials(deepcopy=False) if t.state.is_finished()]
            progress(min(len(ended), trials), trials, _best_value(optuna_study))

    report()
    if workers == 1:
        worker(job, 0, None, train_progress)
    else:
        ctx = get_context("spawn")
        lock = ctx.Lock()
        procs = [ctx.Process(target=_worker_process, args=(job, i, lock)) for i in range(workers)]
        for p in procs:
            p.start()
        try:
            while any(p.is_alive() for p in procs):
                report()
                for p in procs:
                    p.join(timeout=2.0 / workers)
        except BaseException:
            for p in procs:
                p.terminate()
            raise
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            raise RuntimeError(f"{len(bad)} sweep worker process(es) exited with code(s) {bad}")
    report()
    result = summarize(optuna_study, url, parent_run_id, tracking_uri)
    handle = tracking.MlflowTracker.attach(parent_run_id, tracking_uri)
    handle.log_dict(result.summary(), "sweep.json")
    if result.best:
        handle.log_metrics({"sweep/best_objective": result.best["value"]}, step=result.best["trial"])
    handle.finish("FINISHED")
    return result


def _best_value(optuna_study) -> float | None:
    try:
        return optuna_study.best_value
    except ValueError:  # no complete trial yet
        return None


def summarize(optuna_study, url: str, parent_run_id: str, tracking_uri: str) -> SweepResult:
    states: dict[str, int] = {}
    all_trials = optuna_study.get_trials(deepcopy=False)
    for t in all_trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best = None
    if _best_value(optuna_study) is not None:
        b = optuna_study.best_trial
        best = {"trial": b.number, "value": b.value, "params": dict(b.params),
                "mlflow_run_id": b.user_attrs.get("mlflow_run_id")}
    return SweepResult(optuna_study.study_name, redact(url), parent_run_id, len(all_trials), states, best)


def _parent_run(study, optuna_study, optuna_name, url, params, spec, tracking_uri) -> str:
    """The sweep's parent MLflow run, recorded on the Optuna study so every machine nests under it."""
    from vimpo_bench.runs import tracking
    from vimpo_bench.runs.provenance import git_state, package_versions

    run_id = optuna_study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        try:
            tracking.MlflowTracker.resume(run_id, tracking_uri)
            return run_id
        except Exception:  # recorded in another MLflow store: start one here
            pass
    parent = tracking.MlflowTracker.start(
        f"sweep-{optuna_name}", study.experiment,
        tags={"vimpo.kind": "study", "vimpo.study": study.name, "vimpo.sweep": optuna_name,
              "optuna.storage": redact(url), "vimpo.study_file": str(study.path), **git_state(),
              **package_versions()},
        tracking_uri=tracking_uri)
    parent.log_params({"sweep.metric": spec.metric, "sweep.direction": spec.direction,
                       "sweep.pruner": spec.pruner.get("kind"),
                       **{f"sweep.param.{p.name}": _describe(p) for p in params}})
    optuna_study.set_user_attr("mlflow_parent_run_id", parent.run_id)
    return parent.run_id


def _describe(p: Param) -> str:
    if p.choices is not None:
        return f"{p.key} in {list(p.choices)}"
    return f"{p.key} in [{p.low}, {p.high}]{' log' if p.log else ''}"
