"""What one RL step is, whichever engine drives it: the engine-neutral pieces, written once.

    seed_process(config)                           # threads and the run's seeds, before anything is built
    algo = algorithm_at(config, step)              # the beta schedule and Dr. GRPO's constant, applied here only
    scored = rewards_of(config, graded, truncated, step)   # truncation rule, then noise: what the algorithm sees
    metrics = reward_metrics(scored)               # reward/*, rollout/truncation_rate
    for epoch_order in group_orders(config, step, groups): ...   # whole groups, shuffled per epoch

The native loop (vimpo_bench/train.py) and the trl engine (vimpo_bench/engines/trl_trainer.py) both call
these; neither re-implements any of them, so a fix here is a fix in both, and the engine parity test
(tests/test_trl_engine.py) holds them to the same losses and gradients.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from vimpo_bench.config import Config
from vimpo_bench.reference import beta_at
from vimpo_bench.rewards import noisy_rewards, truncation_rule
from vimpo_bench.steps import step_seed

# Streams of `steps.step_seed(run seed, step, stream)`: each draw of a step has its own, so a resumed run
# redraws exactly what the killed one drew (prompts 0, sampling 1, noise 2, shuffle 3, evaluation 4-5).
NOISE, SHUFFLE = 2, 3


def seed_process(config: Config) -> None:
    """Torch threads (run.threads) and the run's seed in torch and random, before the model is built."""
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    random.seed(config.run.seed)


def algorithm_at(config: Config, step: int):
    """The algorithm of step `step`: beta from the schedule (the one place it is applied), and Dr. GRPO's
    normalizing constant as the longest possible completion, not the batch's padded length."""
    beta = beta_at(config.beta_schedule.kind, config.algo["beta"], config.beta_schedule.final, step, config.optim.steps)
    algo = config.make_algorithm(beta=beta)
    if "norm_len" in config.algo and config.algo["norm_len"] is None:
        algo = dataclasses.replace(algo, norm_len=config.rollout.max_new_tokens)
    return algo


@dataclass(frozen=True)
class Scored:
    """A step's responses scored, in prompt order: `graded` the grader's verdict, `clean` after the truncation
    rule (the on-policy accuracy), `rewards` after the noise model (what the algorithm trains on), `include`
    the rows the losses use (None: all), `truncated` the rows cut at max_new_tokens."""

    graded: torch.Tensor
    clean: torch.Tensor
    rewards: torch.Tensor
    include: torch.Tensor | None
    truncated: torch.Tensor

    @property
    def kept(self) -> torch.Tensor:
        return torch.ones_like(self.clean, dtype=torch.bool) if self.include is None else self.include


def rewards_of(config: Config, graded: torch.Tensor, truncated: torch.Tensor, step: int) -> Scored:
    """One rule for every algorithm, before the noise: the truncation rule (`reward.truncated`), then the noise
    model, drawn for the whole step's rows in prompt order (seeded by run seed and step), so the draws do not
    depend on the engine or the number of processes."""
    clean, include = truncation_rule(graded, truncated, config.reward.truncated)
    noise = torch.Generator().manual_seed(step_seed(config.run.seed, step, NOISE))
    rewards = noisy_rewards(clean, config.reward.noise, noise, config.reward.p, config.reward.fp, config.reward.fn)
    return Scored(graded, clean, rewards, include, truncated)


def reward_metrics(scored: Scored) -> dict[str, float]:
    kept = scored.kept
    return {
        "reward/trained_mean": scored.rewards[kept].mean().item() if kept.any() else float("nan"),
        "reward/clean_mean": scored.clean[kept].mean().item() if kept.any() else float("nan"),
        "reward/flip_rate": (scored.rewards != scored.clean).float().mean().item(),
        "reward/truncated_passed_rate": (scored.graded.bool() & scored.truncated).float().mean().item(),
        "reward/kept_fraction": kept.float().mean().item(),
        "rollout/truncation_rate": scored.truncated.float().mean().item(),
    }


def group_orders(config: Config, step: int, groups: torch.Tensor):
    """The groups in the order each PPO epoch visits them (shuffled per epoch, seeded by run seed and step)."""
    shuffle = torch.Generator().manual_seed(step_seed(config.run.seed, step, SHUFFLE))
    for _epoch in range(config.optim.epochs):
        yield groups[torch.randperm(len(groups), generator=shuffle)]
