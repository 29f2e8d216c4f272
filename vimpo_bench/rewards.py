"""Verifier rewards and the reward-noise models (training only; evaluation uses the clean verifier).

- `symmetric(p)`: flip a binary reward with probability p;
- `asymmetric(fp, fn)`: a wrong answer is rewarded with probability fp, a right one denied with
  probability fn.
"""

from __future__ import annotations

import torch

NOISE_MODELS = ("none", "symmetric", "asymmetric")


def verifier_rewards(task, completions: list[str], problems: list) -> torch.Tensor:
    """1.0 where the task's grader accepts the completion, else 0.0. -> [B] float32."""
    return torch.tensor([1.0 if task.grade(c, p) else 0.0 for c, p in zip(completions, problems, strict=True)])


def noisy_rewards(
    clean: torch.Tensor, noise: str, generator: torch.Generator, p: float = 0.0, fp: float = 0.0, fn: float = 0.0
) -> torch.Tensor:
    """Apply a noise model to binary rewards [B] with draws from `generator` (one uniform per reward)."""
    u = torch.rand(clean.shape, generator=generator)
    correct = clean > 0.5
    if noise == "none":
        return clean.clone()
    if noise == "symmetric":
        flip = u < p
    elif noise == "asymmetric":
        flip = torch.where(correct, u < fn, u < fp)
    else:
        raise ValueError(f"unknown reward noise {noise!r}; valid: {', '.join(NOISE_MODELS)}")
    return torch.where(flip, 1.0 - clean, clean)
