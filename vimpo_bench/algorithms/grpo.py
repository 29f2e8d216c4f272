r"""GRPO and its variants: Dr. GRPO and DAPO-style (the baselines VIMPO is compared with).

Objective (GRPO, Shao et al. 2024). Each response i of a group of G answers to one prompt gets one
outcome advantage for all its tokens,

    A_i = (R_i - mean_j R_j) / (std_j R_j + 1e-6),

used in the PPO clipped surrogate with a per-token KL penalty (k3 estimator):

    L = agg_{i,t} [ -min(rho A_i, clip(rho, 1-eps_low, 1+eps_high) A_i) + beta * k3(l_{i,t}) ]

with agg = mean over a sequence's tokens, then over sequences.
- Dr. GRPO (Liu et al. 2025): no std division (`scale="none"`); token sums divided by a constant
  (`seq-mean-token-sum-norm` with norm_len = max completion length); no KL by default. Removes the
  length and difficulty biases of GRPO.
- DAPO-style (Yu et al. 2025): clip-higher (eps_high 0.28 > eps_low 0.2), token-mean over the batch,
  no KL, and groups whose rewards are all equal dropped (dynamic sampling: they carry no signal).

How VIMPO differs: VIMPO has no group-normalized advantage and no KL penalty term; see vimpo.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vimpo_bench.algorithms.batch import Batch
from vimpo_bench.algorithms.core import (
    KL_ESTIMATORS,
    aggregate,
    check_choice,
    check_options,
    dual_clip_field,
    eps_high_field,
    eps_low_field,
    f32,
    group_mean,
    group_std,
    kl_estimate,
    norm_len_field,
    policy_stats,
    ppo_clip_loss,
    require_group_size,
)
from vimpo_bench.algorithms.registry import register
from vimpo_bench.ranges import num

SCALES = ("std", "none")


# Group reward spreads at or below this count as constant: float rewards that are equal in value can
# leave a std of ~1e-8 after the mean is subtracted, and such a group carries no signal either.
CONSTANT_GROUP_TOL = 1e-6


def advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    scale: str = "std",
    eps: float = 1e-6,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Group-relative outcome advantages. rewards, group_ids: [B] -> [B] float32.

    scale="std": (R - group mean) / (group sample std + eps) (GRPO); "none": R - group mean (Dr. GRPO).
    All-equal groups give exactly 0. `weights` [B] 0/1 leave responses out of the group statistics
    (the truncation rule `mask`); left-out responses get advantage 0.
    """
    centred = f32(rewards) - group_mean(rewards, group_ids, weights)
    if scale == "std":
        centred = centred / (group_std(rewards, group_ids, weights) + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    return centred if weights is None else centred * f32(weights)


def non_constant_groups(
    rewards: torch.Tensor, group_ids: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """[B] bool: True for responses whose group's rewards differ (spread above CONSTANT_GROUP_TOL)."""
    return group_std(rewards, group_ids, weights) > CONSTANT_GROUP_TOL


@register("grpo")
@dataclass(frozen=True)
class Grpo:
    """GRPO. beta: KL penalty coefficient (0 disables it). kl_estimator: k1 | k2 | k3.
    eps_low, eps_high: PPO clip range; dual_clip: c > 1 or None. agg: loss aggregation; norm_len: the
    constant of `seq-mean-token-sum-norm` (the trainer sets max_new_tokens; None -> padded T).
    scale: std | none. drop_constant_groups: leave out groups whose rewards are all equal.
    """

    beta: float = num(0.04, ge=0, why="0 turns the KL penalty off")
    kl_estimator: str = "k3"
    eps_low: float = eps_low_field()
    eps_high: float = eps_high_field()
    dual_clip: float | None = dual_clip_field()
    agg: str = "seq-mean-token-mean"
    norm_len: int | None = norm_len_field()
    scale: str = "std"
    drop_constant_groups: bool = False

    name = "grpo"

    def __post_init__(self) -> None:
        check_options(self)  # numbers against the ranges on the fields above (subclasses keep them)
        check_choice(self, "kl_estimator", KL_ESTIMATORS)
        check_choice(self, "scale", SCALES)

    def sequence_advantages(
        self, rewards: torch.Tensor, group_ids: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One advantage per response [B] (`weights`: see `advantages`)."""
        require_group_size(group_ids, 2, f"{self.name}'s group baseline")
        return advantages(rewards, group_ids, self.scale, weights=weights)

    def advantages(self, batch: Batch) -> torch.Tensor:
        """The response's advantage on each of its tokens [B, T]."""
        return self.sequence_advantages(batch.rewards, batch.group_ids, batch.weights).unsqueeze(1) * f32(batch.mask)

    def loss_mask(self, batch: Batch) -> torch.Tensor:
        """Tokens the loss aggregates: left-out responses and (DAPO) constant groups are zeroed."""
        mask = batch.response_mask()
        if self.drop_constant_groups:
            mask = mask * non_constant_groups(batch.rewards, batch.group_ids, batch.weights).float().unsqueeze(1)
        return mask

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        adv = batch.advantages if batch.advantages is not None else self.advantages(batch)
        mask = self.loss_mask(batch)
        per_token, clipped, ratio = ppo_clip_loss(batch.logp, batch.old_logp, adv, self.eps_low, self.eps_high, self.dual_clip)
        actor = aggregate(per_token, mask, self.agg, self.norm_len)
        kl_term = aggregate(self.beta * kl_estimate(batch.logp, batch.ref_logp, self.kl_estimator), mask, self.agg, self.norm_len)
        total = actor + kl_term if self.beta > 0 else actor
        stats = {
            "loss/total": total.item(),
            "loss/actor": actor.item(),
            "loss/kl_penalty": kl_term.item(),
            **policy_stats(batch.logp, batch.ref_logp, mask, adv, clipped, ratio),
        }
        if self.drop_constant_groups:
            stats["policy/kept_fraction"] = (mask.sum() / f32(batch.mask).sum().clamp(min=1)).item()
        return total, stats


@register("dr_grpo")
@dataclass(frozen=True)
class DrGrpo(Grpo):
    """Dr. GRPO: no std division, constant-length normalization, no KL."""

    beta: float = 0.0
    agg: str = "seq-mean-token-sum-norm"
    scale: str = "none"

    name = "dr_grpo"


@register("dapo")
@dataclass(frozen=True)
class Dapo(Grpo):
    """DAPO-style: clip-higher, token-mean over the batch, no KL, all-equal groups dropped.

    Dynamic sampling here drops the uninformative groups from the loss; it does not resample to refill
    the batch (the trainer's batch is smaller on such steps; `policy/kept_fraction` shows by how much).
    """

    beta: float = 0.0
    eps_high: float = 0.28
    agg: str = "token-mean"
    scale: str = "std"
    drop_constant_groups: bool = True

    name = "dapo"
