"""Reference-policy schedules (moving pi_ref ablations) and beta schedules.

pi_ref schedules: `frozen` (default), `hard(every=N)`: pi_ref <- pi_theta every N steps,
`ema(alpha, every=N)`: pi_ref <- alpha pi_theta + (1 - alpha) pi_ref every N steps.
beta schedules: `constant`, `linear` and `cosine` anneal from the initial to the final beta.
Each pi_ref change redefines the zero point of VIMPO's implied value; the trainer logs L_V and the
terminal residual just before and after each update.
"""

from __future__ import annotations

import math

import torch


def is_ref_update_step(schedule: str, every: int, step: int) -> bool:
    """True after RL step `step` (1-based count of completed steps) when pi_ref moves."""
    return schedule != "frozen" and step > 0 and step % every == 0


@torch.no_grad()
def update_reference(ref_model: torch.nn.Module, policy: torch.nn.Module, schedule: str, alpha: float) -> None:
    """Move pi_ref's parameters toward the policy's in place: copy (hard) or interpolate (ema)."""
    if schedule == "frozen":
        return
    weight = 1.0 if schedule == "hard" else alpha
    ref_params = dict(ref_model.named_parameters())
    for name, param in policy.named_parameters():
        target = ref_params[name]
        target.lerp_(param.detach().to(target.dtype), weight)


def beta_at(kind: str, beta0: float, final: float | None, step: int, total: int) -> float:
    """beta at RL step `step` of `total`: constant, or linear / cosine anneal from beta0 to final."""
    if kind == "constant" or final is None or total <= 1:
        return beta0
    frac = min(max(step / (total - 1), 0.0), 1.0)
    if kind == "linear":
        return beta0 + (final - beta0) * frac
    if kind == "cosine":
        return final + (beta0 - final) * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown beta schedule {kind!r}; valid: constant, linear, cosine")


def lr_factor(kind: str, step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier at optimizer step `step`: linear warmup, then constant / linear / cosine to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    frac = min((step - warmup) / max(total - warmup, 1), 1.0)
    if kind == "linear":
        return 1.0 - frac
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown lr schedule {kind!r}; valid: constant, linear, cosine")
