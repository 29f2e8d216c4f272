"""Studies: one YAML file declares a grid of training runs, how each is evaluated and the budget.

A study file is a config file (it may `extends:` another) plus a `study:` section:

    extends: tiny_demo
    study:
      description: VIMPO against GRPO and Dr. GRPO over 5 seeds
      axes:                       # the grid is the product of the axes
        algo.name: [vimpo, grpo, dr_grpo]      # a config key and its values
        run.seed: [0, 1, 2, 3, 4]
        noise:                                  # a named axis: each value sets several keys
          - {label: clean, reward.noise: none}
          - {label: flip0.2, reward.noise: symmetric, reward.p: 0.2}
      suites: [arith]             # evaluation suites run on each trained policy (`vimpo-bench eval`'s)
      eval: {limit: 500, max_new_tokens: 28}     # EvalConfig settings for them
      budget: {steps: 80, max_cells: 30, minutes: 60, trials: 20}
      resources: {num_cpus: 2, num_gpus: 1}  # what one cell takes as a Ray task (`--executor ray`)
      sweep: {...}                # ranges for `vimpo-bench sweep` (see vimpo_bench.experiments.sweep)

`run_study` trains and evaluates each cell as MLflow runs under one parent run, tags them with the
study and each axis value, skips cells already finished with the same config hash, resumes cells
that were cut short, and reports a failed cell without stopping the others. Where the cells run (this
process, local worker processes, Ray tasks on a cluster) is `vimpo_bench.experiments.executors`'.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vimpo_bench import engines
from vimpo_bench.config import (
    Config,
    ConfigError,
    check_ranges,
    clip,
    coerce,
    from_dict,
    num,
    read_study,
    set_key,
    short,
    study_path,
)
from vimpo_bench.experiments import executors
from vimpo_bench.experiments.executors import CellOutcome, CellStatus, error_line

STUDY_FIELDS = ("name", "description", "experiment", "axes", "suites", "eval", "budget", "resources", "sweep",
                "endpoint")
DONE_TAG = "vimpo.cell_status"


@dataclass(frozen=True)
class Budget:
    steps: int | None = num(None, gt=0)
    """RL steps of every cell and trial (sets optim.steps)."""
    max_cells: int | None = num(None, gt=0)
    """A grid with more cells is refused (a guard against a typo that multiplies the work)."""
    minutes: float | None = num(None, gt=0)
    """Wall-clock budget of one `study run` / `sweep` command: no new cell or trial starts after it."""
    trials: int | None = num(None, gt=0)
    """Default `--trials` of `vimpo-bench sweep`."""


@dataclass(frozen=True)
class Resources:
    num_cpus: float = num(1.0, gt=0)
    """CPU cores one cell takes as a Ray task (`--num-cpus`); its torch threads unless run.threads is set."""
    num_gpus: float = num(0.0, ge=0)
    """GPUs one cell takes as a Ray task (`--num-gpus`)."""


@dataclass(frozen=True)
class AxisValue:
    label: str
    overrides: dict[str, Any]
    """Dotted config key -> value."""


@dataclass(frozen=True)
class Axis:
    name: str
    values: tuple[AxisValue, ...]


@dataclass
class Study:
    name: str
    path: Path
    description: str
    experiment: str
    base: dict[str, Any]
    """The config overrides every cell starts from (the file and what it extends, without `study:`)."""
    axes: list[Axis]
    suites: list[str]
    eval: dict[str, Any]
    budget: Budget
    sweep: dict[str, Any]
    """The raw `study.sweep` section; `vimpo_bench.experiments.sweep` reads it."""
    endpoint: dict[str, Any] = field(default_factory=dict)
    """The pre-declared endpoints (`study.endpoint`), checked by `report.endpoint.parse_endpoint`; a
    report of the study opens with the primary one."""
    resources: Resources = field(default_factory=Resources)

    def base_config(self, overrides: dict[str, Any] | None = None, where: str = "") -> Config:
        """The base config with the budget's steps and `overrides` (dotted key -> value), validated."""
        raw = copy.deepcopy(self.base)
        if self.budget.steps is not None:
            set_key(raw, ["optim", "steps"], self.budget.steps, f"{self.path}: study.budget.steps")
        # algo.name first: switching algorithm resets its options, which later keys may set
        for key in sorted(overrides or {}, key=lambda k: k != "algo.name"):
            set_key(raw, key.split("."), overrides[key], f"{self.path}: {where or key}")
        set_key(raw, ["run", "experiment"], self.experiment, str(self.path))
        source = f"{self.path}{': ' + where if where else ''}"
        config = from_dict(raw, source)
        problem = engines.problem(config)  # refused at planning time, not when its cell comes up
        if problem:
            raise ConfigError(f"{source}: {problem}")
        return config


@dataclass
class Cell:
    index: int
    labels: dict[str, str]
    """Axis name -> the label of this cell's value."""
    config: Config

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.labels.items()) or "base"


# ------------------------------------------------------------------------------------------ parsing


def load_study(spec: str | Path) -> Study:
    """Read and check a study file (a path or a packaged study's name). Errors name the file and key."""
    path = study_path(spec)
    raw = read_study(path)
    section = raw.pop("study", None) or {}
    where = f"{path}: study"
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: must be a mapping with keys {', '.join(STUDY_FIELDS)}")
    unknown = sorted(set(section) - set(STUDY_FIELDS), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {clip(', '.join(map(str, unknown)))}; valid: {', '.join(STUDY_FIELDS)}")
    name = coerce(section.get("name", path.stem), str, f"{where}.name")
    study = Study(
        name=name,
        path=path,
        description=coerce(section.get("description", ""), str, f"{where}.description"),
        experiment=coerce(section.get("experiment", name), str, f"{where}.experiment"),
        base=raw,
        axes=parse_axes(section.get("axes") or {}, f"{where}.axes"),
        suites=parse_suites(section.get("suites") or [], f"{where}.suites"),
        eval=dict(coerce(section.get("eval") or {}, dict, f"{where}.eval")),
        budget=parse_budget(section.get("budget") or {}, f"{where}.budget"),
        resources=_parse_numbers(section.get("resources") or {}, Resources, f"{where}.resources"),
        sweep=dict(coerce(section.get("sweep") or {}, dict, f"{where}.sweep")),
        endpoint=dict(coerce(section.get("endpoint") or {}, dict, f"{where}.endpoint")),
    )
    if "'" in study.name:
        raise ConfigError(f"{where}.name: must not contain a quote, got {short(study.name)}")
    study.base_config()  # the base itself must be valid
    if study.suites:
        eval_config(study, study.suites)
    return study


def parse_axes(axes: Any, where: str) -> list[Axis]:
    if not isinstance(axes, dict):
        raise ConfigError(f"{where}: a mapping of axis name -> list of values, got {short(axes)}")
    out = []
    for name, values in axes.items():
        if values is None:  # `name: null` removes an axis inherited through `extends:`
            continue
        here = f"{where}.{clip(str(name), 80)}"
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{here}: a non-empty list of values, got {short(values)}")
        if "." in name:
            parsed = [AxisValue(_label(v), {name: v}) for v in values]
        else:
            parsed = [_named_value(v, f"{here}[{i}]") for i, v in enumerate(values)]
        labels = [v.label for v in parsed]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{here}: values must have distinct labels, got {short(labels)}")
        out.append(Axis(name, tuple(parsed)))
    return out


def _named_value(value: Any, where: str) -> AxisValue:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: an axis named without a dot takes mappings of config keys, e.g. "
                          f"{{label: flip0.1, reward.noise: symmetric, reward.p: 0.1}}; got {short(value)}")
    overrides = {k: v for k, v in value.items() if k != "label"}
    bad = [k for k in overrides if "." not in k]
    if bad:
        raise ConfigError(f"{where}: {clip(', '.join(map(str, bad)))} is not a config key (section.key)")
    label = value.get("label") or ",".join(f"{k.split('.')[-1]}={_label(v)}" for k, v in overrides.items())
    return AxisValue(str(label), overrides)


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def parse_suites(suites: Any, where: str) -> list[str]:
    from vimpo_bench import tasks

    items = suites.split(",") if isinstance(suites, str) else suites
    if not isinstance(items, list):
        raise ConfigError(f"{where}: a list of suite names, got {short(suites)}")
    if not items:
        return []
    try:
        return tasks.expand_suites([str(s) for s in items])
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_budget(budget: Any, where: str) -> Budget:
    return _parse_numbers(budget, Budget, where)


def _parse_numbers(section: Any, kind: type, where: str):
    """A `kind` (Budget, Resources: numbers only) from a study file's mapping, each number checked."""
    names = [f.name for f in fields(kind)]
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: a mapping with keys {', '.join(names)}; got {short(section)}")
    unknown = sorted(set(section) - set(names), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {clip(', '.join(map(str, unknown)))}; valid: {', '.join(names)}")
    hints = {f.name: (int if f.type.startswith("int") else float) for f in fields(kind)}
    parsed = kind(**{k: coerce(v, hints[k], f"{where}.{k}") for k, v in section.items() if v is not None})
    check_ranges(parsed, where)  # `minutes: .nan` must not switch the time budget off
    return parsed


def eval_config(study: Study, suites: list[str], config: Config | None = None):
    """The `vimpo-bench eval` settings of the study's suites (`study.eval`), checked.

    With a cell's training `config`, the final evaluation follows the cell's task: the built-in `arith`
    suite is generated with the cell's `task.options` (unless `study.eval.arith_options` names others),
    and a token budget below the cell's `rollout.max_new_tokens` is refused: it would cut answers the
    training allowed (a 4-term study evaluated with the 3-term budget scored 0 on truncated answers).
    """
    from vimpo_bench.evaluation.evaluate import EvalConfig

    where = f"{study.path}: study.eval"
    valid = [f.name for f in fields(EvalConfig) if f.name != "suites"]
    if "max_tokens" in study.eval:  # the old name: one length-limit name everywhere (rollout, eval, CLI)
        raise ConfigError(f"{where}.max_tokens is now max_new_tokens (the name rollout.max_new_tokens and "
                          "`vimpo-bench eval --max-new-tokens` use); rename it")
    unknown = sorted(set(study.eval) - set(valid), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {clip(', '.join(map(str, unknown)))}; valid: {', '.join(valid)}")
    settings = dict(study.eval)
    if config is not None and "arith" in suites and config.task.name == "arith":
        settings.setdefault("arith_options", dict(config.task.options))
    try:
        resolved = EvalConfig(suites=",".join(suites), **settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if config is not None and resolved.max_new_tokens < config.rollout.max_new_tokens:
        raise ConfigError(f"{where}.max_new_tokens: {resolved.max_new_tokens} is below rollout.max_new_tokens "
                          f"{config.rollout.max_new_tokens} of cell {config.run.run_name}: the final evaluation "
                          "would cut answers the training allowed; raise it")
    return resolved


# ------------------------------------------------------------------------------------------- grid


def expand(study: Study) -> list[Cell]:
    """Every cell of the grid (the product of the axes, first axis slowest), each config validated."""
    combos = list(itertools.product(*(axis.values for axis in study.axes)))
    if study.budget.max_cells is not None and len(combos) > study.budget.max_cells:
        raise ConfigError(f"{study.path}: study.axes: {len(combos)} cells exceed study.budget.max_cells "
                          f"({study.budget.max_cells})")
    cells, seen = [], {}
    for index, combo in enumerate(combos):
        labels = {axis.name: value.label for axis, value in zip(study.axes, combo, strict=True)}
        overrides: dict[str, Any] = {}
        for value in combo:
            overrides.update(value.overrides)
        where = "study.axes " + (",".join(f"{k}={v}" for k, v in labels.items()) or "(base)")
        config = study.base_config(overrides, where)
        config.run.run_name = f"{study.name}/" + ("-".join(labels.values()) or "base")
        cell = Cell(index, labels, config)
        if study.suites:
            eval_config(study, study.suites, config)  # the cell's final evaluation is valid too
        digest = config.hash()
        if digest in seen:
            raise ConfigError(f"{study.path}: study.axes: cells {seen[digest].label} and {cell.label} have the "
                              "same config (an axis value changes nothing)")
        seen[digest] = cell
        cells.append(cell)
    return cells


def cell_tags(study: Study, cell: Cell) -> dict[str, str]:
    return {"vimpo.study": study.name, "vimpo.cell": cell.label,
            **{f"vimpo.axis.{name}": label for name, label in cell.labels.items()}}


# ------------------------------------------------------------------------------------------- plan


@dataclass
class PlannedCell:
    cell: Cell
    action: str
    """run (new) | resume (cut short; continues from its checkpoint) | eval (trained; evaluation missing, or
    made with settings other than the study's now) | skip (done)."""
    run_id: str | None = None
    superseded: list[str] = field(default_factory=list)
    """Runs of this cell left RUNNING by a process that is gone (killed): `run_study` marks them KILLED."""
    stale_evals: list[str] = field(default_factory=list)
    """Finished eval runs of this cell made with other settings: `run_study` tags them superseded (reports
    leave them out) and evaluates the cell again."""


def plan(study: Study, cells: list[Cell], tracking_uri: str | None = None) -> list[PlannedCell]:
    """What running the study would do for each cell, from the runs already in the MLflow store."""
    from vimpo_bench.runs import tracking
    from vimpo_bench.runs.checkpoints import find_checkpoint
    from vimpo_bench.runs.record import run_is_live

    existing: dict[str, list[dict]] = {}
    # (a dry run must not create an empty store as a side effect)
    found = [] if tracking.missing_sqlite_store(tracking_uri) else tracking.search_runs(
        [study.experiment], f"tags.`vimpo.study` = '{study.name}'", tracking_uri)
    for r in found:
        if r["tags"].get("vimpo.kind", "train") == "train" and "vimpo.config_hash" in r["tags"]:
            existing.setdefault(r["tags"]["vimpo.config_hash"], []).append(r)
    evals: dict[str, list[dict]] = {}  # the finished eval runs under each training run
    if found and study.suites:
        for r in tracking.search_runs([study.experiment], "tags.`vimpo.kind` = 'eval'", tracking_uri):
            if r["status"] == "FINISHED" and r["tags"].get(DONE_TAG) != "superseded":
                evals.setdefault(r["tags"].get("mlflow.parentRunId", ""), []).append(r)
    out = []
    for cell in cells:
        output = cell.config.run.output_dir
        runs = sorted(existing.get(cell.config.hash(), []), key=lambda r: r["start_time"] or 0, reverse=True)
        runs = [r for r in runs if r["tags"].get(DONE_TAG) != "superseded"]
        live = [r for r in runs if run_is_live(output, r["run_id"])]
        done = [r for r in runs if r["status"] == "FINISHED" and r["tags"].get(DONE_TAG) == "done"]
        trained = [r for r in runs if r["status"] == "FINISHED" and r not in live]
        resumable = [r for r in runs if r not in live and find_checkpoint(Path(output) / r["run_id"])]
        stale = _stale_evaluations(study, cell, evals.get(done[0]["run_id"], [])) if done else []
        if done and stale is None:
            p = PlannedCell(cell, "skip", done[0]["run_id"])
        elif live:  # another process is on it now: leave it alone
            p = PlannedCell(cell, "skip", live[0]["run_id"])
        elif done:  # trained, but its evaluation was made with other settings
            p = PlannedCell(cell, "eval", done[0]["run_id"], stale_evals=stale)
        elif trained and study.suites:
            p = PlannedCell(cell, "eval", trained[0]["run_id"])
            p.superseded = _dead_evaluations(study, p.run_id, tracking_uri)
        elif resumable:
            p = PlannedCell(cell, "resume", resumable[0]["run_id"])
        else:
            p = PlannedCell(cell, "run")
        # A run left RUNNING with no live owner was killed; the run this plan continues is not among them.
        p.superseded += [r["run_id"] for r in runs
                         if r["status"] == "RUNNING" and r not in live and r["run_id"] != p.run_id]
        out.append(p)
    return out


def _stale_evaluations(study: Study, cell: Cell, evals: list[dict]) -> list[str] | None:
    """None when one of a done cell's eval runs was made with the settings the study asks for now (or the
    study evaluates nothing); else the eval runs made with others, superseded when the cell is evaluated
    again (none at all, e.g. deleted or suites added since, also means evaluate again)."""
    from vimpo_bench.evaluation.evaluate import made_with

    if not study.suites:
        return None
    config = eval_config(study, study.suites, cell.config)
    if any(made_with(r["params"], config) for r in evals):
        return None
    return [r["run_id"] for r in evals]


def _dead_evaluations(study: Study, train_run_id: str, tracking_uri: str | None) -> list[str]:
    """Evaluation runs under a trained cell left RUNNING by a killed process (no process holds the cell now)."""
    from vimpo_bench.runs import tracking

    children = tracking.search_runs([study.experiment], f"tags.`mlflow.parentRunId` = '{train_run_id}'", tracking_uri)
    return [r["run_id"] for r in children if r["status"] == "RUNNING" and r["tags"].get("vimpo.kind") == "eval"]


def retire(planned: list[PlannedCell], tracking_uri: str | None) -> int:
    """Mark the runs the plan supersedes KILLED, tagged superseded (reports leave them out). Returns how many."""
    from vimpo_bench.runs import tracking

    n = 0
    for p in planned:
        for run_id in p.superseded:
            handle = tracking.MlflowTracker.attach(run_id, tracking_uri)
            handle.set_tags({DONE_TAG: "superseded"})
            handle.finish("KILLED")
            n += 1
        for run_id in p.stale_evals:  # finished runs: their status stays, the tag drops them from reports
            tracking.MlflowTracker.attach(run_id, tracking_uri).set_tags(
                {DONE_TAG: "superseded", "vimpo.superseded_by": "the study's eval settings changed"})
            n += 1
    return n


def plan_rows(study: Study, planned: list[PlannedCell]) -> list[dict[str, Any]]:
    """The plan as table rows (what `--dry-run` prints)."""
    return [{"cell": p.cell.index, **p.cell.labels, "algo": p.cell.config.algo_name,
             "steps": p.cell.config.optim.steps, "config_hash": p.cell.config.hash(), "action": p.action,
             "run_id": p.run_id or ""} for p in planned]


# -------------------------------------------------------------------------------------------- run


@dataclass
class StudyResult:
    study: str
    experiment: str
    parent_run_id: str
    outcomes: list[CellOutcome]

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        return {"study": self.study, "experiment": self.experiment, "parent_run_id": self.parent_run_id,
                "counts": counts, "cells": [o.__dict__ for o in self.outcomes]}


CellProgress = Callable[[CellOutcome, int, int], None]  # (outcome, cells finished, cells in all)


def run_study(
    study: Study,
    workers: int = 1,
    tracking_uri: str | None = None,
    progress: CellProgress | None = None,
    train_progress=None,
    executor=None,
    status: CellStatus | None = None,
) -> StudyResult:
    """Run every cell not yet done (train, then evaluate `study.suites`) under one parent MLflow run.

    `executor` (`vimpo_bench.experiments.executors`) runs the cells: by default `workers` cells at once in separate
    processes (torch threads split between them), or one after the other here when `workers` is 1, where
    `train_progress` sees each cell's training steps. A failed cell is recorded and the others go on.
    """
    from vimpo_bench.runs import tracking

    executor = executor or executors.local(workers, train_progress)
    deadline = time.monotonic() + 60 * study.budget.minutes if study.budget.minutes else None
    tracking_uri = tracking_uri or tracking.default_tracking_uri()
    with executor:  # a Ray cluster is joined (or refused) before the store is touched
        cells = expand(study)
        planned = plan(study, cells, tracking_uri)
        retire(planned, tracking_uri)
        parent = open_parent_run(study, len(cells), tracking_uri)
        outcomes: dict[int, CellOutcome] = {}

        def finished(outcome: CellOutcome) -> None:
            outcomes[outcome.index] = outcome
            if progress:
                progress(outcome, len(outcomes), len(planned))

        for p in planned:
            if p.action == "skip":
                finished(CellOutcome(p.cell.index, p.cell.label, "skipped", p.run_id))
        def replan(cell: Cell) -> PlannedCell:  # its worker died: planned again as a rerun would plan it
            (again,) = plan(study, [cell], tracking_uri)
            retire([again], tracking_uri)
            return again

        run = functools.partial(run_cell, study, parent_run_id=parent.run_id, tracking_uri=tracking_uri)
        try:
            executors.drive(executor, [p for p in planned if p.action != "skip"], run, replan, deadline, finished,
                            status)
        except BaseException:
            parent.finish("KILLED")
            raise
    result = StudyResult(study.name, study.experiment, parent.run_id,
                         [outcomes[p.cell.index] for p in planned])
    counts = result.summary()["counts"]
    parent.log_metrics({f"study/cells_{k.replace(' ', '_')}": v for k, v in counts.items()}, step=0)
    parent.log_dict(result.summary(), "cells.json")
    parent.finish("FAILED" if result.failed else "FINISHED")
    return result


def run_cell(study: Study, planned: PlannedCell, parent_run_id: str, tracking_uri: str,
             threads: int | None = None, train_progress=None) -> CellOutcome:
    """Train (or resume) one cell, then evaluate it on the study's suites; never raises for a cell's own
    failure (the outcome says what went wrong; the training run is marked FAILED by `engines.start`)."""
    from vimpo_bench import engines
    from vimpo_bench.evaluation import evaluate
    from vimpo_bench.runs import tracking
    from vimpo_bench.runs.record import RunRequest, claim_run

    cell, started = planned.cell, time.monotonic()
    config = copy.deepcopy(cell.config)
    if threads and config.run.threads is None:
        config.run.threads = threads
    run_id, metrics = planned.run_id, {}
    try:
        if planned.action in ("run", "resume"):
            result = engines.start(RunRequest(
                config, resume_run_id=run_id if planned.action == "resume" else None, progress=train_progress,
                tracking_uri=tracking_uri, tags=cell_tags(study, cell), parent_run_id=parent_run_id))
            run_id = result.run_id
            metrics.update({k: v for k, v in result.final.items() if k.startswith("val/")})
        if study.suites:
            policy = Path(config.run.output_dir) / run_id / "checkpoint" / "policy"
            if not policy.is_dir():
                raise FileNotFoundError(f"no trained policy at {policy} to evaluate")
            owner = claim_run(Path(config.run.output_dir) / run_id)  # the cell is live while evaluated
            try:
                result = evaluate.run_eval(str(policy), eval_config(study, study.suites, config), parent_run_id=run_id,
                                           experiment=study.experiment, tracking_uri=tracking_uri,
                                           output_dir=Path(config.run.output_dir) / run_id / "eval",
                                           step=config.optim.steps)
            finally:
                owner.release()
            for suite, suite_result in result.suites.items():
                metrics[f"{suite}/accuracy"] = suite_result.metrics.get("accuracy")
        tracking.MlflowTracker.attach(run_id, tracking_uri).set_tags({DONE_TAG: "done"})
        return CellOutcome(cell.index, cell.label, "done", run_id, metrics, wall_seconds=time.monotonic() - started)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if os.environ.get("VIMPO_BENCH_DEBUG"):
            traceback.print_exc()
        return CellOutcome(cell.index, cell.label, "failed", run_id, metrics, error_line(exc),
                           time.monotonic() - started)


def open_parent_run(study: Study, n_cells: int, tracking_uri: str):
    """The study's parent run: the latest one of this study in its experiment, reopened, or a new one."""
    from vimpo_bench.runs import tracking
    from vimpo_bench.runs.provenance import git_state, package_versions

    found = [r for r in tracking.search_runs([study.experiment], f"tags.`vimpo.study` = '{study.name}'",
                                             tracking_uri)
             if r["tags"].get("vimpo.kind") == "study" and not r["tags"].get("vimpo.sweep")]
    if found:
        parent = tracking.MlflowTracker.resume(max(found, key=lambda r: r["start_time"] or 0)["run_id"], tracking_uri)
    else:
        parent = tracking.MlflowTracker.start(f"study-{study.name}", study.experiment,
                                              tags={"vimpo.kind": "study", "vimpo.study": study.name,
                                                    "vimpo.study_file": str(study.path), **git_state(),
                                                    **package_versions()},
                                              tracking_uri=tracking_uri)
    parent.log_params({"study.cells": n_cells, "study.suites": ",".join(study.suites) or "none",
                       **{f"study.axes.{a.name}": ",".join(v.label for v in a.values) for a in study.axes}})
    parent.log_dict(describe(study), "study.yaml")
    return parent


def describe(study: Study) -> dict[str, Any]:
    """The resolved study (base config overrides, axes, suites, eval, budget, sweep), for the record."""
    return {"name": study.name, "file": str(study.path), "description": study.description,
            "experiment": study.experiment, "base": study.base,
            "axes": {a.name: [{"label": v.label, **v.overrides} for v in a.values] for a in study.axes},
            "suites": study.suites, "eval": study.eval,
            "budget": {f.name: getattr(study.budget, f.name) for f in fields(Budget)}, "sweep": study.sweep,
            "resources": {f.name: getattr(study.resources, f.name) for f in fields(Resources)}}
