"""Where VIMPO's update points: the gradient of its actor term against that of its value loss, measured on a
trained policy, next to GRPO's on the same rollouts.

Loads a training run's final policy (RUN_DIR/checkpoint/policy) and its reference (the run's warm start,
rebuilt from the config: the frozen pi_ref), draws --batches batches of rollouts from the training split as
the loop does (prompts_per_step x group_size, on-policy so pi_old = pi_theta), and for each batch takes the
gradient with respect to the policy's parameters of:

    vimpo actor (implied)   L_actor with the default implied advantage (c_V = 0)
    vimpo actor (outcome)   L_actor with A = R - Vhat (c_V = 0)
    vimpo value             c_V * L_V alone (advantage `none`), c_V = value_scale / (2 beta) as configured
    vimpo total             L_actor(implied) + c_V * L_V: what the run's optimizer saw
    grpo                    GRPO's loss at its defaults (beta 0.04, k3)

and prints the medians over batches of each gradient's norm and of the cosines between them. Read-only: the
run's checkpoint and the MLflow store are not touched.

    python scripts/grad_split.py runs/<run id> [--batches 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

from vimpo_bench import tasks as task_registry
from vimpo_bench.algorithms import Batch, get
from vimpo_bench.config import from_dict
from vimpo_bench.logprobs import token_logprobs
from vimpo_bench.models import load_policy
from vimpo_bench.steps import (
    eval_mode,
    load_starting_policy,
    make_generator,
    render_prompt,
    sampled_logprobs,
    sampling_params,
    step_seed,
)
from vimpo_bench.train import score


def flat_grad(model, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config_path = args.run_dir / "checkpoint" / "config.json"
    if not config_path.is_file():
        sys.exit(f"error: no checkpoint config at {config_path}")
    config = from_dict(json.loads(config_path.read_text()), str(config_path))
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    task = task_registry.get(config.task.name, **config.task.options)
    reference, tokenizer = load_starting_policy(config)  # the frozen pi_ref: the run's starting model
    policy, _ = load_policy(str(args.run_dir / "checkpoint" / "policy"), config.model.dtype, None)
    policy.train()
    reference.eval()
    beta = config.algo["beta"] if config.algo["name"] == "vimpo" else 0.05
    scale = config.algo.get("value_scale") or 0.5
    losses = {
        "vimpo actor (implied)": get("vimpo", beta=beta, value_coef=0.0, value_scale=None, advantage="implied"),
        "vimpo actor (outcome)": get("vimpo", beta=beta, value_coef=0.0, value_scale=None, advantage="outcome"),
        "vimpo value": get("vimpo", beta=beta, value_scale=scale, advantage="none"),
        "vimpo total": get("vimpo", beta=beta, value_scale=scale, advantage="implied"),
        "grpo": get("grpo"),
    }
    generator = make_generator(config, policy, tokenizer)
    pool = task.problems("train")
    norms: dict[str, list[float]] = {k: [] for k in losses}
    cosines: dict[tuple[str, str], list[float]] = {}
    for b in range(args.batches):
        pick = torch.Generator().manual_seed(step_seed(args.seed, 10_000 + b, 0))
        problems = [pool[i] for i in torch.randperm(len(pool), generator=pick)[: config.rollout.prompts_per_step]]
        rollouts = generator.generate([render_prompt(config, task, p, tokenizer) for p in problems],
                                      sampling_params(config, n=config.rollout.group_size),
                                      seed=step_seed(args.seed, 10_000 + b, 1))
        _, _, rewards, include = score(config, task, problems, rollouts, 10_000 + b)
        with torch.no_grad(), eval_mode(policy):
            old_logp, _ = sampled_logprobs(config, policy, rollouts)
            ref_logp, _ = sampled_logprobs(config, reference, rollouts)
        base = Batch(logp=old_logp, old_logp=old_logp, ref_logp=ref_logp, mask=rollouts.response_mask.float(),
                     rewards=rewards, group_ids=rollouts.group_ids, include=include)
        grads = {}
        for name, algo in losses.items():
            logp, _ = token_logprobs(policy, rollouts.prompt_ids, rollouts.prompt_mask, rollouts.response_ids,
                                     rollouts.response_mask, temperature=config.rollout.temperature)
            batch = dataclasses.replace(base, logp=logp).with_advantages(algo.advantages(base))
            grads[name] = flat_grad(policy, algo.loss(batch)[0])
            norms[name].append(float(grads[name].norm()))
        names = list(grads)
        for i, a in enumerate(names):
            for other in names[i + 1:]:
                cosines.setdefault((a, other), []).append(cosine(grads[a], grads[other]))
        print(f"batch {b + 1}/{args.batches}: reward mean {float(rewards.float().mean()):.3f}", file=sys.stderr)
    print(f"== {args.run_dir} ({config.algo['name']}, seed {config.run.seed}, {config.optim.steps} steps); "
          f"beta {beta}, 2 beta c_V = {scale}; medians over {args.batches} batches of "
          f"{config.rollout.prompts_per_step} x {config.rollout.group_size}")
    for name, values in norms.items():
        print(f"  |grad| {name:24} {statistics.median(values):8.3f}")
    for (a, b_), values in cosines.items():
        print(f"  cos({a}, {b_}) = {statistics.median(values):+.3f}")


if __name__ == "__main__":
    main()
