"""Shared pure tensor math: masked reductions, group statistics, the PPO clipped surrogate,
loss aggregation and KL estimators.

Every function is pure (tensors in, tensors out), accumulates in float32 whatever dtype arrives,
and treats `mask` [B, T] as 1 on response tokens and 0 on padding.
"""

from __future__ import annotations

import torch

from vimpo_bench import ranges
from vimpo_bench.ranges import num

AGGREGATIONS = ("token-mean", "seq-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")

# exp() of a log-ratio beyond this overflows float32 products quickly; verl clamps at the same place.
MAX_LOG_RATIO = 20.0


def f32(x: torch.Tensor) -> torch.Tensor:
    """Float32 view of x: all accumulation happens in float32, even for bf16 log-probs."""
    return x if x.dtype == torch.float32 else x.float()


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x where mask is 1. x, mask: same shape."""
    prod = f32(x) * f32(mask)
    return prod.sum() if dim is None else prod.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x where mask is 1; 0 (not NaN) where the mask is empty."""
    count = f32(mask).sum() if dim is None else f32(mask).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population standard deviation of x over the masked entries (a scalar)."""
    mean = masked_mean(x, mask)
    return masked_mean((f32(x) - mean) ** 2, mask).sqrt()


def group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids [B] to dense indices 0..G-1. Returns (index [B], G)."""
    unique, index = torch.unique(group_ids, return_inverse=True)
    return index, int(unique.numel())


def group_sum(values: torch.Tensor, group_ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """For each response, the (weighted) sum of `values` over its group. values, group_ids: [B] -> [B]."""
    index, n_groups = group_index(group_ids)
    v = f32(values) if weights is None else f32(values) * f32(weights)
    totals = torch.zeros(n_groups, dtype=torch.float32, device=v.device).index_add_(0, index, v)
    return totals[index]


def group_count(group_ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """For each response, how many (weighted) responses its group has. [B] -> [B] float32."""
    ones = torch.ones_like(group_ids, dtype=torch.float32)
    return group_sum(ones, group_ids, weights)


def group_mean(values: torch.Tensor, group_ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """For each response, the mean of `values` over its group (members with weight 0 left out). [B] -> [B]."""
    return group_sum(values, group_ids, weights) / group_count(group_ids, weights).clamp(min=1.0)


def group_std(values: torch.Tensor, group_ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """For each response, the sample (n-1) standard deviation of `values` over its group. [B] -> [B].

    Sample std as TRL's GRPO uses (torch.std). Members with weight 0 are left out (n counts the rest).
    Groups of one have no std: callers must reject them (or, with weights, give them no advantage).
    """
    mean = group_mean(values, group_ids, weights)
    sq = group_sum((f32(values) - mean) ** 2, group_ids, weights)
    return (sq / (group_count(group_ids, weights) - 1.0).clamp(min=1.0)).sqrt()


def require_group_size(group_ids: torch.Tensor, minimum: int, why: str) -> None:
    """Fail clearly when a group has fewer than `minimum` responses."""
    _, counts = torch.unique(group_ids, return_counts=True)
    if counts.numel() and int(counts.min()) < minimum:
        raise ValueError(f"{why} needs at least {minimum} responses per prompt; a group has {int(counts.min())}")


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate loss (to minimize).

        rho = exp(logp - old_logp);  loss = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)
        dual clip (c > 1, Ye et al. 2020): for A < 0, loss = min(loss, -c A), bounding the loss of a
        token whose ratio has run far past 1 + eps.

    Args: logp, old_logp, advantages [B, T]. Returns (loss [B, T], clipped [B, T] bool, ratio [B, T]).
    `clipped` marks tokens whose gradient the clip removed.
    """
    log_ratio = (f32(logp) - f32(old_logp)).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    adv = f32(advantages)
    unclipped = ratio * adv
    clipped_obj = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped_obj)
    clipped = clipped_obj < unclipped
    if dual_clip is not None:
        bound = -dual_clip * adv
        dual = (adv < 0) & (loss > bound)
        loss = torch.where(dual, bound, loss)
        clipped = clipped | dual
    return loss, clipped, ratio


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, norm_len: float | None = None) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    - `token-mean`: sum over all tokens / number of tokens (DAPO);
    - `seq-sum`: a sequence's token sum, then the mean over sequences: per response the same scale as
      VIMPO's L_V (a mean over responses), so the actor term is not shrunk by ~1/T next to it;
    - `seq-mean-token-mean`: mean over a sequence's tokens, then over sequences (GRPO);
    - `seq-mean-token-sum-norm`: a sequence's token sum divided by the constant `norm_len`
      (max completion length), then the mean over sequences (Dr. GRPO: no length bias).
    The means over sequences count the sequences that have any token: a left-out response (its mask
    zeroed: truncated under `mask`, a dropped constant group) is not a sequence of the batch.
    Empty masks give 0, not NaN.
    """
    if mode == "token-mean":
        return masked_mean(per_token, mask)
    sums = masked_sum(per_token, mask, dim=1)
    lengths = f32(mask).sum(1)
    kept = (lengths > 0).float()
    n_kept = kept.sum().clamp(min=1.0)
    if mode == "seq-sum":
        return (sums * kept).sum() / n_kept
    if mode == "seq-mean-token-mean":
        return (sums / lengths.clamp(min=1.0) * kept).sum() / n_kept
    if mode == "seq-mean-token-sum-norm":
        constant = float(norm_len) if norm_len else float(mask.shape[1])
        return (sums * kept).sum() / constant / n_kept
    raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from tokens sampled from pi_theta.

    With l = log pi_theta - log pi_ref (Schulman, "Approximating KL divergence"):
      k1 = l                  (unbiased, high variance, can be negative)
      k2 = l^2 / 2            (biased, low variance; its gradient is the reverse-KL gradient)
      k3 = exp(-l) + l - 1    (unbiased, always >= 0; the GRPO penalty)
    l is clamped to +-20 so exp() stays finite. Returns [B, T] float32.
    """
    log_ratio = (f32(logp) - f32(ref_logp)).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")


def whiten_batch(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Divide advantages by their standard deviation over the batch's response tokens (no centring)."""
    return f32(advantages) / (masked_std(advantages, mask) + eps)


def policy_stats(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    clipped: torch.Tensor,
    ratio: torch.Tensor,
) -> dict[str, float]:
    """Diagnostics shared by every algorithm (names as in docs/metrics.md)."""
    with torch.no_grad():
        return {
            "policy/kl_k1": masked_mean(kl_estimate(logp, ref_logp, "k1"), mask).item(),
            "policy/kl_k3": masked_mean(kl_estimate(logp, ref_logp, "k3"), mask).item(),
            "policy/clip_frac": masked_mean(clipped.float(), mask).item(),
            "policy/ratio_mean": masked_mean(ratio, mask).item(),
            "policy/adv_mean": masked_mean(advantages, mask).item(),
            "policy/adv_std": masked_std(advantages, mask).item(),
        }


def check(ok: bool, message: str) -> None:
    """Raise ValueError(message) unless ok: option validation with a message that says why."""
    if not ok:
        raise ValueError(message)


# Option errors name the key as a config file spells it (`algo.eps_low`), whoever built the algorithm.
WHERE = "algo"


def check_choice(algo, key: str, valid: tuple) -> None:
    """The option `key` is one of `valid`."""
    value = getattr(algo, key)
    check(value in valid, f"{WHERE}.{key}: must be one of {', '.join(valid)}, got {value!r}")


def check_options(algo) -> None:
    """Every numeric option finite and within the range declared on its field (`num(...)`, shared ones
    below), then the PPO choices. First thing in each algorithm's __post_init__: a NaN passes any check
    written `x >= 0`, infinity passes most."""
    ranges.check_ranges(algo, WHERE)
    check_choice(algo, "agg", AGGREGATIONS)


# The PPO options every algorithm shares, declared once with their ranges (each dataclass's field calls one).


def eps_low_field(default: float = 0.2):
    return num(default, ge=0, lt=1, why="the ratio's lower clip bound is 1 - eps_low")


def eps_high_field(default: float = 0.2):
    return num(default, ge=0)


def dual_clip_field(default: float | None = None):
    return num(default, gt=1, why="or null: off")


def norm_len_field(default: int | None = None):
    return num(default, gt=0, why="or null: the padded length")
