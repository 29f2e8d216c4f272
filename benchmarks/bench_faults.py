"""Fault campaign: kill -9 training runs at random points and resume them, kill a study mid-cell and rerun
it, then feed random and hostile input to the data loader and the study parser. Prints the figures
(kills survived, inputs tried, failures). On the tiny model: --kills training runs (default 8), capped at
--minutes (default 5) for them; about 5 minutes in all on 2 idle cores.

    .venv/bin/python benchmarks/bench_faults.py [--kills 8] [--minutes 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
from conftest import EASY_TASK, EASY_WARM_STEPS, _easy_study_yaml  # noqa: E402
from faultkit import (  # noqa: E402
    KILL_POINTS,
    histories,
    problems_with_run,
    run_killed,
    running_runs,
    train_config,
    train_run,
)
from test_fuzz_inputs import alias_bomb, alias_bomb_flow, random_jsonl, random_yaml  # noqa: E402

from vimpo_bench.config import ConfigError, load_config  # noqa: E402
from vimpo_bench.engines import run  # noqa: E402
from vimpo_bench.experiments.study import expand, load_study, run_study  # noqa: E402
from vimpo_bench.models import warm_start_tiny_arith  # noqa: E402
from vimpo_bench.runs import tracking  # noqa: E402
from vimpo_bench.tasks.math_benchmarks import DataError, read_jsonl  # noqa: E402

DEADLINE = 5.0


def kill_campaign(root: Path, cache: Path, rng: random.Random, kills: int, until: float) -> dict:
    ref_store = f"sqlite:///{root / 'ref.db'}"
    reference = histories(ref_store, run(train_config(cache, root / "ref-runs", EASY_WARM_STEPS),
                                         tracking_uri=ref_store).run_id)
    figures = {"kills": 0, "survived": 0, "failures": []}
    by_point: dict[str, int] = {}
    while figures["kills"] < kills and time.monotonic() < until:
        point = rng.choice(sorted(KILL_POINTS))
        hit = rng.choice(KILL_POINTS[point])
        here = root / f"kill{figures['kills']}"
        store, out = f"sqlite:///{here / 'mlflow.db'}", here / "runs"
        config = train_config(cache, out, EASY_WARM_STEPS)
        code = run_killed(f"{point}@{hit}", train_run, config, store)
        figures["kills"] += 1
        by_point[point] = by_point.get(point, 0) + 1
        stuck = running_runs(store, config.run.experiment)
        if code != -9 or len(stuck) != 1:
            figures["failures"].append(f"{point}@{hit}: exit {code}, running {stuck}")
            continue
        run(config, resume_run_id=stuck[0], tracking_uri=store)
        found = problems_with_run(store, stuck[0], reference, out)
        if found:
            figures["failures"].append(f"{point}@{hit}: {found[:3]}")
        else:
            figures["survived"] += 1
    figures["by_point"] = by_point
    return figures


def study_kill(root: Path, cache: Path, rng: random.Random) -> dict:
    store = f"sqlite:///{root / 'study.db'}"
    path = root / "kstudy.yaml"
    path.write_text(_easy_study_yaml(cache, root / "study-runs", "study:\n  axes:\n    run.seed: [0, 1]\n", steps=3))
    hit = rng.randint(1, 5)
    code = run_killed(f"step@{hit}", run_study, load_study(path), 1, store)
    result = run_study(load_study(path), tracking_uri=store)
    runs = tracking.search_runs(["kstudy"], "", store)
    failures = []
    if code != -9:
        failures.append(f"study step@{hit}: exit {code}")
    if any(o.status not in ("done", "skipped") for o in result.outcomes):
        failures.append(f"study outcomes {[o.status for o in result.outcomes]}")
    if any(r["status"] == "RUNNING" for r in runs):
        failures.append("a study run left RUNNING")
    killed = [r for r in runs if r["status"] == "KILLED"]
    if any(r["tags"].get("vimpo.cell_status") != "superseded" for r in killed):
        failures.append("a KILLED run not marked superseded")
    return {"kills": 1, "survived": int(not failures), "failures": failures}


def fuzz_campaign(root: Path, rng: random.Random, n_files: int, n_yaml: int) -> dict:
    figures = {"inputs": 0, "errors": 0, "slowest_s": 0.0, "failures": []}

    def attempt(label: str, call) -> None:
        figures["inputs"] += 1
        started = time.monotonic()
        try:
            call()
        except (ConfigError, DataError) as exc:
            figures["errors"] += 1
            if "\n" in str(exc) or len(str(exc)) > 1500:
                figures["failures"].append(f"{label}: message of {len(str(exc))} chars / several lines")
        except Exception as exc:  # anything else is a failure: not a clear one-line error
            figures["failures"].append(f"{label}: {type(exc).__name__}: {str(exc)[:200]}")
        elapsed = time.monotonic() - started
        figures["slowest_s"] = max(figures["slowest_s"], elapsed)
        if elapsed > DEADLINE:
            figures["failures"].append(f"{label}: {elapsed:.1f} s")

    for i in range(n_files):
        path = root / f"data{i}.jsonl"
        path.write_bytes(random_jsonl(rng))
        attempt(f"jsonl #{i}", lambda path=path: read_jsonl(path))
    for i in range(n_yaml):
        path = root / f"study{i}.yaml"
        path.write_text(random_yaml(rng), encoding="utf-8")
        attempt(f"yaml #{i}", lambda path=path: expand(load_study(path)))
    for levels in (5, 9, 12, 20):
        path = root / f"bomb{levels}.yaml"
        path.write_text("extends: tiny_demo\n" + alias_bomb(levels))
        attempt(f"bomb file {levels}", lambda path=path: load_study(path))
        attempt(f"bomb --set {levels}", lambda levels=levels: load_config(overrides=[f"optim.lr={alias_bomb_flow(levels)}"]))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=8, help="training runs to kill and resume")
    parser.add_argument("--minutes", type=float, default=5.0, help="time cap of the training-run kills")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        root = Path(tmp)
        fuzz = fuzz_campaign(root, rng, n_files=300, n_yaml=1000)
        cache = root / "cache"
        warm_start_tiny_arith(EASY_TASK, cache, steps=EASY_WARM_STEPS, seed=0, num_threads=1)
        study = study_kill(root, cache, rng)
        kills = kill_campaign(root, cache, rng, args.kills, until=time.monotonic() + 60 * args.minutes)
    print(f"kill -9 campaign (seed {args.seed}, {time.monotonic() - started:.0f} s):")
    print(f"  training runs: {kills['kills']} kills ({', '.join(f'{k} {v}' for k, v in sorted(kills['by_point'].items()))}), "
          f"{kills['survived']} resumed to records equal to an uninterrupted run, {len(kills['failures'])} failures")
    print(f"  study: {study['kills']} kill mid-cell, {study['survived']} reran honestly, {len(study['failures'])} failures")
    print(f"fuzz: {fuzz['inputs']} inputs tried (random data files, random study YAML, alias bombs), "
          f"{fuzz['errors']} one-line errors, slowest call {fuzz['slowest_s']:.2f} s, {len(fuzz['failures'])} failures")
    for failure in kills["failures"] + study["failures"] + fuzz["failures"]:
        print(f"  FAILURE {failure}")


if __name__ == "__main__":
    main()
