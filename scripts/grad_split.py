"""Where VIMPO's update points, measured so that signal can be told from sampling noise.

For each training run given (RUN_DIR: a run's folder with checkpoint/config.json and checkpoint/policy), the
script loads the final policy and its frozen reference (the run's warm start, rebuilt from the config),
draws --batches fresh on-policy batches from the training split as the loop does (prompts_per_step x
group_size; pi_old = pi_theta, dropout off), and takes on each batch the *update direction* (minus the
loss gradient) of:

    total            the run's own VIMPO loss (its advantage, aggregation, c_V): what its optimizer saw
    actor:<kind>     L_actor alone (c_V = 0) for the run's advantage and for implied, soft_rtg, residual, mc
    value            c_V L_V alone (advantage `none`)
    grpo             GRPO's loss at its defaults
and two reference directions:
    ref:reward       grad E[R]   (REINFORCE with A = R - Vhat, seq-sum)
    ref:kl           grad KL(pi || pi_ref)   (score function of the KL: the implied actor / beta)

Sound by construction: the batches are split into two disjoint halves A and B, and every cosine between
an estimator and a reference is cross-fitted, cos(mean_A(estimator), mean_B(reference)) averaged with the
halves swapped, so the two never share a batch (on one batch, a term's noise correlates with itself). Each
estimator's own noise floor is printed beside it: `self_cos`, the cosine between its half-A and half-B
means (near 0: at this many batches its direction is noise, and so is any cosine built on it), and
`chance`, the |cos| of two random directions in this many dimensions. `additivity` checks the loss
decomposition on the same batches: |total - actor:<run's kind> - value| / |total|, 0 up to rounding.

    python scripts/grad_split.py RUN_DIR [RUN_DIR ...] [--batches 8] [--seed 0] [--out table.csv]

Prints one table per run and writes every row to --out (CSV), for committing beside a results page.
Read-only: the runs' checkpoints and the MLflow store are not touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import pandas as pd
import torch

from vimpo_bench import tasks as task_registry
from vimpo_bench.algorithms import Batch, get
from vimpo_bench.config import ConfigError, from_dict
from vimpo_bench.engines.native import score
from vimpo_bench.models import load_policy
from vimpo_bench.rl.logprobs import token_logprobs
from vimpo_bench.rl.steps import (
    eval_mode,
    load_starting_policy,
    make_generator,
    render_prompt,
    sampled_logprobs,
    sampling_params,
    step_seed,
)

ACTOR_KINDS = ("implied", "soft_rtg", "residual", "mc")
REFERENCES = ("ref:reward", "ref:kl")


def update_direction(model, loss: torch.Tensor) -> torch.Tensor:
    """-grad loss over the model's parameters, flattened (the direction gradient descent moves in)."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    return -torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                       for p in model.parameters()])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.norm() == 0 or b.norm() == 0:
        return math.nan  # a zero direction has no angle: say so rather than print 0
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def losses_for(config) -> dict[str, object]:
    """The algorithms whose update directions are measured, built from the run's own VIMPO options (a GRPO
    run is measured against VIMPO at its defaults)."""
    run_algo = config.make_algorithm() if config.algo_name == "vimpo" else get("vimpo")
    actor_only = lambda kind: dataclasses.replace(run_algo, advantage=kind, value_coef=0.0)  # noqa: E731
    losses = {"total": run_algo, "value": dataclasses.replace(run_algo, advantage="none")}
    for kind in dict.fromkeys((run_algo.advantage, *ACTOR_KINDS)):
        if kind != "none":
            losses[f"actor:{kind}"] = actor_only(kind)
    losses["grpo"] = get("grpo")
    reward = dataclasses.replace(run_algo, advantage="outcome", value_coef=0.0, agg="seq-sum")
    kl = dataclasses.replace(run_algo, advantage="implied", value_coef=0.0, agg="seq-sum", lam=1.0)
    losses.update({"ref:reward": reward, "ref:kl": kl})
    return losses


def measure(run_dir: Path, batches: int, seed: int) -> pd.DataFrame:
    config_path = run_dir / "checkpoint" / "config.json"
    if not config_path.is_file():
        raise SystemExit(f"error: no checkpoint config at {config_path}")
    config = from_dict(json.loads(config_path.read_text()), str(config_path))
    torch.manual_seed(seed)
    task = task_registry.get(config.task.name, **config.task.options)
    reference, tokenizer = load_starting_policy(config)  # the frozen pi_ref: the run's starting model
    policy, _ = load_policy(str(run_dir / "checkpoint" / "policy"), config.model.dtype, None)
    policy.eval()  # dropout off in every RL forward, as in training
    reference.eval()
    losses = losses_for(config)
    generator = make_generator(config, policy, tokenizer)
    pool = task.problems("train")
    halves = {name: [None, None] for name in losses}  # summed directions over half A and half B
    norms: dict[str, list[float]] = {name: [] for name in losses}
    for b in range(batches):
        draw = 10_000 + b  # steps no training run reaches: batches the run never trained on
        pick = torch.Generator().manual_seed(step_seed(seed, draw, 0))
        problems = [pool[i] for i in torch.randperm(len(pool), generator=pick)[: config.rollout.prompts_per_step]]
        rollouts = generator.generate([render_prompt(config, task, p, tokenizer) for p in problems],
                                      sampling_params(config, n=config.rollout.group_size),
                                      seed=step_seed(seed, draw, 1))
        scored = score(config, task, problems, rollouts, draw)
        rewards, include = scored.rewards, scored.include
        with torch.no_grad():
            old_logp, _ = sampled_logprobs(config, policy, rollouts)
            ref_logp, _ = sampled_logprobs(config, reference, rollouts)
        base = Batch(logp=old_logp, old_logp=old_logp, ref_logp=ref_logp, mask=rollouts.response_mask.float(),
                     rewards=rewards, group_ids=rollouts.group_ids, include=include)
        for name, algo in losses.items():
            with eval_mode(policy):
                logp, _ = token_logprobs(policy, rollouts.prompt_ids, rollouts.prompt_mask, rollouts.response_ids,
                                         rollouts.response_mask, temperature=config.rollout.temperature)
            batch = dataclasses.replace(base, logp=logp).with_advantages(algo.advantages(base))
            direction = update_direction(policy, algo.loss(batch)[0])
            half = halves[name]
            half[b % 2] = direction if half[b % 2] is None else half[b % 2] + direction
            norms[name].append(float(direction.norm()))
        print(f"{run_dir.name}: batch {b + 1}/{batches}, reward mean {float(rewards.float().mean()):.3f}",
              file=sys.stderr)
    return table(run_dir, config, halves, norms)


def table(run_dir: Path, config, halves: dict, norms: dict) -> pd.DataFrame:
    """One row per direction: its size, its own split-half agreement and its cross-fitted cosines."""
    dims = halves["total"][0].numel()
    a = {name: h[0] / max(1, len(norms[name]) - len(norms[name]) // 2) for name, h in halves.items()}
    b = {name: h[1] / max(1, len(norms[name]) // 2) for name, h in halves.items()}
    cross = lambda x, ref: (cosine(a[x], b[ref]) + cosine(b[x], a[ref])) / 2  # noqa: E731
    run_kind = getattr(config.algo, "advantage", "implied") if config.algo_name == "vimpo" else "implied"
    both = {name: a[name] + b[name] for name in halves}  # linear in the batches: the decomposition holds here too
    actor = both.get(f"actor:{run_kind}", torch.zeros_like(both["total"]))  # absent for `none`
    residue = both["total"] - actor - both["value"]
    additivity = float(residue.norm() / both["total"].norm()) if both["total"].norm() > 0 else math.nan
    rows = []
    for name in halves:
        mean = (a[name] + b[name]) / 2
        rows.append({
            "run": run_dir.name, "algo": config.algo_name, "advantage": run_kind, "seed": config.run.seed,
            "direction": name, "mean_norm": float(mean.norm()),
            "batch_norm_median": float(pd.Series(norms[name]).median()),
            "self_cos": cosine(a[name], b[name]),
            "cos_reward": math.nan if name == "ref:reward" else cross(name, "ref:reward"),
            "cos_kl_ascent": math.nan if name == "ref:kl" else cross(name, "ref:kl"),
            "cos_total": math.nan if name == "total" else cross(name, "total"),
            "chance": math.sqrt(2 / (math.pi * dims)), "batches": len(norms[name]), "additivity": additivity,
        })
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--batches", type=int, default=8, help="on-policy batches per run, split in two halves")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write every row to this CSV file")
    args = parser.parse_args()
    if args.batches < 2:
        raise SystemExit("error: --batches must be at least 2 (two disjoint halves)")
    torch.set_num_threads(1)
    try:
        frames = [measure(run_dir, args.batches, args.seed) for run_dir in args.run_dirs]
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    result = pd.concat(frames, ignore_index=True)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        for run, rows in result.groupby("run", sort=False):
            print(f"== {run} ({rows.algo.iloc[0]}, advantage {rows.advantage.iloc[0]}, seed {rows.seed.iloc[0]}); "
                  f"{rows.batches.iloc[0]} batches, additivity {rows.additivity.iloc[0]:.1e}, "
                  f"chance |cos| {rows.chance.iloc[0]:.4f}")
            print(rows[["direction", "mean_norm", "batch_norm_median", "self_cos", "cos_reward", "cos_kl_ascent",
                        "cos_total"]].to_string(index=False))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        result.to_csv(tmp, index=False, float_format="%.6g")
        tmp.replace(args.out)  # never a half-written table
        print(f"wrote {len(result)} rows to {args.out}")


if __name__ == "__main__":
    main()
