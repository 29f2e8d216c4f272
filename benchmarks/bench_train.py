"""Training benchmarks of the issue's targets (prints numbers):

1. the default demo (tiny_demo: VIMPO on arith) with a cached warm start: wall time per seed and the
   validation sampled- and greedy-accuracy gains over the warm start (targets, issue 21: the sampled gain
   >= 5 points in the mean of the seeds and > 0 on each, the greedy gain >= 0 in the mean; <= 10 min a run
   with its warm start on a fresh machine);
2. the cost of a VIMPO step against a GRPO step at the same settings, with the step split
   (rollout, scoring, log-probs, update) and tokens per second (target: VIMPO <= 1.05x GRPO).

    python benchmarks/bench_train.py [--seeds 0 1 2] [--steps 80] [--cost-steps 10] [--skip-demo]

Runs record nothing to MLflow (NullTracker); the warm start is built once if not cached.
"""

from __future__ import annotations

import argparse
import statistics
import time

from vimpo_bench.config import load_config
from vimpo_bench.engines.native import train

SPLIT = ("perf/rollout_s", "perf/scoring_s", "perf/logprob_s", "perf/update_s", "perf/step_s", "perf/tokens_per_s")


def demo(seeds: list[int], steps: int) -> None:
    print(f"== tiny_demo, {steps} steps, seeds {seeds}")
    load_config("tiny_demo")  # validate before any work
    gains, greedy_gains, walls = [], [], []
    for seed in seeds:
        config = load_config("tiny_demo", [f"run.seed={seed}", f"optim.steps={steps}"])
        train(load_config("tiny_demo", [f"run.seed={seed}", "optim.steps=0"]))  # warm start cached, not timed
        start = time.perf_counter()
        result = train(config)
        wall = time.perf_counter() - start
        s0, s1 = result.initial["val/sampled_accuracy"], result.final["val/sampled_accuracy"]
        g0, g1 = result.initial["val/greedy_accuracy"], result.final["val/greedy_accuracy"]
        gains.append(s1 - s0)
        greedy_gains.append(g1 - g0)
        walls.append(wall)
        print(f"  seed {seed}: {wall:6.1f} s  sampled {s0:.3f} -> {s1:.3f}  greedy {g0:.3f} -> {g1:.3f}")
    print(f"  mean sampled-accuracy gain {100 * statistics.mean(gains):+.1f} points (target >= +5), "
          f"on each seed > 0: {all(g > 0 for g in gains)}; mean greedy gain {100 * statistics.mean(greedy_gains):+.1f} "
          f"points (target >= 0); mean wall {statistics.mean(walls):.1f} s without the warm start")


def step_cost(steps: int) -> None:
    """Both algorithms update the SAME batches, alternating which goes first, so that the comparison is
    not confounded by response lengths (the two policies drift apart) or by load changing between runs.
    Rollout, scoring and log-probs do not depend on the algorithm and are timed once per step."""
    import copy
    import random

    import torch

    from vimpo_bench import tasks
    from vimpo_bench.algorithms import Batch
    from vimpo_bench.engines.native import (
        make_generator,
        ppo_update,
        render_prompt,
        sampled_logprobs,
        sampling_params,
        step_seed,
    )
    from vimpo_bench.models import frozen_copy, load_policy
    from vimpo_bench.rl.rewards import truncation_rule, verifier_rewards

    print(f"== step cost, {steps} steps: the same batch through a GRPO and a VIMPO update, order alternating")
    config = load_config("tiny_demo", ["eval.every=0"])
    torch.manual_seed(0)
    random.seed(0)
    task = tasks.get(config.task.name, **config.task.options)
    pool = task.problems("train")
    policy, tokenizer = load_policy(config.model.name, cache_dir=config.model.cache_dir,
                                    task_options=config.task.options,
                                    warm_start={"steps": config.model.warm_start_steps, "seed": 0})
    reference = frozen_copy(policy)
    generator = make_generator(config, policy, tokenizer)
    algos = {name: load_config("tiny_demo", [f"algo.name={name}"]).make_algorithm() for name in ("grpo", "vimpo")}
    shared = {"rollout": [], "scoring": [], "logprob": [], "tokens": []}
    update = {name: [] for name in algos}
    for step in range(steps + 1):  # step 0 warms up and is not counted
        t0 = time.perf_counter()
        pick = torch.Generator().manual_seed(step_seed(0, step, 0))
        problems = [pool[i] for i in torch.randperm(len(pool), generator=pick)[: config.rollout.prompts_per_step]]
        ro = generator.generate([render_prompt(config, task, p, tokenizer) for p in problems],
                                sampling_params(config, n=config.rollout.group_size),
                                seed=step_seed(0, step, 1))
        t1 = time.perf_counter()
        graded = verifier_rewards(task, ro.texts, [problems[int(g)] for g in ro.group_ids])
        rewards, include = truncation_rule(graded, ro.truncated, config.reward.truncated)
        t2 = time.perf_counter()
        with torch.no_grad():
            old_logp, _ = sampled_logprobs(config, policy, ro, with_entropy=True)
            ref_logp, _ = sampled_logprobs(config, reference, ro)
        t3 = time.perf_counter()
        order = list(algos) if step % 2 == 0 else list(reversed(algos))
        updated = {}
        for name in order:
            model = copy.deepcopy(policy)
            optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
            start = time.perf_counter()
            full = Batch(logp=old_logp, old_logp=old_logp, ref_logp=ref_logp, mask=ro.response_mask.float(),
                         rewards=rewards, group_ids=ro.group_ids, include=include)
            full = full.with_advantages(algos[name].advantages(full))
            ppo_update(config, algos[name], model, optimizer, scheduler, ro, full, step)
            if step:
                update[name].append(time.perf_counter() - start)
            updated[name] = model
        policy.load_state_dict(updated["vimpo"].state_dict())  # the run follows VIMPO
        if step:
            shared["rollout"].append(t1 - t0)
            shared["scoring"].append(t2 - t1)
            shared["logprob"].append(t3 - t2)
            shared["tokens"].append(ro.prompt_mask.sum().item() + ro.response_mask.sum().item())
    common = {k: statistics.median(v) for k, v in shared.items()}
    base = common["rollout"] + common["scoring"] + common["logprob"]
    totals = {}
    for name in algos:
        u = statistics.median(update[name])
        totals[name] = base + u
        print(f"  {name:6s} step {totals[name]:.2f} s = rollout {common['rollout']:.2f} + scoring {common['scoring']:.3f} "
              f"+ log-probs {common['logprob']:.2f} + update {u:.2f} (median of {steps}); "
              f"{common['tokens'] / totals[name]:.0f} tokens/s")
    ratio_update = statistics.median(v / g for v, g in zip(update["vimpo"], update["grpo"], strict=True))
    print(f"  VIMPO / GRPO: step {totals['vimpo'] / totals['grpo']:.3f} (target <= 1.05), update "
          f"{ratio_update:.3f} (median of per-batch ratios)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--cost-steps", type=int, default=10)
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    if not args.skip_demo:
        demo(args.seeds, args.steps)
    step_cost(args.cost_steps)


if __name__ == "__main__":
    main()
