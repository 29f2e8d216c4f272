"""Kill -9 scenarios shared by tests/test_faults.py and benchmarks/bench_faults.py.

A scenario runs training (or a study, or a sweep) in a forked child that SIGKILLs itself at a named
point (`vimpo_bench.faults`: between steps, mid-save, mid-evaluation), or kills a whole sweep command
from outside; then reruns or resumes in this process and lists what is wrong with the records
(`problems`: an empty list means every check held). Each scenario uses its own MLflow store, first
opened by the child, so that no sqlite connection crosses a fork.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from pathlib import Path

from vimpo_bench import faults
from vimpo_bench.config import load_config
from vimpo_bench.runs import tracking

EASY_TASK_SET = ["task.options.digits=1", "task.options.terms=3", "task.options.n_train=500",
                 "task.options.n_test=100", "task.options.n_validation=100"]
STEPS, CHECKPOINT_EVERY, EVAL_EVERY = 4, 2, 2
# Where a kill can land with a checkpoint behind it to resume from: point -> its hit numbers. Checkpoints at
# steps 2 and 4; evaluations at steps 0, 2, 4 ("heldout" hit 3 = the step-4 evaluation, after the step-2 save).
KILL_POINTS = {"step": (2, 3), "save": (2,), "heldout": (3,)}
# metrics that measure time, not the training: they differ between any two runs
TIMING = ("perf/",)


def train_overrides(cache: Path, output_dir: Path, warm_steps: int, *extra: str) -> list[str]:
    """The `--set` items of a fast run of tiny-arith on the easy task (`extra` last: it wins)."""
    return [
        "model.name=tiny-arith", f"model.cache_dir={cache}", f"model.warm_start_steps={warm_steps}", *EASY_TASK_SET,
        "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=24",
        f"optim.steps={STEPS}", "optim.lr=1e-3", "optim.minibatches=2",
        f"eval.every={EVAL_EVERY}", "eval.problems=8", "eval.samples=2", "eval.completions_logged=2",
        f"run.output_dir={output_dir}", "run.threads=1", f"run.checkpoint_every={CHECKPOINT_EVERY}", *extra]


def train_config(cache: Path, output_dir: Path, warm_steps: int, *extra: str):
    return load_config(overrides=train_overrides(cache, output_dir, warm_steps, *extra))


def _child(kill_at: str, target, args) -> None:
    import torch

    torch.set_num_threads(1)  # a forked child of a process that ran OpenMP regions: one thread only
    os.environ[faults.ENV] = kill_at
    target(*args)


def run_killed(kill_at: str, target, *args, timeout: float = 300) -> int:
    """Run target(*args) in a forked child that SIGKILLs itself at `kill_at`; its exit code (-9 if killed)."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(kill_at, target, args))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return proc.exitcode


def train_run(config, store: str) -> None:
    from vimpo_bench.engines import run

    run(config, tracking_uri=store)


def histories(store: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for _, key, step, _, value in tracking.metric_histories([run_id], None, store):
        out.setdefault(key, []).append((step, value))
    return {k: sorted(v) for k, v in out.items()}


def problems_with_run(store: str, run_id: str, reference: dict | None, output_dir: Path) -> list[str]:
    """What is wrong with a run after a kill and a resume: every step logged exactly once, the same values
    as the uninterrupted `reference` histories (timings aside), FINISHED, no temporary folder left."""
    found = []
    hist = histories(store, run_id)
    for key, points in hist.items():
        steps = [s for s, _ in points]
        if len(steps) != len(set(steps)):
            found.append(f"{key}: a step logged twice ({steps})")
    if reference is not None:
        for key, points in reference.items():
            if key.startswith(TIMING):
                continue
            got = dict(hist.get(key, []))
            if set(got) != {s for s, _ in points}:
                found.append(f"{key}: steps {sorted(got)} != reference {[s for s, _ in points]}")
                continue
            for step, value in points:
                same = (math.isnan(value) and math.isnan(got[step])) or math.isclose(
                    got[step], value, rel_tol=1e-5, abs_tol=1e-6)
                if not same:
                    found.append(f"{key}@{step}: {got[step]} != reference {value}")
    (record,) = tracking.get_runs([run_id], store)
    if record["status"] != "FINISHED":
        found.append(f"run {run_id} is {record['status']}")
    leftovers = list(output_dir.glob("*/.checkpoint-*"))
    if leftovers:
        found.append(f"temporary folders left: {leftovers}")
    return found


def running_runs(store: str, experiment: str) -> list[str]:
    return [r["run_id"] for r in tracking.search_runs([experiment], "", store) if r["status"] == "RUNNING"]


def kill_group_when(proc, ready, timeout: float = 240, delay: float = 0.0) -> bool:
    """SIGKILL the child's whole process group (the command and its workers) once `ready()` holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.is_alive():
        if ready():
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.join()
            return True
        time.sleep(0.3)
    return False


def _own_group(target, args) -> None:
    os.setsid()  # a group of its own, so that killing it takes the sweep's worker processes too
    import torch

    torch.set_num_threads(1)
    target(*args)


def start_in_own_group(target, *args):
    proc = multiprocessing.get_context("fork").Process(target=_own_group, args=(target, args))
    proc.start()
    return proc
