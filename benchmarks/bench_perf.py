"""Performance figures that can be trusted (issue 23 section 1), on the default demo settings:

1. RL share of the run wall: sum of perf/step_s over the run's wall time (end - start), both from the run's
   MLflow record (target >= 0.85);
2. evaluation cost per generated sequence against a rollout's: the in-training evaluation (perf/eval_s /
   perf/eval_sequences) and the final evaluation of a study cell as `study.run_cell` runs it (in the cell's
   process, with the study's eval settings: model load, generation, grading and the MLflow eval run timed),
   each over the rollout's perf/rollout_s / sequences (target <= 1.5x each); the same evaluation as its own
   `vimpo-bench eval` process (Python and library start-up included) is printed beside it for reference;
3. the rollout's time per generated token against the floor for this model on this machine: a bare loop of
   the model's forward passes with a KV cache on the same shapes (prompts x group size, the mean prompt
   length, max_new_tokens steps; argmax, no sampling bookkeeping), measured in the same process (target
   <= 1.3x, else a profile of one rollout is printed to show what keeps it above).

Each figure is repeated over --repeats runs and printed as min / median / max. The load average is printed
before and after; a machine that was not quiet (1-minute load above 0.5 beside this benchmark before it
started, or above cores + 0.5 while it ran) gets a warning, and its numbers are not to be quoted.

    python benchmarks/bench_perf.py [--repeats 3] [--steps 80]      # make bench runs it
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

QUIET_LOAD = 0.5


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def spread(values: list[float], fmt: str = ".3f") -> str:
    return f"min {min(values):{fmt}} / median {statistics.median(values):{fmt}} / max {max(values):{fmt}}"


def one_run(seed: int, steps: int, store: str, out: Path) -> dict:
    """Train the demo once with an MLflow record, evaluate it as a study cell does; return the figures."""
    from mlflow import MlflowClient

    from vimpo_bench.config import load_config
    from vimpo_bench.engines import run
    from vimpo_bench.evaluation.evaluate import run_eval
    from vimpo_bench.experiments.study import eval_config, load_study

    config = load_config("tiny_demo", [f"run.seed={seed}", f"optim.steps={steps}", f"run.output_dir={out}",
                                      "run.checkpoint_every=0"])
    result = run(config, tracking_uri=store)
    client = MlflowClient(store)
    info = client.get_run(result.run_id).info
    wall = (info.end_time - info.start_time) / 1000
    history = {k: client.get_metric_history(result.run_id, k)
               for k in ("perf/step_s", "perf/rollout_s", "perf/eval_s", "perf/eval_sequences")}
    rl = sum(m.value for m in history["perf/step_s"])
    rollout_seq = config.rollout.prompts_per_step * config.rollout.group_size
    rollout_per_seq = statistics.median(m.value for m in history["perf/rollout_s"]) / rollout_seq
    evals = [e.value / n.value for e, n in zip(history["perf/eval_s"], history["perf/eval_sequences"], strict=True)]
    # The final evaluation of a study cell, as `study.run_cell` runs it: in the cell's process, on its checkpoint,
    # with the study's eval settings (tiny_demo's `study.eval`: samples, temperature, token budget, grader
    # processes): model load, generation, grading and the MLflow eval run all counted.
    study = load_study("tiny_demo")
    settings = eval_config(study, study.suites, config)
    policy = out / result.run_id / "checkpoint" / "policy"
    started = time.perf_counter()
    evaluated = run_eval(str(policy), settings, parent_run_id=result.run_id, experiment=study.experiment,
                         tracking_uri=store, output_dir=out / result.run_id / "eval", step=config.optim.steps)
    cell_eval_s = time.perf_counter() - started
    sequences = sum(s.n_samples for s in evaluated.suites.values())  # every sample of every problem
    # The same as its own `vimpo-bench eval` process (what a user runs by hand), Python start-up included.
    started = time.perf_counter()
    cli = [sys.executable, "-m", "vimpo_bench", "eval", "--model", str(policy), "--suite", ",".join(study.suites),
           "--n", str(settings.n), "--temperature", str(settings.temperature), "--max-new-tokens",
           str(settings.max_new_tokens), "--grader-workers", str(settings.grader_workers)]
    subprocess.run(cli, check=True, capture_output=True, env={**os.environ, "MLFLOW_TRACKING_URI": store})
    process_eval_s = time.perf_counter() - started
    return {"rl_share": rl / wall, "wall_s": wall, "in_training_eval_ratio": statistics.median(evals) / rollout_per_seq,
            "final_eval_ratio": cell_eval_s / sequences / rollout_per_seq,
            "process_eval_ratio": process_eval_s / sequences / rollout_per_seq, "sequences": sequences,
            "cell_eval_s": cell_eval_s, "process_eval_s": process_eval_s, "rollout_per_seq_ms": 1000 * rollout_per_seq}


def rollout_vs_floor(seed: int = 0, repeats: int = 3) -> tuple[list[float], str]:
    """(ratios of the rollout's seconds per generated token to the bare KV-cache forward loop's, one per repeat;
    a profile of one rollout)."""
    import cProfile
    import io
    import pstats

    import torch

    from vimpo_bench import tasks
    from vimpo_bench.config import load_config
    from vimpo_bench.models import load_policy
    from vimpo_bench.rl.steps import make_generator, render_prompt, sampling_params

    config = load_config("tiny_demo", [f"run.seed={seed}"])
    task = tasks.get(config.task.name, **config.task.options)
    policy, tokenizer = load_policy(config.model.name, cache_dir=config.model.cache_dir, task_options=config.task.options,
                                    warm_start={"steps": config.model.warm_start_steps, "seed": seed})
    policy.eval()
    generator = make_generator(config, policy, tokenizer)
    problems = task.problems("train")[: config.rollout.prompts_per_step]
    prompts = [render_prompt(config, task, p, tokenizer) for p in problems]
    params = sampling_params(config, n=config.rollout.group_size)
    batch = config.rollout.prompts_per_step * config.rollout.group_size
    new = config.rollout.max_new_tokens
    ids = tokenizer(prompts, return_tensors="pt", padding=True)["input_ids"].repeat_interleave(config.rollout.group_size, 0)

    def floor() -> float:
        with torch.no_grad():
            start = time.perf_counter()
            out = policy(input_ids=ids, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(new - 1):
                out = policy(input_ids=token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            return (time.perf_counter() - start) / (batch * new)

    def rollout() -> float:
        start = time.perf_counter()
        ro = generator.generate(prompts, params, seed=seed)
        # per generated position of every sequence, as the floor counts (a finished sequence still costs its slot)
        return (time.perf_counter() - start) / (batch * ro.response_ids.shape[1])

    rollout(), floor()  # warm-up
    ratios = [rollout() / floor() for _ in range(repeats)]
    profile = cProfile.Profile()
    profile.enable()
    rollout()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(12)
    return ratios, text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    before = load()
    print(f"load average before: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f} ({cores} cores)")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        for i in range(args.repeats):
            runs.append(one_run(i, args.steps, store, Path(tmp) / "runs"))
            print(f"  run {i}: wall {runs[-1]['wall_s']:.1f} s, RL share {runs[-1]['rl_share']:.3f}", flush=True)
    ratios, profile = rollout_vs_floor(repeats=args.repeats)
    after = load()
    print(f"RL share of the run wall (target >= 0.85): {spread([r['rl_share'] for r in runs])}")
    print(f"in-training evaluation per sequence / rollout per sequence (target <= 1.5): "
          f"{spread([r['in_training_eval_ratio'] for r in runs])}")
    print(f"final evaluation of a study cell per sequence (in the cell's process: model load, generation, grading, "
          f"MLflow run; {runs[0]['sequences']} sequences) / rollout per sequence (target <= 1.5): "
          f"{spread([r['final_eval_ratio'] for r in runs])}")
    print(f"  the same as its own `vimpo-bench eval` process, Python start-up included (for reference): "
          f"{spread([r['process_eval_ratio'] for r in runs])}; seconds: cell "
          f"{spread([r['cell_eval_s'] for r in runs], '.1f')}, process {spread([r['process_eval_s'] for r in runs], '.1f')}")
    print(f"rollout per generated token / bare KV-cache forward loop (target <= 1.3): {spread(ratios)}")
    if statistics.median(ratios) > 1.3:
        print("profile of one rollout (cumulative time), what keeps it above the floor:\n" + profile)
    print(f"load average after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    if before[0] > QUIET_LOAD or after[0] > cores + QUIET_LOAD:
        print(f"warning: the machine was not quiet (1-minute load {before[0]:.2f} before, {after[0]:.2f} after; "
              f"quiet: <= {QUIET_LOAD} before and <= {cores + QUIET_LOAD} while running): do not quote these numbers")


if __name__ == "__main__":
    main()
