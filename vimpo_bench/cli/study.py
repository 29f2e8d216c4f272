"""`vimpo-bench study run FILE` and `vimpo-bench sweep PARAM... --study FILE`: parse, call the library."""

from __future__ import annotations

import json
import time
from collections import Counter
from enum import Enum

import typer
from tqdm import tqdm

from vimpo_bench.cli import app, fail, tracking_uri_option
from vimpo_bench.cli.progress import StepBars, bar

# sweep.BUILTIN_PARAMS (the CLI starts without importing the sweep module; a test holds them equal)
SWEEP_PARAMS = ("beta", "lr", "value_scale", "value_coef", "clip")

study_app = typer.Typer(help="Declarative experiment grids (study files in studies/).", no_args_is_help=True)
app.add_typer(study_app, name="study")


def _load(study: str):
    from vimpo_bench.config import ConfigError
    from vimpo_bench.experiments.study import load_study

    try:
        return load_study(study)
    except ConfigError as exc:
        fail(str(exc))


def _table(rows: list[dict]) -> str:
    if not rows:
        return "(no cells)"
    columns = list(rows[0])
    width = {c: max(len(str(c)), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(str(c).ljust(width[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(width[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


class _CellBar:
    """The study's bar: cells finished of all, with cells done, running and failed, and an ETA from the time
    the cells run here have taken so far (skipped cells take none). Opened at the first report, once the
    executor has started (an executor that cannot start leaves only its error line)."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.done = name, total, 0
        self.bar = None
        self.counts: Counter[str] = Counter()
        self.running = self.restarts = 0
        self.started = 0.0

    def finished(self, outcome, done: int, total: int) -> None:
        self.counts[outcome.status] += 1
        self.done = done
        self.show()

    def status(self, running: int, restarts: int) -> None:
        self.running, self.restarts = running, restarts
        self.show()

    def show(self) -> None:
        if self.bar is None:
            self.bar = bar(total=self.total, desc=f"study {self.name}", unit="cell", position=0,
                           bar_format="{desc}: {n_fmt}/{total_fmt} cells |{bar}| {elapsed}{postfix}")
            self.started = time.monotonic()
        counts, left = self.counts, self.total - self.done
        worked = counts["done"] + counts["failed"]
        eta = tqdm.format_interval((time.monotonic() - self.started) / worked * left) if worked else "?"
        text = f"done {counts['done'] + counts['skipped']}, running {self.running}, failed {counts['failed']}"
        if self.restarts:
            text += f", restarted {self.restarts}"
        self.bar.n = self.done
        self.bar.set_postfix_str(f"{text}, ETA {eta}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Executor(str, Enum):
    local = "local"
    ray = "ray"


def _executor(study, kind: Executor, workers: int, address, num_cpus, num_gpus, steps):
    from vimpo_bench.experiments.executors import ExecutorError, RayExecutor, local

    ray_only = {"--address": address, "--num-cpus": num_cpus, "--num-gpus": num_gpus}
    if kind is Executor.local:
        given = [flag for flag, value in ray_only.items() if value is not None]
        if given:
            fail(f"{', '.join(given)}: only with --executor ray")
        return local(workers, steps)
    if workers != 1:
        fail("--workers is for --executor local; with --executor ray the cluster runs as many cells at once "
             "as it has room for")
    try:
        return RayExecutor(address, study.resources.num_cpus if num_cpus is None else num_cpus,
                           study.resources.num_gpus if num_gpus is None else num_gpus)
    except ExecutorError as exc:
        fail(str(exc))


@study_app.command("run")
def study_run(
    file: str = typer.Argument(..., help="Study file, or the name of a packaged study (e.g. vimpo_vs_grpo)."),
    workers: int = typer.Option(1, "--workers", help="Cells run at once, each in its own process (--executor local)."),
    executor: Executor = typer.Option(  # noqa: B008 - typer's way
        Executor.local, "--executor", help="local: --workers processes on this machine; ray: each cell a Ray task "
                                           "(needs the package's ray extra)."),
    address: str = typer.Option(None, "--address", help="Ray cluster to join: HOST:PORT of the head node "
                                                        "(`ray start --head`); default: a local Ray instance."),
    num_cpus: float = typer.Option(None, "--num-cpus", help="CPUs one cell takes as a Ray task "
                                                            "(default: study.resources.num_cpus, else 1)."),
    num_gpus: float = typer.Option(None, "--num-gpus", help="GPUs one cell takes as a Ray task "
                                                            "(default: study.resources.num_gpus, else 0)."),
    tracking_uri: str = tracking_uri_option(),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (cells, config hashes, actions) only."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as one JSON object last."),
) -> None:
    """Train and evaluate every cell of a study's grid, skipping cells already done."""
    from vimpo_bench.config import ConfigError
    from vimpo_bench.experiments.executors import ExecutorError
    from vimpo_bench.experiments.study import expand, plan, plan_rows, run_study

    study = _load(file)
    if workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    try:
        cells = expand(study)
    except ConfigError as exc:
        fail(str(exc))
    if dry_run:
        from vimpo_bench.runs import tracking

        planned = plan(study, cells, tracking_uri or tracking.default_tracking_uri())
        typer.echo(f"study {study.name}: {len(cells)} cell(s) in experiment {study.experiment!r}"
                   + (f"; evaluated on {', '.join(study.suites)}" if study.suites else ""))
        typer.echo(_table(plan_rows(study, planned)))
        todo = sum(p.action != "skip" for p in planned)
        typer.echo(f"{todo} to run, {len(planned) - todo} already done")
        return
    steps = StepBars(position=1, leave=False) if workers == 1 and executor is Executor.local else None
    runner = _executor(study, executor, workers, address, num_cpus, num_gpus, steps)
    bar = _CellBar(study.name, len(cells))
    try:
        result = run_study(study, progress=bar.finished, executor=runner, status=bar.status,
                           tracking_uri=tracking_uri)
    except ExecutorError as exc:
        fail(str(exc))
    finally:
        if steps:
            steps.close()
        bar.close()
    rows = [{"cell": o.index, "label": o.label, "status": o.status, "run_id": o.run_id or "",
             **{k: f"{v:.3f}" for k, v in o.metrics.items() if v is not None},
             "error": o.error or ""} for o in result.outcomes]
    typer.echo(_table(rows))
    typer.echo(f"parent run {result.parent_run_id} in experiment {result.experiment!r}")
    if as_json:
        typer.echo(json.dumps({**result.summary(), "executor": executor.value}, default=str))
    if result.failed:
        fail(f"{len(result.failed)} of {len(result.outcomes)} cell(s) failed: "
             + "; ".join(f"{o.label}: {o.error}" for o in result.failed), code=1)


@app.command("sweep")
def sweep_command(
    params: list[str] = typer.Argument(..., help="Parameters to search: " + ", ".join(SWEEP_PARAMS) +  # noqa: B008
                                       " (built in), or a name declared under the study file's study.sweep.params."),
    study: str = typer.Option("beta_sweep", "--study", help="Study file or packaged study name."),
    trials: int = typer.Option(None, "--trials", help="Trials the Optuna study should hold in all "
                                                      "(default: study.budget.trials)."),
    storage: str = typer.Option(None, "--storage", help="SQLAlchemy URL of the Optuna storage "
                                                        "(default sqlite:///optuna.db; postgresql+psycopg://... "
                                                        "for several machines)."),
    workers: int = typer.Option(1, "--workers", help="Processes running trials at once on this machine."),
    tracking_uri: str = tracking_uri_option(),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the search (Optuna study, parameters and ranges, "
                                 "trials, storage) and the trials the storage holds; run nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the best trial (with --dry-run: the plan) as one JSON "
                                 "object last."),
) -> None:
    """Search hyperparameters with Optuna; each trial is an MLflow run; rerunning continues the study."""
    import optuna

    from vimpo_bench.experiments.sweep import plan_sweep, run_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = _load(study)
    if dry_run:
        try:
            planned = plan_sweep(spec, params, trials=trials, storage=storage)
        except ValueError as exc:
            fail(str(exc))
        held = ", ".join(f"{n} {s.lower()}" for s, n in sorted(planned["held"].items())) or "none"
        typer.echo(f"optuna study {planned['optuna_study']!r} in {planned['storage']}: {planned['trials']} trial(s) "
                   f"of {planned['steps']} steps, {planned['direction']} {planned['metric']}; held now: {held}; "
                   f"{planned['to_run']} to run")
        for name, described in planned["params"].items():
            typer.echo(f"  {name}: {described}")
        if as_json:
            typer.echo(json.dumps(planned))
        return
    bars: list = []  # opened at the first report, after run_sweep has checked every input
    steps = StepBars(position=1, leave=False) if workers == 1 else None

    def progress(done, total, best):
        if not bars:
            bars.append(bar(desc=f"sweep {' '.join(params)}", unit="trial", position=0))
        bars[0].total, bars[0].n = total, done
        if best is not None:
            bars[0].set_postfix(best=f"{best:.4f}", refresh=False)
        bars[0].refresh()

    try:
        result = run_sweep(spec, params, trials=trials, storage=storage, workers=workers, progress=progress,
                           train_progress=steps, tracking_uri=tracking_uri)
    except ValueError as exc:  # a ConfigError, a bad --storage
        fail(str(exc))
    finally:
        if steps:
            steps.close()
        for shown in bars:
            shown.close()
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.states.items()))
    typer.echo(f"optuna study {result.optuna_study!r} in {result.storage}: {result.trials} trial(s) ({states}); "
               f"parent run {result.parent_run_id}")
    if result.best:
        typer.echo(f"best: trial {result.best['trial']} value {result.best['value']:.4f} params {result.best['params']} "
                   f"(run {result.best['mlflow_run_id']})")
    else:
        typer.echo("best: no trial completed")
    if as_json:
        typer.echo(json.dumps({"study": result.optuna_study, "storage": result.storage,
                               "parent_run_id": result.parent_run_id, "trials": result.trials,
                               "states": result.states, **({"best_trial": result.best["trial"],
                               "best_value": result.best["value"], "best_params": result.best["params"],
                               "best_run_id": result.best["mlflow_run_id"]} if result.best else
                               {"best_trial": None})}))
