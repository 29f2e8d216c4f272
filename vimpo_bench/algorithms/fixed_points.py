r"""Where VIMPO's full loss L_actor + c_V L_V goes: the fixed-point table of docs/algorithms.md as code.

On-policy (rho = 1), with s = 2 beta c_V (`value_scale`) and lam = 1, the expected gradients are

    -grad (c_V L_V)  = s grad(E[R] - beta KL)          (a REINFORCE step on the KL-regularized return)
    -grad L_actor    = w * g_kind

where g_kind is the expected policy gradient of the advantage kind summed over a response's tokens and
w the weight the aggregation gives one response's token sum next to L_V's per-response mean:

    advantage            g_kind                          the full loss converges to pi*_{beta_eff}
    none                 0                               beta_eff = beta          (s > 0)
    residual, soft_rtg   grad(E[R] - beta KL)            beta_eff = beta
    mc, outcome          grad E[R]                       beta_eff = beta s / (s + w)
    implied              +beta grad KL (KL ascent)       beta_eff = beta (1 - w / s); none when s <= w

`implied`: E[sum_t grad log pi(a_t) sum_{k>=t} l_k] = grad KL(pi || pi_ref) (the k < t terms vanish by
causality, the pathwise term E[grad l] = 0), so the actor pushes the KL up and only the value loss pulls
it down. With w >= s the sum s grad E[R] - (s - w) beta grad KL ascends the KL without bound.

    aggregation                 w (responses of T tokens)
    seq-sum                     1
    token-mean                  1 / T  (1 / mean length when lengths differ: then only approximately)
    seq-mean-token-mean         1 / T
    seq-mean-token-sum-norm     1 / norm_len

tests/test_fixed_points.py checks every row on a tabular tree MDP with exact expectations and Adam.
"""

from __future__ import annotations

import dataclasses

# Kinds whose actor term is itself an estimate of grad(E[R] - beta KL): sound with any aggregation.
SOUND_KINDS = ("none", "residual", "soft_rtg")
# Kinds whose discounted sum (lam < 1) changes the estimator, so the table's formula needs lam = 1.
DISCOUNTED_KINDS = ("implied", "soft_rtg")


def actor_weight(agg: str, length: float, norm_len: float | None = None) -> float:
    """w: the weight of one response's actor token sum next to L_V's per-response mean."""
    if agg == "seq-sum":
        return 1.0
    if agg in ("token-mean", "seq-mean-token-mean"):
        return 1.0 / length
    if agg == "seq-mean-token-sum-norm":
        return 1.0 / (norm_len or length)
    raise ValueError(f"unknown aggregation {agg!r}")


def effective_beta(advantage: str, agg: str, beta: float, value_scale: float, length: float,
                   norm_len: float | None = None) -> float | None:
    """beta_eff of the policy pi*_{beta_eff} the full loss converges to (lam = 1), or None when it has no
    fixed point (the KL grows without bound, or nothing moves the policy)."""
    w, s = actor_weight(agg, length, norm_len), value_scale
    if advantage == "none":
        return beta if s > 0 else None
    if advantage in SOUND_KINDS:
        return beta
    if advantage in ("mc", "outcome"):
        return beta * s / (s + w)
    if advantage == "implied":
        return beta * (1.0 - w / s) if s > w else None
    raise ValueError(f"unknown advantage {advantage!r}")


# beta_eff of the kinds whose fixed point is not pi*_beta (the warning quotes it).
FORMULA = {
    "mc": "beta s / (s + w)",
    "outcome": "beta s / (s + w)",
    "implied": "beta (1 - w / s)",
}
WEIGHT = {"seq-sum": "1", "token-mean": "1/T", "seq-mean-token-mean": "1/T",
          "seq-mean-token-sum-norm": "1/norm_len"}


def check_fixed_point(advantage: str, agg: str, beta: float, value_scale: float, max_len: int,
                      norm_len: float | None = None, lam: float = 1.0) -> tuple[str | None, str | None]:
    """(error, warning) for a VIMPO configuration, before a run starts.

    error: no fixed point for any response length up to `max_len` (the run would ascend the KL, or
    learn nothing); warning: a fixed point other than pi*_beta, with its formula and its value at
    responses of `max_len` tokens (shorter responses move it further from beta for token-mean)."""
    where = f"algo.advantage={advantage} with algo.agg={agg}"
    s = value_scale
    # The longest response gives the smallest w for the length-dependent aggregations: if even it has
    # no fixed point, no response length has.
    at_max = effective_beta(advantage, agg, beta, s, max_len, norm_len)
    if at_max is None:
        why = ("nothing moves the policy (value_scale 0, no actor term)" if advantage == "none" else
               f"the actor term ascends the KL at least as fast as the value loss (2 beta c_V = {s:g}) pulls it "
               f"down (w = {actor_weight(agg, max_len, norm_len):g} >= s): the KL grows without bound")
        return f"{where} has no fixed point: {why}; use algo.advantage=soft_rtg or residual, or raise value_scale", None
    if advantage in DISCOUNTED_KINDS and lam != 1.0:
        return None, (f"{where} and algo.lam={lam:g} < 1: the discounted sum is a biased estimate; the fixed-point "
                      "table holds for lam = 1 only")
    if at_max != beta:
        return None, (f"{where}: the full loss converges to pi* at beta_eff = {FORMULA[advantage]} with "
                      f"w = {WEIGHT[agg]}, s = 2 beta c_V = {s:g}: {at_max:.4g} for {max_len}-token responses, "
                      f"not beta = {beta:g} (docs/algorithms.md, fixed points)")
    return None, None


def vimpo_config_problem(algo, schedule: str, beta_final: float | None, max_len: int) -> tuple[str | None, str | None]:
    """(error, warning) for a VIMPO run's options `algo` (a `Vimpo`) under its beta schedule, at config time:
    `check_fixed_point` at both ends of the schedule (with value_coef fixed, 2 beta c_V moves with beta)."""
    warning = None
    for beta in [algo.beta] + ([beta_final] if schedule != "constant" else []):
        try:
            at = dataclasses.replace(algo, beta=beta)
        except ValueError as exc:
            return f"{exc} (at beta_schedule.final)", None
        error, warning = check_fixed_point(at.advantage, at.agg, beta, at.effective_value_scale, max_len,
                                           at.norm_len or max_len, at.lam)
        if error:
            return error, None
    return None, warning
