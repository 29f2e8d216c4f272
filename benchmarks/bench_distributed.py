"""What a 2-process CPU run of the `trl` engine costs per RL step against 1 process: the same settings
(tiny_demo: 16 prompts x 8 samples, <= 28 new tokens, 2 minibatches), GRPO and VIMPO, launched as a user
would (`torchrun --nproc_per_node N -m vimpo_bench train --engine trl`, gloo), each process on 1 thread.
Reads perf/step_s and its split back from the run's MLflow record (a throwaway sqlite store) and prints
the medians over the steps after the first (warm-up), side by side.

    python benchmarks/bench_distributed.py [--steps 6] [--algos grpo,vimpo] [--set key=value ...]

With 2 processes each one rolls out and updates on half the prompts, so on 2 idle cores the ideal is
0.5x; the gap is the gloo all-reduce of every gradient, the broadcasts, and validation, which runs on the
main process only. Keep the machine otherwise idle: a study running beside it makes both numbers noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPLIT = ("perf/step_s", "perf/rollout_s", "perf/logprob_s", "perf/update_s")


def launch(processes: int, algo: str, steps: int, extra: list[str], workdir: Path, port: int) -> tuple[dict, float]:
    """Train once under torchrun with `processes` ranks; (median of each SPLIT key over steps 2.., wall s)."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{workdir / f'{algo}-{processes}.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": store}
    settings = ["eval.every=0", "eval.problems=8", "eval.samples=1", "run.threads=1", f"optim.steps={steps}",
                f"run.output_dir={workdir / f'runs-{algo}-{processes}'}", *extra]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(port), "-m", "vimpo_bench", "train", "--study", "tiny_demo", "--engine", "trl",
               "--algo", algo, *[f"--set={s}" for s in settings]]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{processes}-process {algo} run failed (exit {done.returncode}): "
                         + done.stderr.strip().splitlines()[-1][:300])
    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])  # a fresh store: this run
    medians = {}
    for key in SPLIT:
        points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        timed = [m.value for m in points[1:]] or [m.value for m in points]
        medians[key] = statistics.median(timed) if timed else float("nan")
    return medians, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--algos", default="grpo,vimpo")
    parser.add_argument("--set", dest="extra", action="append", default=[])
    args = parser.parse_args()
    print(f"== trl engine, tiny_demo settings, {args.steps} steps, 1 thread per process, {os.cpu_count()} CPUs; "
          f"medians over steps 2..{args.steps} (perf/* metrics read back from MLflow)")
    print(f"{'algo':6} {'procs':>5} " + " ".join(f"{k.split('/')[1]:>10}" for k in SPLIT) + f" {'wall_s':>8}")
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        workdir = Path(tmp)
        for i, algo in enumerate(args.algos.split(",")):
            rows = {n: launch(n, algo, args.steps, args.extra, workdir, 29700 + 10 * i + n) for n in (1, 2)}
            for n, (row, wall) in rows.items():
                print(f"{algo:6} {n:>5} " + " ".join(f"{row[k]:10.3f}" for k in SPLIT) + f" {wall:8.1f}")
            ratio = rows[2][0]["perf/step_s"] / rows[1][0]["perf/step_s"]
            print(f"{algo:6} 2-process / 1-process step time: {ratio:.2f}x (ideal 0.50x on 2 idle cores)")


if __name__ == "__main__":
    main()
