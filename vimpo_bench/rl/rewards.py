"""Verifier rewards and the reward-noise models (training only; evaluation uses the clean verifier).

- `symmetric(p)`: flip a binary reward with probability p;
- `asymmetric(fp, fn)`: a wrong answer is rewarded with probability fp, a right one denied with
  probability fn.

Truncated responses (no EOS within the length limit) follow ONE rule for every algorithm, applied when
the batch is scored and before any noise (`truncation_rule`): the grader alone can pass a cut response
(a repeated final answer with no EOS), and noise must not flip a reward the rule has already decided.
- `zero_reward` (default): terminal with R = 0;
- `mask`: left out of the losses and the group baselines (`Batch.include`);
- `soft_overlong` (DAPO's soft overlong punishment): the verdict is kept and `overlong_penalty` is added to
  every response by its length, after the noise (the length is measured, not judged, so it is never noised).
"""

from __future__ import annotations

import torch

NOISE_MODELS = ("none", "symmetric", "asymmetric")
TRUNCATION_RULES = ("zero_reward", "mask", "soft_overlong")


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


def truncation_rule(
    clean: torch.Tensor, truncated: torch.Tensor, rule: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply the truncation rule to verifier rewards. clean [B] float, truncated [B] bool.

    Returns (rewards [B], include [B] bool or None): `zero_reward` sets R = 0 where truncated and
    includes everything (None); `mask` keeps R and returns include = not truncated; `soft_overlong` keeps R
    and everything (its penalty is added separately, `overlong_penalty`).
    """
    if rule == "soft_overlong":
        return clean.clone(), None
    if rule == "zero_reward":
        return torch.where(truncated, torch.zeros_like(clean), clean), None
    if rule == "mask":
        return clean.clone(), ~truncated
    raise ValueError(f"unknown truncation rule {rule!r}; valid: {', '.join(TRUNCATION_RULES)}")


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment for response lengths [B] (tokens): 0 up to max_len - buffer, then falling
    linearly to -1 at max_len (a response cut at the limit gets the whole -1). -> [B] float32."""
    excess = (lengths.float() - (max_len - buffer)).clamp(min=0)
    return -(excess / buffer).clamp(max=1.0)
