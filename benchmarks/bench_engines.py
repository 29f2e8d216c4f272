"""Native vs trl engine: seconds per RL step, GRPO and VIMPO, the tiny model, the same settings, one CPU
process. Prints the step split (rollout, scoring, log-probs, update) side by side; median over the steps
after the first (warm-up).

    python benchmarks/bench_engines.py [--steps 6] [--threads 1] [--set key=value ...]

Runs record nothing to MLflow (NullTracker); the tiny-arith warm start is built once if not cached.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vimpo_bench.config import load_config
from vimpo_bench.engines import trl_engine
from vimpo_bench.engines.native import train
from vimpo_bench.runs.tracking import NullTracker

SPLIT = ("perf/step_s", "perf/rollout_s", "perf/scoring_s", "perf/logprob_s", "perf/update_s", "perf/tokens_per_s")


def one(engine: str, algo: str, steps: int, threads: int, extra: list[str]) -> dict[str, float]:
    config = load_config("tiny_demo", [f"algo.name={algo}", f"run.engine={engine}", f"optim.steps={steps}",
                                       "eval.every=0", "eval.problems=8", "eval.samples=1", f"run.threads={threads}",
                                       *extra])
    start = time.perf_counter()
    if engine == "native":
        result = train(config)
    else:
        result = trl_engine.train(config, trl_engine.trainer_args(config), NullTracker(), None)
    wall = time.perf_counter() - start
    timed = result.history[1:] or result.history
    out = {key: statistics.median(h[key] for h in timed) for key in SPLIT}
    out["wall_s"] = wall
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="extra", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train(load_config("tiny_demo", ["optim.steps=0", "eval.problems=1", "eval.samples=1"]))  # warm start, untimed
    print(f"== tiny_demo settings (16 prompts x 8, <= 28 tokens, 2 minibatches), {args.steps} steps, "
          f"{args.threads} thread(s), 1 process; medians over steps 2..{args.steps}")
    print(f"{'algo':6} {'engine':7} " + " ".join(f"{k.split('/')[1]:>14}" for k in SPLIT) + f" {'wall_s':>8}")
    for algo in ("grpo", "vimpo"):
        rows = {engine: one(engine, algo, args.steps, args.threads, args.extra) for engine in ("native", "trl")}
        for engine, row in rows.items():
            print(f"{algo:6} {engine:7} " + " ".join(f"{row[k]:14.3f}" for k in SPLIT) + f" {row['wall_s']:8.1f}")
        print(f"{algo:6} trl/native step time: {rows['trl']['perf/step_s'] / rows['native']['perf/step_s']:.2f}x")


if __name__ == "__main__":
    main()
