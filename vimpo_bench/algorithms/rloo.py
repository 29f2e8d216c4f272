r"""RLOO: REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024) in the PPO-clip frame.

Objective: each response's advantage is its reward minus the mean reward of the *other* responses to
the same prompt,

    A_i = R_i - mean_{j != i} R_j = G / (G - 1) * (R_i - mean_j R_j),

an unbiased baseline (it does not depend on the response itself), used for every token in the PPO
clipped surrogate with an optional KL penalty (beta, off by default), sequence-mean aggregation.
How it differs from GRPO: no std division and an unbiased leave-one-out baseline. VIMPO: see vimpo.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vimpo_bench.algorithms.core import f32, group_count, group_sum, require_group_size
from vimpo_bench.algorithms.grpo import Grpo
from vimpo_bench.algorithms.registry import register


def advantages(rewards: torch.Tensor, group_ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Leave-one-out advantages. rewards, group_ids: [B] -> [B] float32 (groups need >= 2 members).

    `weights` [B] 0/1 leave responses out (the truncation rule `mask`): they get 0 and are nobody's
    baseline; a response with no included partner has no baseline and gets 0 too.
    """
    require_group_size(group_ids, 2, "RLOO's leave-one-out baseline")
    r = f32(rewards)
    w = torch.ones_like(r) if weights is None else f32(weights)
    partners = group_count(group_ids, w) - w
    others = (group_sum(r, group_ids, w) - w * r) / partners.clamp(min=1.0)
    return torch.where(partners > 0, r - others, torch.zeros_like(r)) * w


@register("rloo")
@dataclass(frozen=True)
class Rloo(Grpo):
    """RLOO; the PPO and KL options are GRPO's (`scale` is unused)."""

    beta: float = 0.0
    scale: str = "none"

    name = "rloo"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale != "none":
            raise ValueError(f"algo.scale: must be 'none' for rloo (its leave-one-out advantage is never divided by a "
                             f"std), got {self.scale!r}")

    def sequence_advantages(
        self, rewards: torch.Tensor, group_ids: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return advantages(rewards, group_ids, weights)
