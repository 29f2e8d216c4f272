"""What one RL step is, whichever engine drives it: the engine-neutral pieces, written once.

    seed_process(config)                           # threads and the run's seeds, before anything is built
    algo = algorithm_at(config, step)              # the beta schedule and Dr. GRPO's constant, applied here only
    scored = rewards_of(config, graded, truncated, lengths, step)  # truncation rule, noise, length penalty
    metrics = reward_metrics(scored)               # reward/*, rollout/truncation_rate and response lengths
    keep = informative_groups(scored, group_ids)   # DAPO's dynamic sampling: the groups that are not constant
    for epoch_order in group_orders(config, step, groups): ...   # whole groups, shuffled per epoch

The native loop (vimpo_bench/engines/native.py) and the trl engine (vimpo_bench/engines/trl_trainer.py) both call
these; neither re-implements any of them, so a fix here is a fix in both, and the engine parity test
(tests/test_trl_engine.py) holds them to the same losses and gradients.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from vimpo_bench.algorithms.grpo import non_constant_groups
from vimpo_bench.config import Config
from vimpo_bench.rl.reference import beta_at
from vimpo_bench.rl.rewards import noisy_rewards, overlong_penalty, truncation_rule
from vimpo_bench.rl.steps import step_seed

# Streams of `steps.step_seed(run seed, step, stream)`: each draw of a step has its own, so a resumed run
# redraws exactly what the killed one drew (prompts 0, sampling 1, noise 2, shuffle 3, evaluation 4-5, the
# dynamic-sampling refill rounds 6: `refill_seed`).
PROMPTS, SAMPLING, NOISE, SHUFFLE, REFILL = 0, 1, 2, 3, 6


def refill_seed(seed: int, step: int, round_: int, stream: int) -> int:
    """The seed of draw `stream` (PROMPTS, SAMPLING or NOISE) in refill round `round_` >= 1 of a step; round 0 is
    the step's own draw, `step_seed(seed, step, stream)`."""
    if round_ == 0:
        return step_seed(seed, step, stream)
    return step_seed(seed, step, REFILL) * 1024 + round_ * 4 + stream


def seed_process(config: Config) -> None:
    """Torch threads (run.threads) and the run's seed in torch and random, before the model is built."""
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    random.seed(config.run.seed)


def algorithm_at(config: Config, step: int):
    """The algorithm of step `step`: beta from the schedule (the one place it is applied), and Dr. GRPO's
    normalizing constant as the longest possible completion, not the batch's padded length."""
    beta = beta_at(config.beta_schedule.kind, config.algo.beta, config.beta_schedule.final, step, config.optim.steps)
    algo = config.make_algorithm(beta=beta)  # config.algo is the algorithm's typed options (Vimpo, Grpo, ...)
    if getattr(algo, "norm_len", 0) is None:
        algo = dataclasses.replace(algo, norm_len=config.rollout.max_new_tokens)
    return algo


@dataclass(frozen=True)
class Scored:
    """A step's responses scored, in prompt order: `graded` the grader's verdict, `clean` after the truncation
    rule (the on-policy accuracy), `rewards` after the noise model (what the algorithm trains on), `include`
    the rows the losses use (None: all), `truncated` the rows cut at max_new_tokens, `lengths` the response
    lengths in tokens, `penalty` the soft overlong penalty included in `rewards` (zeros under other rules)."""

    graded: torch.Tensor
    clean: torch.Tensor
    rewards: torch.Tensor
    include: torch.Tensor | None
    truncated: torch.Tensor
    lengths: torch.Tensor
    penalty: torch.Tensor

    @property
    def kept(self) -> torch.Tensor:
        return torch.ones_like(self.clean, dtype=torch.bool) if self.include is None else self.include


def rewards_of(config: Config, graded: torch.Tensor, truncated: torch.Tensor, lengths: torch.Tensor, step: int,
               round_: int = 0) -> Scored:
    """One rule for every algorithm, before the noise: the truncation rule (`reward.truncated`), then the noise
    model, drawn for the whole step's rows in prompt order (seeded by run seed, step and refill round), so the
    draws do not depend on the engine or the number of processes; under `soft_overlong` the length penalty is
    added last (a measured length, not a judged answer: the noise model does not flip it)."""
    clean, include = truncation_rule(graded, truncated, config.reward.truncated)
    noise = torch.Generator().manual_seed(refill_seed(config.run.seed, step, round_, NOISE))
    rewards = noisy_rewards(clean, config.reward.noise, noise, config.reward.p, config.reward.fp, config.reward.fn)
    penalty = torch.zeros_like(clean)
    if config.reward.truncated == "soft_overlong":
        penalty = overlong_penalty(lengths, config.rollout.max_new_tokens, config.reward.overlong_buffer)
    return Scored(graded, clean, rewards + penalty, include, truncated, lengths.float(), penalty)


def concat_scored(parts: list[Scored]) -> Scored:
    """Scored batches one after the other (a step's refill rounds)."""
    include = [p.kept for p in parts] if any(p.include is not None for p in parts) else None
    fields = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Scored)
              if f.name != "include"}
    return Scored(**fields, include=None if include is None else torch.cat(include))


def select_scored(scored: Scored, rows: torch.Tensor) -> Scored:
    """The rows `rows` of a scored batch."""
    return Scored(**{f.name: None if (v := getattr(scored, f.name)) is None else v[rows]
                     for f in dataclasses.fields(Scored)})


def informative_groups(scored: Scored, group_ids: torch.Tensor) -> torch.Tensor:
    """Group ids (sorted) whose kept responses' trained rewards are not all equal (DAPO's test, the one its loss
    uses: a spread above CONSTANT_GROUP_TOL): the groups dynamic sampling keeps."""
    weights = None if scored.include is None else scored.include.float()
    rows = non_constant_groups(scored.rewards, group_ids, weights)
    return torch.unique(group_ids[rows])


def reward_metrics(scored: Scored) -> dict[str, float]:
    kept = scored.kept
    return {
        **length_metrics(scored),
        "reward/trained_mean": scored.rewards[kept].mean().item() if kept.any() else float("nan"),
        "reward/clean_mean": scored.clean[kept].mean().item() if kept.any() else float("nan"),
        "reward/flip_rate": (scored.rewards != scored.clean).float().mean().item(),
        "reward/truncated_passed_rate": (scored.graded.bool() & scored.truncated).float().mean().item(),
        "reward/kept_fraction": kept.float().mean().item(),
        "rollout/truncation_rate": scored.truncated.float().mean().item(),
        "reward/length_penalty_mean": scored.penalty.mean().item(),
    }


def length_metrics(scored: Scored) -> dict[str, float]:
    """Response lengths (tokens, EOS included) of the step: min, max, and the means of the responses the grader
    passed and failed (nan when there are none), the usual sign of a policy that learns to ramble or to stop."""
    lengths, passed = scored.lengths, scored.graded.bool()
    mean_of = lambda rows: lengths[rows].mean().item() if rows.any() else float("nan")  # noqa: E731
    return {
        "rollout/response_len_min": lengths.min().item(),
        "rollout/response_len_max": lengths.max().item(),
        "rollout/response_len_correct": mean_of(passed),
        "rollout/response_len_incorrect": mean_of(~passed),
    }


def group_orders(config: Config, step: int, groups: torch.Tensor):
    """The groups in the order each PPO epoch visits them (shuffled per epoch, seeded by run seed and step)."""
    shuffle = torch.Generator().manual_seed(step_seed(config.run.seed, step, SHUFFLE))
    for _epoch in range(config.optim.epochs):
        yield groups[torch.randperm(len(groups), generator=shuffle)]
