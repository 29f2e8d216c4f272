"""Full fine-tuning vs LoRA (`model.lora.r`), the native engine at the tiny_demo settings: trainable parameters,
the bytes of model state, peak memory and seconds per RL step.

    python benchmarks/bench_lora.py [--steps 6] [--threads 1] [--rank 8] [--repeats 2] [--set key=value ...]

What each number is:
- trainable / total parameters: of the policy as the loop builds it (`steps.load_starting_policy`).
- weights: the distinct tensor storage of the policy and pi_ref together (`lora.frozen_reference`): full
  fine-tuning holds a copy of every weight for pi_ref; LoRA's pi_ref is the base over the same tensors.
- grads: one gradient per trainable parameter (what backward fills in the update).
- AdamW state: the bytes of the optimizer state the run saved in its last checkpoint (`state.pt`).
- peak RSS: the resident set of a fresh process per arm at its peak (`ru_maxrss`), and its rise over the
  same process after its imports (torch, transformers, peft) and before the model loads; on CPU torch keeps no
  allocator statistics, and RSS also counts the allocator's caching, so it is an upper bound on what the
  training state needs, with the interpreter and libraries (hundreds of MB) taken out.
- s/step: the median `perf/step_s` over steps 2..N (the first warms up), with its update and log-prob parts.
Each arm runs `--repeats` times in fresh processes, the arms alternating; the table shows medians over them.
Every run records nothing to MLflow (NullTracker); the tiny-arith warm start is built once if not cached.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def rss_mb() -> float:
    """This process's resident set now, in MB (/proc/self/status VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def overrides(args, arm: str, out: str) -> list[str]:
    lora = [f"model.lora.r={args.rank}"] if arm == "lora" else []
    return [
        f"optim.steps={args.steps}",
        "eval.every=0",
        "eval.problems=8",
        "eval.samples=1",
        f"run.threads={args.threads}",
        f"run.output_dir={out}",
        "run.checkpoint_every=0",
        *lora,
        *args.extra,
    ]


def child(args) -> None:
    """One arm in this fresh process; prints one JSON line."""
    import peft  # noqa: F401 - imported in both arms before the baseline, so the rise is the training's
    import torch

    from vimpo_bench.config import load_config
    from vimpo_bench.engines.native import train

    torch.set_num_threads(args.threads)
    baseline = rss_mb()
    with tempfile.TemporaryDirectory() as out:
        result = train(load_config("tiny_demo", overrides(args, args.child, out)))
        state = torch.load(Path(out) / "local" / "checkpoint" / "state.pt", weights_only=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    timed = result.history[1:] or result.history
    median = {
        k: statistics.median(h[k] for h in timed) for k in ("perf/step_s", "perf/update_s", "perf/logprob_s")
    }
    adam = sum(
        t.nbytes for s in state["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t)
    )
    print(json.dumps({"peak_mb": peak, "rise_mb": peak - baseline, "adam_bytes": adam, **median}))


def model_bytes(args, arm: str) -> dict[str, int]:
    """Parameter counts and the distinct bytes of policy + pi_ref, as the loop builds them."""
    from vimpo_bench.config import load_config
    from vimpo_bench.models.lora import frozen_reference, trainable_parameters
    from vimpo_bench.rl.steps import load_starting_policy

    policy, _ = load_starting_policy(load_config("tiny_demo", overrides(args, arm, "unused")))
    reference = frozen_reference(policy)
    storages = {}
    for model in (policy, reference):
        for t in (*model.parameters(), *model.buffers()):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    trainable = trainable_parameters(policy)
    return {
        "trainable": sum(p.numel() for p in trainable),
        "total": sum(p.numel() for p in policy.parameters()),
        "weights_bytes": sum(storages.values()),
        "grad_bytes": sum(p.nbytes for p in trainable),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument(
        "--repeats", type=int, default=2, help="fresh processes per arm (medians are printed)"
    )
    parser.add_argument("--set", dest="extra", action="append", default=[])
    parser.add_argument("--child", choices=("full", "lora"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from vimpo_bench.config import load_config
    from vimpo_bench.engines.native import train

    # the tiny-arith warm start, built here if not cached (untimed)
    train(load_config("tiny_demo", ["optim.steps=0", "eval.problems=1", "eval.samples=1"]))
    load = os.getloadavg()
    runs = {"full": [], "lora": []}
    for _ in range(args.repeats):  # the arms alternate, so that a change in the machine's load hits both
        for arm, done in runs.items():
            command = [sys.executable, __file__, "--child", arm, *sys.argv[1:]]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            done.append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = {
        arm: {**{k: statistics.median(r[k] for r in done) for k in done[0]}, **model_bytes(args, arm)}
        for arm, done in runs.items()
    }
    after = os.getloadavg()
    print(
        f"== tiny_demo settings (16 prompts x 8, <= 28 tokens, 2 minibatches), native engine, {args.steps} steps, "
        f"{args.threads} thread(s), medians of {args.repeats} processes per arm; LoRA r={args.rank} alpha=16 on "
        f"all-linear; {os.cpu_count()} cores, load average {load[0]:.2f} before, {after[0]:.2f} after"
    )
    mb = 1 / 2**20
    print(
        f"{'arm':5} {'trainable':>10} {'total':>10} {'weights MB':>10} {'grads MB':>9} {'AdamW MB':>9} "
        f"{'peak RSS MB':>11} {'rise MB':>8} {'s/step':>7} {'update s':>8} {'logprob s':>9}"
    )
    for arm, r in rows.items():
        print(
            f"{arm:5} {r['trainable']:>10,} {r['total']:>10,} {r['weights_bytes'] * mb:>10.2f} "
            f"{r['grad_bytes'] * mb:>9.2f} {r['adam_bytes'] * mb:>9.2f} {r['peak_mb']:>11.0f} "
            f"{r['rise_mb']:>8.0f} {r['perf/step_s']:>7.3f} {r['perf/update_s']:>8.3f} "
            f"{r['perf/logprob_s']:>9.3f}"
        )
    full, lora = rows["full"], rows["lora"]
    state = {arm: r["weights_bytes"] + r["grad_bytes"] + r["adam_bytes"] for arm, r in rows.items()}
    print(
        f"LoRA / full: trainable {lora['trainable'] / full['trainable']:.3f}x, weights + grads + AdamW "
        f"{state['lora'] * mb:.2f} / {state['full'] * mb:.2f} MB = {state['lora'] / state['full']:.2f}x, peak RSS "
        f"rise {lora['rise_mb'] / full['rise_mb']:.2f}x, "
        f"s/step {lora['perf/step_s'] / full['perf/step_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
