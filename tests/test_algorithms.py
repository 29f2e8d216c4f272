"""Baselines on hand-computed batches, loop vs vectorized agreement, clipping, aggregation, KL
estimators, invariances and robustness of every algorithm."""

import dataclasses
import math
import warnings

import pytest
import torch

from vimpo_bench.algorithms import REGISTRY, Batch, get, grpo, names, options, rloo
from vimpo_bench.algorithms.core import aggregate, kl_estimate, ppo_clip_loss

# Tiny tensors: thread hand-offs would dominate (the shared fixture lives in conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batch(B=12, T=6, groups=3, seed=0, scale=0.3, dtype=torch.float32, with_include=False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    mk = lambda: (torch.randn(B, T, generator=g) * scale).to(dtype)  # noqa: E731
    logp, old_logp, ref_logp = mk(), mk(), mk()
    rewards = (torch.rand(B, generator=g) < 0.5).float()
    left_out = torch.rand(B, generator=g) < 0.2  # what the truncation rule `mask` would leave out
    return Batch(logp=logp, old_logp=old_logp, ref_logp=ref_logp, mask=mask, rewards=rewards,
                 group_ids=torch.arange(B) % groups, include=~left_out if with_include else None)


# ---- hand-computed advantages -------------------------------------------------------------------

def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    gid = torch.tensor([0, 0, 0, 0, 1, 1])
    # group 0: mean .25, sample std sqrt((.5625 + 3 * .0625) / 3) = .5; group 1 all equal -> 0
    torch.testing.assert_close(grpo.advantages(r, gid, "std"), torch.tensor([1.5, -0.5, -0.5, -0.5, 0, 0]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(grpo.advantages(r, gid, "none"), torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0]))
    torch.testing.assert_close(rloo.advantages(r, gid), torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, 0, 0]))


def test_grpo_loss_by_hand():
    # one group: a two-token and a one-token response; ratio 1 and ref = old, so no KL
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    z = torch.zeros(2, 2)
    b = Batch(logp=z, old_logp=z, ref_logp=z, mask=mask, rewards=torch.tensor([1.0, 0.0]),
              group_ids=torch.tensor([0, 0]))
    # A = +-0.5 / (std 0.7071 + 1e-6) = +-0.70711; per-token loss -A; seq means: -0.7071, +0.7071 -> 0
    loss, stats = get("grpo").loss(b)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # token-mean weighs tokens: (-0.7071 * 2 + 0.7071) / 3
    loss, _ = get("dapo").loss(b)
    assert loss.item() == pytest.approx(-0.70711 / 3, abs=1e-4)
    # Dr. GRPO: A = +-0.5, token sums / norm_len 4, mean over sequences: (-1.0/4 + 0.5/4) / 2
    loss, _ = get("dr_grpo", norm_len=4).loss(b)
    assert loss.item() == pytest.approx((-1.0 / 4 + 0.5 / 4) / 2, abs=1e-6)
    # RLOO: A = +-1 -> seq means -1, +1 -> 0
    loss, _ = get("rloo").loss(b)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_grpo_kl_penalty_by_hand():
    log_ratio = torch.tensor([[0.5, -0.2]])
    b = Batch(logp=log_ratio.repeat(2, 1), old_logp=log_ratio.repeat(2, 1), ref_logp=torch.zeros(2, 2),
              mask=torch.ones(2, 2), rewards=torch.tensor([1.0, 1.0]), group_ids=torch.tensor([0, 0]))
    k3 = [math.exp(-0.5) + 0.5 - 1, math.exp(0.2) - 0.2 - 1]
    loss, stats = get("grpo", beta=0.1).loss(b)  # advantages 0: the loss is the KL term alone
    assert loss.item() == pytest.approx(0.1 * sum(k3) / 2, rel=1e-5)
    assert stats["loss/kl_penalty"] == pytest.approx(0.1 * sum(k3) / 2, rel=1e-5)


def test_dapo_drops_groups_whose_rewards_are_all_equal():
    b = batch(seed=1)
    rewards = b.rewards.clone()
    rewards[b.group_ids == 0] = 1.0
    b = Batch(**{**b.__dict__, "rewards": rewards})
    keep = get("dapo").loss_mask(b)
    assert keep[b.group_ids == 0].sum() == 0
    # changing the policy on a dropped group changes nothing
    poke = (b.group_ids == 0).float().unsqueeze(1)
    b2 = Batch(**{**b.__dict__, "logp": b.logp + poke})
    assert get("dapo").loss(b)[0].item() == pytest.approx(get("dapo").loss(b2)[0].item(), abs=1e-7)


# ---- loops agree with the vectorized code --------------------------------------------------------

def loop_group_advantage(rewards, gids, kind):
    out = []
    for i in range(len(rewards)):
        same = [j for j in range(len(rewards)) if gids[j] == gids[i]]
        rs = [float(rewards[j]) for j in same]
        mean = sum(rs) / len(rs)
        if kind == "rloo":
            out.append(float(rewards[i]) - (sum(rs) - float(rewards[i])) / (len(rs) - 1))
        elif kind == "std":
            std = math.sqrt(sum((x - mean) ** 2 for x in rs) / (len(rs) - 1))
            out.append((float(rewards[i]) - mean) / (std + 1e-6))
        else:
            out.append(float(rewards[i]) - mean)
    return out


def loop_policy_loss(b, adv_seq, eps_low, eps_high, beta, agg, norm_len=None):
    B, T = b.mask.shape
    per_seq_sum, per_seq_n, total, n_tok = [], [], 0.0, 0.0
    for i in range(B):
        s, n = 0.0, 0.0
        for t in range(T):
            if b.mask[i, t] == 0:
                continue
            rho = math.exp(float(b.logp[i, t] - b.old_logp[i, t]))
            a = adv_seq[i]
            term = -min(rho * a, min(max(rho, 1 - eps_low), 1 + eps_high) * a)
            log_ratio = float(b.logp[i, t] - b.ref_logp[i, t])
            term += beta * (math.exp(-log_ratio) + log_ratio - 1)
            s, n = s + term, n + 1
        per_seq_sum.append(s)
        per_seq_n.append(n)
        total, n_tok = total + s, n_tok + n
    if agg == "token-mean":
        return total / n_tok
    if agg == "seq-mean-token-mean":
        means = [s / n for s, n in zip(per_seq_sum, per_seq_n, strict=True) if n > 0]
        return sum(means) / len(means)
    return sum(s / norm_len for s in per_seq_sum) / B


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name,kind,kwargs", [
    ("grpo", "std", dict(beta=0.05)),
    ("dr_grpo", "none", dict(norm_len=6)),
    ("dapo", "std", dict(drop_constant_groups=False)),
    ("rloo", "rloo", dict(beta=0.02)),
])
def test_loop_matches_vectorized(seed, name, kind, kwargs):
    b = batch(seed=seed, scale=0.4)
    algo = get(name, **kwargs)
    adv = loop_group_advantage(b.rewards, b.group_ids, kind)
    torch.testing.assert_close(algo.sequence_advantages(b.rewards, b.group_ids), torch.tensor(adv), atol=1e-5, rtol=1e-5)
    want = loop_policy_loss(b, adv, algo.eps_low, algo.eps_high, algo.beta, algo.agg, algo.norm_len)
    assert algo.loss(b)[0].item() == pytest.approx(want, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_vimpo_loop_matches_vectorized(seed):
    b = batch(seed=seed, scale=0.4)
    beta, cv = 0.1, 3.0
    algo = get("vimpo", beta=beta, value_coef=cv, advantage="implied", agg="token-mean")
    B, T = b.mask.shape
    R = [float(b.rewards[i]) for i in range(B)]
    S = [sum(float(b.logp[i, t] - b.ref_logp[i, t]) for t in range(T) if b.mask[i, t]) for i in range(B)]
    S_old = [sum(float(b.old_logp[i, t] - b.ref_logp[i, t]) for t in range(T) if b.mask[i, t]) for i in range(B)]
    gid = b.group_ids.tolist()
    vhat = [sum(R[j] - beta * S[j] for j in range(B) if gid[j] == gid[i]) / gid.count(gid[i]) for i in range(B)]
    lv = sum((vhat[i] + beta * S[i] - R[i]) ** 2 for i in range(B)) / B
    total, n_tok = 0.0, 0.0
    for i in range(B):
        for t in range(T):
            if not b.mask[i, t]:
                continue
            a = sum(beta * float(b.old_logp[i, k] - b.ref_logp[i, k]) for k in range(t, T) if b.mask[i, k])
            rho = math.exp(float(b.logp[i, t] - b.old_logp[i, t]))
            total += -min(rho * a, min(max(rho, 0.8), 1.2) * a)
            n_tok += 1
    loss, stats = algo.loss(b)
    assert stats["loss/value"] == pytest.approx(lv, rel=1e-5)
    assert loss.item() == pytest.approx(total / n_tok + cv * lv, rel=1e-4, abs=1e-6)
    assert S_old  # the old log-ratios feed only the advantage


# ---- PPO clipping, aggregation, KL ---------------------------------------------------------------

def test_clipping_at_both_boundaries():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped, _ = ppo_clip_loss(logp, old, adv, 0.2, 0.2)
    # rho 1.5, A>0: clipped at 1.2; rho 1.5, A<0: -min(-1.5, -1.2) = 1.5 (pessimistic, unclipped)
    # rho 0.5, A>0: min(0.5, 0.8) = 0.5 (unclipped); rho 0.5, A<0: clipped at 0.8
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 1.5, -0.5, 0.8]]))
    assert clipped.tolist() == [[True, False, False, True]]
    loss.sum().backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 3] == 0
    assert logp.grad[0, 1] != 0 and logp.grad[0, 2] != 0


def test_clip_higher_and_dual_clip():
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.25, 10.0]]))
    adv = torch.tensor([[1.0, -1.0]])
    loss, _, _ = ppo_clip_loss(logp, old, adv, 0.2, 0.28)
    assert loss[0, 0].item() == pytest.approx(-1.25)  # within 1 + 0.28: unclipped
    assert loss[0, 1].item() == pytest.approx(10.0)
    loss, clipped, _ = ppo_clip_loss(logp, old, adv, 0.2, 0.28, dual_clip=3.0)
    assert loss[0, 1].item() == pytest.approx(3.0) and clipped[0, 1]


def test_aggregation_modes_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert aggregate(x, m, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    # The means over sequences count the sequences that have tokens: the empty third row was left out
    # (truncated under `mask`, a dropped group) and must not dilute the loss.
    assert aggregate(x, m, "seq-mean-token-sum-norm", norm_len=5).item() == pytest.approx((6 / 5 + 4 / 5) / 2)
    assert aggregate(x, m, "seq-sum").item() == pytest.approx((6 + 4) / 2)
    with pytest.raises(ValueError, match="valid: token-mean"):
        aggregate(x, m, "sum")


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_against_the_exact_kl_of_a_categorical(estimator):
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.4, 0.4, 0.1, 0.1])
    exact = float((p * (p / q).log()).sum())
    per_action = kl_estimate(p.log()[None], q.log()[None], estimator)[0]
    expectation = float((p * per_action).sum())  # E_{a ~ p}
    if estimator == "k2":
        assert expectation == pytest.approx(exact, rel=0.15)  # biased, close for nearby distributions
        assert expectation != pytest.approx(exact, rel=1e-4)
    else:
        assert expectation == pytest.approx(exact, rel=1e-5)  # unbiased
    if estimator == "k3":
        assert (per_action >= 0).all()


# ---- invariances ---------------------------------------------------------------------------------

ALL = [(n, {}) for n in names()] + [("vimpo", {"advantage": a}) for a in ("mc", "residual", "outcome", "none")] + [
    ("vimpo", {"value_baseline": "soft", "beta": 0.5}), ("vimpo", {"lam": 0.9}), ("vimpo", {"value_coef": 2.0})]


@pytest.mark.parametrize("with_include", [False, True])
@pytest.mark.parametrize("name,opts", ALL)
def test_extra_masked_padding_changes_nothing(name, opts, with_include):
    b = batch(seed=2, with_include=with_include)
    pad = lambda t, v=0.0: torch.cat([t, torch.full((t.shape[0], 5), v)], 1)  # noqa: E731
    b2 = Batch(logp=pad(b.logp, 7.0), old_logp=pad(b.old_logp, -3.0), ref_logp=pad(b.ref_logp, 2.0),
               mask=pad(b.mask), rewards=b.rewards, group_ids=b.group_ids, include=b.include)
    algo = get(name, **opts, **({"norm_len": 6} if name == "dr_grpo" else {}))
    torch.testing.assert_close(algo.advantages(b2)[:, :6], algo.advantages(b))
    assert algo.advantages(b2)[:, 6:].abs().max() == 0
    (l1, s1), (l2, s2) = algo.loss(b), algo.loss(b2)
    assert l1.item() == pytest.approx(l2.item(), rel=1e-5, abs=1e-7)
    for k in s1:
        assert s1[k] == pytest.approx(s2[k], rel=1e-4, abs=1e-6), k


@pytest.mark.parametrize("name,opts", ALL)
def test_permuting_responses_permutes_outputs(name, opts):
    b = batch(seed=3)
    perm = torch.randperm(b.mask.shape[0], generator=torch.Generator().manual_seed(0))  # across groups too
    b2 = b.select(perm)
    algo = get(name, **opts)
    torch.testing.assert_close(algo.advantages(b2), algo.advantages(b)[perm], atol=1e-6, rtol=1e-5)
    assert algo.loss(b2)[0].item() == pytest.approx(algo.loss(b)[0].item(), rel=1e-5, abs=1e-7)
    # relabelling the groups changes nothing either
    b3 = Batch(**{**b.__dict__, "group_ids": b.group_ids * 7 + 100})
    assert algo.loss(b3)[0].item() == pytest.approx(algo.loss(b)[0].item(), rel=1e-6, abs=1e-8)


# ---- robustness ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,opts", ALL)
def test_bfloat16_inputs_accumulate_in_float32(name, opts):
    b = batch(seed=4, dtype=torch.bfloat16)
    algo = get(name, **opts)
    adv = algo.advantages(b)
    loss, stats = algo.loss(b)
    assert adv.dtype == torch.float32 and loss.dtype == torch.float32
    b32 = Batch(**{**b.__dict__, "logp": b.logp.float(), "old_logp": b.old_logp.float(), "ref_logp": b.ref_logp.float()})
    assert loss.item() == pytest.approx(algo.loss(b32)[0].item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name,opts", ALL)
def test_no_nan_on_hard_batches(name, opts):
    B, T = 6, 4
    gid = torch.tensor([0, 0, 1, 1, 2, 2])
    mask = torch.ones(B, T)
    mask[0] = 0  # an empty response
    mask[2, 1:] = 0  # a length-1 response
    extreme = torch.tensor([50.0, -50.0]).repeat(B, T // 2)
    for rewards in (torch.ones(B), torch.zeros(B), torch.tensor([1.0, 0, 1, 0, 0, 1])):
        for logp, ref in ((extreme, -extreme), (torch.zeros(B, T), torch.zeros(B, T))):
            lp = logp.clone().requires_grad_(True)
            b = Batch(logp=lp, old_logp=torch.zeros(B, T), ref_logp=ref, mask=mask, rewards=rewards,
                      group_ids=gid, include=torch.tensor([True, False, True, True, False, True]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                algo = get(name, **opts)
            loss, stats = algo.loss(b)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
            assert all(math.isfinite(v) for v in stats.values()), stats
            assert torch.isfinite(algo.advantages(b)).all()


def test_all_equal_groups_have_zero_grpo_family_advantage():
    b = batch(seed=5)
    b = Batch(**{**b.__dict__, "rewards": torch.ones_like(b.rewards)})
    for name in ("grpo", "dr_grpo", "dapo", "rloo"):
        assert get(name).advantages(b).abs().max() == 0


@pytest.mark.parametrize("name", ["vimpo", "grpo", "dr_grpo", "dapo", "rloo"])
def test_a_group_of_one_is_a_clear_error(name):
    b = batch(B=4, groups=4)
    with pytest.raises(ValueError, match="at least 2 responses per prompt"):
        get(name).loss(b)


def test_unknown_names_and_bad_values_list_what_is_valid():
    with pytest.raises(ValueError, match="valid algorithms: dapo, dr_grpo, grpo, rloo, vimpo"):
        get("ppo")
    with pytest.raises(ValueError, match="valid options: beta, value_scale, value_coef"):
        get("vimpo", kl_coef=0.1)
    with pytest.raises(ValueError, match="algo.advantage: must be one of implied, soft_rtg, mc"):
        get("vimpo", advantage="gae")
    with pytest.raises(ValueError, match=r"algo.beta: must be > 0"):
        get("vimpo", beta=0.0)
    with pytest.raises(ValueError, match="kl_estimator"):
        get("grpo", kl_estimator="k4")
    with pytest.raises(ValueError, match="dual_clip"):
        get("grpo", dual_clip=0.5)
    assert "value_baseline" in options("vimpo") and "scale" in options("grpo")


def test_risky_vimpo_settings_warn():
    with pytest.warns(UserWarning, match="group maximum"):
        get("vimpo", value_baseline="soft", beta=0.05)
    with pytest.warns(UserWarning, match="whiten"):
        get("vimpo", advantage="implied", advantage_whiten=True)


def test_whitened_advantages_have_unit_batch_std():
    b = batch(seed=6)
    adv = get("vimpo", advantage="mc", advantage_whiten=True).advantages(b)
    from vimpo_bench.algorithms.core import masked_std
    assert masked_std(adv, b.mask).item() == pytest.approx(1.0, rel=1e-4)


# ---- the truncation rule `mask`: left-out responses count for nothing, in every algorithm ------------

@pytest.mark.parametrize("name,opts", ALL)
def test_left_out_responses_change_nothing(name, opts):
    """Under `Batch.include`, anything about a left-out response (log-probs, reward) leaves the
    advantages of the others, the loss and its gradient unchanged."""
    b = batch(seed=4, B=16, groups=4, with_include=True)
    out = (~b.include).float().unsqueeze(1)
    poked = Batch(logp=b.logp + 3.0 * out, old_logp=b.old_logp - 2.0 * out, ref_logp=b.ref_logp + out,
                  mask=b.mask, rewards=torch.where(b.include, b.rewards, 1 - b.rewards), group_ids=b.group_ids,
                  include=b.include)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        algo = get(name, **opts)
    kept = b.include.unsqueeze(1) & b.mask.bool()
    torch.testing.assert_close(algo.advantages(poked)[kept], algo.advantages(b)[kept], atol=1e-6, rtol=1e-5)
    grads = []
    for x in (b, poked):
        lp = x.logp.clone().requires_grad_(True)
        loss, _ = algo.loss(Batch(**{**x.__dict__, "logp": lp}))
        loss.backward()
        grads.append((loss.item(), lp.grad[b.include]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-6, rtol=1e-5)


def test_grpo_family_baselines_use_only_included_responses():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0])
    gid = torch.zeros(4, dtype=torch.long)
    keep = torch.tensor([True, True, True, False]).float()
    from vimpo_bench.algorithms import grpo, rloo

    # included rewards 1, 0, 1: mean 2/3, sample std sqrt(1/3); the left-out row gets 0
    want = torch.tensor([1 / 3, -2 / 3, 1 / 3, 0.0])
    torch.testing.assert_close(grpo.advantages(r, gid, "none", weights=keep), want)
    torch.testing.assert_close(grpo.advantages(r, gid, "std", weights=keep), want / (math.sqrt(1 / 3) + 1e-6))
    # leave-one-out over the included: 1 - (0+1)/2, 0 - (1+1)/2, 1 - (1+0)/2
    torch.testing.assert_close(rloo.advantages(r, gid, keep), torch.tensor([0.5, -1.0, 0.5, 0.0]))


def test_dapo_constant_groups_use_a_tolerance():
    """Equal float rewards that are not exactly representable leave a std of ~1e-8 after centring;
    such a group is constant and DAPO drops it."""
    from vimpo_bench.algorithms.grpo import non_constant_groups

    r = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.3, 0.3, 0.3, 0.3, 0.3, 0.2])
    gid = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    assert non_constant_groups(r, gid).tolist() == [False] * 9 + [True] * 3


def test_vimpo_holds_two_beta_cv_fixed_by_default():
    for beta in (0.01, 0.05, 0.5):
        algo = get("vimpo", beta=beta)
        assert algo.effective_value_scale == pytest.approx(0.5)
        assert algo.c_v == pytest.approx(0.5 / (2 * beta))
    fixed = get("vimpo", beta=0.5, value_coef=5.0)  # c_V fixed instead: 2 beta c_V follows beta
    assert fixed.c_v == 5.0 and fixed.effective_value_scale == pytest.approx(5.0)
    assert get("vimpo").c_v == pytest.approx(5.0)  # the spec's starting point: beta 0.05, c_V 5
    with pytest.raises(ValueError, match="value_scale"):
        get("vimpo", value_scale=None, value_coef=None)


# ---- option errors: every numeric option, every kind of bad value, one line naming key and range -----


def _numeric_options():
    """(algorithm, option, declared range, is_int) for every int/float option of every algorithm."""
    import typing

    from vimpo_bench.ranges import declared_range

    out = []
    for name, cls in REGISTRY.items():
        hints = typing.get_type_hints(cls)
        for key in options(name):
            kinds = {hints[key], *typing.get_args(hints[key])} - {type(None)}
            if kinds & {int, float}:
                out.append((name, key, declared_range(cls, key), int in kinds))
    return out


def _bad_values(rng, is_int):
    """NaN, both infinities, and a value just outside each finite end of the range."""
    import math

    values = [math.nan, math.inf, -math.inf]
    step = 1 if is_int else 0.5
    if math.isfinite(rng.low):
        values.append(rng.low if rng.low_open else rng.low - step)
    if math.isfinite(rng.high):
        values.append(rng.high if rng.high_open else rng.high + step)
    return values


def _yaml(value) -> str:
    import math

    return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan" if value != value else repr(value))


NUMERIC_OPTIONS = _numeric_options()


def test_every_numeric_option_declares_its_range():
    assert len(NUMERIC_OPTIONS) >= 20  # beta, eps_*, dual_clip, norm_len everywhere; lam, value_* in vimpo
    missing = [(name, key) for name, key, rng, _ in NUMERIC_OPTIONS if rng is None]
    assert missing == [], "numeric algorithm options without a declared range (num(...) on the field)"


@pytest.mark.parametrize("name, key, rng, is_int", NUMERIC_OPTIONS, ids=[f"{n}.{k}" for n, k, _, _ in NUMERIC_OPTIONS])
def test_bad_numeric_options_name_the_key_and_the_range(name, key, rng, is_int, tmp_path, monkeypatch):
    """In the library (`get`), in a config (`--set`), and on the command line: one line, key and range, and
    the CLI exits non-zero without a traceback."""
    import math

    from typer.testing import CliRunner

    from vimpo_bench.cli import _register, app
    from vimpo_bench.config import ConfigError, load_config

    _register()
    monkeypatch.chdir(tmp_path)  # a train command that got past validation would write here
    for value in _bad_values(rng, is_int):
        wanted = (f"algo.{key}", str(rng))
        if not (is_int and not math.isfinite(value)):  # an int option cannot be given NaN or inf in Python
            with pytest.raises(ValueError) as err:
                get(name, **{key: value})
            assert all(w in str(err.value) for w in wanted) and "\n" not in str(err.value), (value, str(err.value))
        override = f"algo.{key}={_yaml(value)}"
        with pytest.raises(ConfigError) as err:
            load_config(overrides=[f"algo.name={name}", override])
        assert all(w in str(err.value) for w in wanted) and "\n" not in str(err.value), (value, str(err.value))
        out = CliRunner().invoke(app, ["train", "--algo", name, "--set", override])
        assert out.exit_code != 0 and "Traceback" not in out.stderr, (override, out.stderr)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and all(w in lines[0] for w in wanted), (override, out.stderr)


def test_whitening_ignores_left_out_responses():
    """`advantage_whiten` divides by the std over the tokens the losses use: a left-out (truncated under
    `mask`) response's advantages must not change the kept ones'."""
    torch.manual_seed(0)
    logp = torch.randn(4, 3) * 0.1
    ref = torch.randn(4, 3) * 0.1
    mask = torch.ones(4, 3)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0])
    algo = get("vimpo", advantage="residual", advantage_whiten=True)
    kept = torch.tensor([True, True, True, False])
    with_left_out = Batch(logp=logp, old_logp=logp, ref_logp=ref, mask=mask, rewards=rewards, group_ids=groups,
                          include=kept)
    changed = dataclasses.replace(with_left_out, old_logp=torch.where(kept.unsqueeze(1), logp, logp + 50.0))
    torch.testing.assert_close(algo.advantages(with_left_out)[:3], algo.advantages(changed)[:3])


def test_algorithms_register_themselves_and_a_taken_name_is_refused():
    from vimpo_bench.algorithms import registry

    assert names() == ["dapo", "dr_grpo", "grpo", "rloo", "vimpo"]
    assert REGISTRY["dr_grpo"] is grpo.DrGrpo and REGISTRY["rloo"] is rloo.Rloo
    with pytest.raises(ValueError, match="algorithm name 'grpo' is taken by Grpo"):
        registry.register("grpo")(rloo.Rloo)
    assert REGISTRY["grpo"] is grpo.Grpo
