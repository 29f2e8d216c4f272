r"""VIMPO: Value-Implicit Policy Optimization (arXiv 2606.20008), as reconstructed in
docs/vimpo-method.md of the specification.

Objective. With l_t = log pi_theta(a_t|s_t) - log pi_ref(a_t|s_t) and the outcome reward R_i arriving
with the last token, the KL-regularized optimum satisfies beta * l*_t = r_t + V*(s_{t+1}) - V*(s_t) with
V*(s_T) = 0. Putting pi_theta in place of pi* and unrolling from the prompt gives the policy-implied value

    V_theta(s_t) = Vhat(x) + beta * sum_{k<t} l_k          (t < T)

and the terminal-anchor residual delta_i = Vhat(x) + beta * sum_t l_{i,t} - R_i. VIMPO minimizes

    L = L_actor + c_V * L_V,     L_V = mean_i delta_i^2     (reward enters here, gradient through l)
    L_actor = -agg min(rho A, clip(rho, 1-eps_low, 1+eps_high) A),   rho = pi_theta / pi_old
    A_{i,t} = sum_{k>=t} lam^(k-t) * beta * l^old_{i,k}     (the `implied` advantage, default)

Vhat(x) is estimated from the group and carries no gradient (`mean` or `soft`).

How it differs from GRPO: no group-normalized outcome advantage and no separate KL penalty. The
reward enters only through the squared terminal residual L_V (whose gradient is a REINFORCE step with
advantage -delta_i scaled by 2 beta c_V); the actor advantage is a per-token cumulative log-ratio, so
tokens that separate right from wrong responses carry the credit; KL control comes through L_V.
At pi_theta = pi_ref the implied advantage is 0 and all early learning comes from L_V.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from vimpo_bench.algorithms.batch import Batch
from vimpo_bench.algorithms.core import (
    aggregate,
    check,
    check_choice,
    check_options,
    dual_clip_field,
    eps_high_field,
    eps_low_field,
    f32,
    group_count,
    group_index,
    group_mean,
    masked_mean,
    norm_len_field,
    policy_stats,
    ppo_clip_loss,
    require_group_size,
    whiten_batch,
)
from vimpo_bench.algorithms.registry import register
from vimpo_bench.ranges import num

BASELINES = ("mean", "soft")
# `none` is an ablation beyond the specification: no actor term, so the update is c_V L_V alone (its
# REINFORCE step with advantage -delta); it says how much of VIMPO's learning the actor carries.
ADVANTAGE_KINDS = ("implied", "soft_rtg", "mc", "residual", "outcome", "none")


def sequence_logratio(logratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_t l_{i,t} over each response's tokens. [B, T] -> [B] float32."""
    return (f32(logratio) * f32(mask)).sum(1)


def root_value(
    seq_logratio: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
    baseline: str = "mean",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Vhat(x) of each response's prompt, from its group; no gradient. [B] -> [B].

    Each response gives a sample of the KL-regularized return q_j = R_j - beta * sum_t l_{j,t}.
    - `mean`:  Vhat = mean_j q_j  (then L_V is the group variance of q: zero exactly at pi*);
    - `soft`:  Vhat = beta * log mean_j exp(q_j / beta)  (importance-sampled beta log Z, via logsumexp).
    `weights` [B] (bool or float, default all 1) weight the responses: 0 leaves one out (truncated ones
    under `truncated=mask`); probabilities give exact expectations (the tabular checks).
    """
    q = (f32(rewards) - beta * f32(seq_logratio)).detach()
    weights = None if weights is None else f32(weights).detach()
    if baseline == "mean":
        return group_mean(q, group_ids, weights)
    if baseline == "soft":
        index, n_groups = group_index(group_ids)
        scaled = q / beta
        if weights is not None:
            scaled = scaled.masked_fill(weights == 0, float("-inf"))
        lse = torch.full((n_groups,), float("-inf"), device=q.device)
        lse = lse.scatter_reduce(0, index, scaled, reduce="amax", include_self=True)
        # logsumexp per group = max + log sum exp(x - max); groups with no member stay at 0.
        peak = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        terms = torch.exp(scaled - peak[index]) * (1.0 if weights is None else weights)
        sums = torch.zeros(n_groups, device=q.device).index_add_(0, index, terms)
        counts = group_count(group_ids, weights).clamp(min=1.0)
        log_mean = peak[index] + torch.log(sums[index].clamp(min=1e-30)) - torch.log(counts)
        return beta * log_mean
    raise ValueError(f"unknown value_baseline {baseline!r}; valid: {', '.join(BASELINES)}")


def implied_values(
    logratio: torch.Tensor,
    mask: torch.Tensor,
    v0: torch.Tensor,
    beta: float,
    rewards: torch.Tensor | None = None,
) -> torch.Tensor:
    """The policy-implied values along each response, by the forward recurrence.

        V(s_0) = v0,   V(s_{t+1}) = V(s_t) + beta * l_t - r_t,   r_t = R at the last token, else 0.

    Args: logratio, mask [B, T]; v0 [B] (Vhat of each response's prompt); rewards [B] or None.
    Returns [B, T+1]: column t is V(s_t). Past a response's end the value stays at its terminal value.
    With rewards, column T_i is the terminal residual delta_i (0 when the anchor V(s_T) = 0 holds);
    without rewards, the reward is not subtracted (column T_i = delta_i + R_i).
    """
    steps = beta * f32(logratio) * f32(mask)
    if rewards is not None:
        lengths = f32(mask).sum(1).long()
        last = (lengths - 1).clamp(min=0)
        reward_at_end = torch.zeros_like(steps)
        has_tokens = lengths > 0
        rows = torch.arange(steps.shape[0], device=steps.device)[has_tokens]
        reward_at_end[rows, last[has_tokens]] = f32(rewards)[has_tokens]
        steps = steps - reward_at_end
    start = f32(v0).reshape(-1, 1)
    return torch.cat([start, start + torch.cumsum(steps, dim=1)], dim=1)


def value_loss(
    logratio: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
    baseline: str = "mean",
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_V = mean_i delta_i^2 with delta_i = Vhat(x) + beta * sum_t l_{i,t} - R_i.

    Args: logratio (log pi_theta - log pi_ref, carries the gradient), mask [B, T]; rewards, group_ids [B];
    weights [B] bool or float or None: a weighted mean over responses (0 leaves a response out of L_V and
    Vhat; exact on-policy probabilities turn the sample mean into an expectation).
    Gradient: d L_V / d l_{i,t} = 2 beta delta_i mask_{i,t} / N (Vhat is held fixed), N = number of
    responses (sum of weights).
    Returns (loss, stats) with stats tensors `delta` [B], `vhat` [B], `seq_logratio` [B].
    """
    seq = sequence_logratio(logratio, mask)
    vhat = root_value(seq.detach(), rewards, group_ids, beta, baseline, weights)
    delta = vhat + beta * seq - f32(rewards)
    weight = torch.ones_like(delta) if weights is None else f32(weights).detach()
    loss = (weight * delta**2).sum() / weight.sum().clamp(min=1e-12)
    return loss, {"delta": delta.detach(), "vhat": vhat, "seq_logratio": seq.detach()}


def reverse_discounted_cumsum(x: torch.Tensor, lam: float) -> torch.Tensor:
    """y_t = sum_{k>=t} lam^(k-t) x_k along the last dim. [B, T] -> [B, T]."""
    if lam == 1.0:
        return torch.flip(torch.cumsum(torch.flip(x, [1]), 1), [1])
    out = torch.empty_like(x)
    running = torch.zeros_like(x[:, 0])
    for t in range(x.shape[1] - 1, -1, -1):
        running = x[:, t] + lam * running
        out[:, t] = running
    return out


def advantages(
    old_logratio: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
    kind: str = "residual",
    lam: float = 1.0,
    baseline: str = "mean",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """VIMPO actor advantages from the old policy's log-ratios (no gradient). [B, T] -> [B, T].

    - `implied`:  A_t = sum_{k>=t} lam^(k-t) beta l^old_k       (= R - V*(s_t) under pi*; the paper's
                  literal reading: its expected gradient is +beta grad KL, see algorithms/fixed_points.py)
    - `soft_rtg`: A_t = R - Vhat - beta sum_{k>=t} lam^(k-t) l^old_k
                  (return minus the KL reward-to-go: per token, an unbiased estimate of
                  grad(E[R] - beta KL) for lam = 1; at t = 0 it equals `residual`)
    - `mc`:       A_t = R - Vhat - beta sum_{k<t} l^old_k          (= implied - delta^old for lam = 1)
    - `residual`: A_t = -delta^old = R - beta sum_t l^old - Vhat   (one value per response)
    - `outcome`:  A_t = R - Vhat                                    (no dense credit)
    - `none`:     A_t = 0                                           (ablation: the value loss alone)
    Vhat comes from `baseline` on the old log-ratios (`weights` as in root_value). Zero on padding.
    """
    if kind not in ADVANTAGE_KINDS:
        raise ValueError(f"unknown advantage {kind!r}; valid: {', '.join(ADVANTAGE_KINDS)}")
    l_old = f32(old_logratio).detach() * f32(mask)
    m = f32(mask)
    if kind == "none":
        return torch.zeros_like(l_old)
    if kind == "implied":
        return reverse_discounted_cumsum(beta * l_old, lam) * m
    seq = l_old.sum(1)
    vhat = root_value(seq, rewards, group_ids, beta, baseline, weights)
    r = f32(rewards)
    if kind == "soft_rtg":
        return (r - vhat).unsqueeze(1) * m - beta * reverse_discounted_cumsum(l_old, lam) * m
    if kind == "mc":
        prefix = torch.cumsum(l_old, 1) - l_old  # sum_{k<t}
        return (r - vhat).unsqueeze(1) * m - beta * prefix * m
    if kind == "residual":
        return (r - beta * seq - vhat).unsqueeze(1) * m
    return (r - vhat).unsqueeze(1) * m  # outcome


@register("vimpo")
@dataclass(frozen=True)
class Vimpo:
    """VIMPO with every option of the specification (defaults as stated there).

    beta: KL coefficient (> 0).
    value_scale: 2 beta c_V, the size of the value-loss step (its gradient is a REINFORCE step scaled by
      it); held fixed when beta moves (schedules, sweeps), so c_V = value_scale / (2 beta). Default 0.5
      (= beta 0.05 with c_V 5).
    value_coef: c_V fixed instead (value_scale then follows beta); None = derive it from value_scale.
    value_baseline: mean | soft. advantage: soft_rtg | implied | mc | residual | outcome | none (what each
      converges to: algorithms/fixed_points.py; a run config with no fixed point is refused by
      config.validate, while the class itself stays usable for measurements such as c_V = 0).
    lam: discount of the implied and soft_rtg KL sums (0 < lam <= 1; the fixed points assume 1).
    advantage_whiten: divide advantages by their batch std (never for `implied`: it amplifies noise).
    Truncated responses: the trainer's `reward.truncated` rule, applied when the batch is scored for
    every algorithm alike (zero_reward: R = 0; mask: `Batch.include` leaves them out of both losses).
    eps_low, eps_high: PPO clip range; dual_clip: c > 1 or None. agg: loss aggregation.
    """

    beta: float = num(0.05, gt=0, why="VIMPO divides by beta")
    value_scale: float | None = num(0.5, ge=0, why="or null: set by value_coef")
    value_coef: float | None = num(None, ge=0, why="or null: set by value_scale")
    value_baseline: str = "mean"
    # The default reading and aggregation were picked by the rule declared in studies/vimpo_readings.yaml
    # before it ran (reports/vimpo_readings.md); the paper's literal reading is `implied` + `token-mean`.
    advantage: str = "residual"
    lam: float = num(1.0, gt=0, le=1)
    advantage_whiten: bool = False
    eps_low: float = eps_low_field()
    eps_high: float = eps_high_field()
    dual_clip: float | None = dual_clip_field()
    agg: str = "seq-sum"
    norm_len: int | None = norm_len_field()

    name = "vimpo"

    def __post_init__(self) -> None:
        check_options(self)  # numbers against the ranges on the fields above
        check(self.value_coef is not None or self.value_scale is not None,
              "algo.value_scale: must be >= 0 (2 beta c_V, held fixed as beta moves) when algo.value_coef is null; "
              "both are null")
        check_choice(self, "value_baseline", BASELINES)
        check_choice(self, "advantage", ADVANTAGE_KINDS)
        if self.value_baseline == "soft" and self.beta < 0.2:
            warnings.warn(
                f"value_baseline='soft' with beta={self.beta}: with binary rewards it tracks the group maximum "
                "and collapsed a prototype run at beta 0.05; 'mean' is the safe default",
                stacklevel=3,
            )
        if self.advantage_whiten and self.advantage == "implied":
            warnings.warn(
                "advantage_whiten with the implied advantage turns log-ratio noise near pi_ref into full-size "
                "advantages (collapsed a prototype run); prefer it off",
                stacklevel=3,
            )

    @property
    def c_v(self) -> float:
        """The value-loss coefficient in use: value_coef when fixed, else value_scale / (2 beta)."""
        return self.value_coef if self.value_coef is not None else self.value_scale / (2.0 * self.beta)

    @property
    def effective_value_scale(self) -> float:
        """2 beta c_V: the step size of the value loss's REINFORCE gradient."""
        return 2.0 * self.beta * self.c_v

    def advantages(self, batch: Batch) -> torch.Tensor:
        """Actor advantages [B, T] from old and reference log-probs."""
        if self.value_baseline == "mean" or self.advantage != "implied":
            require_group_size(batch.group_ids, 2, f"VIMPO's '{self.value_baseline}' root value")
        old_logratio = f32(batch.old_logp) - f32(batch.ref_logp)
        adv = advantages(
            old_logratio, batch.mask, batch.rewards, batch.group_ids, self.beta, self.advantage, self.lam,
            self.value_baseline, batch.include,
        )
        if self.advantage_whiten:  # over the responses the losses use: left-out rows are not part of the batch
            adv = whiten_batch(adv, batch.response_mask())
        return adv

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """L_actor + c_V L_V and its diagnostics (float stats named as in docs/metrics.md)."""
        require_group_size(batch.group_ids, 2, f"VIMPO's '{self.value_baseline}' root value")
        include = batch.include
        adv = batch.advantages if batch.advantages is not None else self.advantages(batch)
        actor_mask = batch.response_mask()
        per_token, clipped, ratio = ppo_clip_loss(
            batch.logp, batch.old_logp, adv, self.eps_low, self.eps_high, self.dual_clip
        )
        actor = aggregate(per_token, actor_mask, self.agg, self.norm_len)
        logratio = f32(batch.logp) - f32(batch.ref_logp)
        lv, parts = value_loss(logratio, batch.mask, batch.rewards, batch.group_ids, self.beta, self.value_baseline,
                               include)
        total = actor + self.c_v * lv
        w = torch.ones_like(parts["delta"]) if include is None else include.float()
        stats = {
            "loss/total": total.item(),
            "loss/actor": actor.item(),
            "loss/value": lv.item(),
            "vimpo/abs_residual": masked_mean(parts["delta"].abs(), w).item(),
            "vimpo/residual_mean": masked_mean(parts["delta"], w).item(),
            "vimpo/beta_logratio_sum": masked_mean(self.beta * parts["seq_logratio"], w).item(),
            "vimpo/vhat_mean": _mean_per_group(parts["vhat"], batch.group_ids),
            "vimpo/value_coef": self.c_v,
            "vimpo/value_scale": self.effective_value_scale,
            **policy_stats(batch.logp, batch.ref_logp, actor_mask, adv, clipped, ratio),
        }
        return total, stats


def _mean_per_group(values: torch.Tensor, group_ids: torch.Tensor) -> float:
    """Mean over prompts of a per-prompt value that is repeated on each response."""
    index, n_groups = group_index(group_ids)
    first = torch.zeros(n_groups, device=values.device).scatter_(0, index, f32(values))
    return first.mean().item() if n_groups else math.nan
