"""The batch every algorithm consumes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Batch:
    """Tensors of one batch of responses (B responses, T padded response positions).

    logp       [B, T]  log pi_theta(a_t | s_t) of the sampled tokens (carries the gradient)
    old_logp   [B, T]  log pi_old, the policy that sampled the batch (no gradient)
    ref_logp   [B, T]  log pi_ref (no gradient)
    mask       [B, T]  1 on response tokens, 0 on padding
    rewards    [B]     outcome reward of each response (the one the algorithm trains on)
    group_ids  [B]     int; responses to the same prompt share an id
    include    [B]     optional bool: responses the losses and group baselines use (None = all). The
                       trainer's truncation rule `mask` leaves truncated responses out this way; the
                       rule `zero_reward` keeps them with R = 0 (set when the batch is scored)
    advantages [B, T]  optional precomputed advantages (computed once over the whole batch, then
                       carried into minibatches); None -> the algorithm computes them
    """

    logp: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    group_ids: torch.Tensor
    include: torch.Tensor | None = None
    advantages: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.logp.shape
        if self.logp.dim() != 2:
            raise ValueError(f"logp must be [B, T], got shape {tuple(shape)}")
        for name in ("old_logp", "ref_logp", "mask"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {tuple(shape)}")
        for name in ("rewards", "group_ids"):
            if getattr(self, name).shape != (shape[0],):
                raise ValueError(f"{name} must be [B] = [{shape[0]}], got {tuple(getattr(self, name).shape)}")
        if self.include is not None and self.include.shape != (shape[0],):
            raise ValueError(f"include must be [B] = [{shape[0]}], got {tuple(self.include.shape)}")
        if self.advantages is not None and self.advantages.shape != shape:
            raise ValueError(f"advantages must be [B, T] = {tuple(shape)}, got {tuple(self.advantages.shape)}")

    @property
    def weights(self) -> torch.Tensor | None:
        """[B] float 0/1 weights of `include` for the group statistics, or None (every response counts)."""
        return None if self.include is None else self.include.float()

    def response_mask(self) -> torch.Tensor:
        """[B, T] float: `mask` with the left-out responses' tokens zeroed (what the losses aggregate)."""
        mask = self.mask.float()
        return mask if self.include is None else mask * self.include.float().unsqueeze(1)

    def with_advantages(self, advantages: torch.Tensor) -> Batch:
        return replace(self, advantages=advantages)

    def select(self, rows: torch.Tensor) -> Batch:
        """The sub-batch of the given row indices (for minibatches; keep whole groups together)."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return Batch(
            logp=self.logp[rows],
            old_logp=self.old_logp[rows],
            ref_logp=self.ref_logp[rows],
            mask=self.mask[rows],
            rewards=self.rewards[rows],
            group_ids=self.group_ids[rows],
            include=pick(self.include),
            advantages=pick(self.advantages),
        )
