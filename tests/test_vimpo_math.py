"""VIMPO's derivation checked exactly: the tabular optimum, the identities between advantages, and the
value-loss gradient."""

import dataclasses

import pytest
import torch
from tabular import Tree

from vimpo_bench.algorithms import Batch, get, grpo, vimpo

# Tiny tensors: thread hand-offs would dominate (the shared fixture lives in conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("baseline", ["mean", "soft"])
@pytest.mark.parametrize("rewards", ["binary", "graded"])
def test_value_loss_under_exact_on_policy_weights_reaches_the_kl_optimum(baseline, rewards):
    tree = Tree(depth=2, actions=3, rewards=rewards, seed=1)
    beta = 0.5
    theta = tree.ref_logits.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.1)
    ref_lp = tree.token_logp(tree.ref_logits)
    n = len(tree.leaves)
    mask = torch.ones(n, tree.depth)
    gid = torch.zeros(n, dtype=torch.long)
    for _ in range(400):
        lp = tree.token_logp(theta)
        p = lp.sum(1).exp().detach()  # exact on-policy weights
        loss, _ = vimpo.value_loss(lp - ref_lp, mask, tree.rewards, gid, beta, baseline, weights=p)
        opt.zero_grad()
        loss.backward()
        opt.step()
    p_star, v_star = tree.optimum(beta)
    p = tree.sequence_p(theta.detach())
    assert (p - p_star).abs().max() < 1e-3
    lp = tree.token_logp(theta.detach())
    vhat = vimpo.root_value((lp - ref_lp).sum(1), tree.rewards, gid, beta, baseline, weights=p)
    assert vhat[0].item() == pytest.approx(v_star, abs=1e-3)


def test_implied_advantage_equals_return_minus_optimal_value_under_pi_star():
    beta = 0.3
    tree = Tree(depth=3, actions=3, rewards="graded", seed=2)
    logits, values = tree.optimal_logits(beta)
    l_star = tree.token_logp(logits) - tree.token_logp(tree.ref_logits)
    n = len(tree.leaves)
    mask = torch.ones(n, tree.depth)
    gid = torch.zeros(n, dtype=torch.long)
    adv = vimpo.advantages(l_star, mask, tree.rewards, gid, beta, kind="implied")
    expected = torch.tensor([[tree.rewards[i].item() - values[y[:t]].item() for t in range(tree.depth)]
                             for i, y in enumerate(tree.leaves)])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    # every terminal residual is 0, with Vhat estimated from exact pi* weights, for both baselines
    p_star = tree.sequence_p(logits)
    for baseline in ("mean", "soft"):
        _, parts = vimpo.value_loss(l_star, mask, tree.rewards, gid, beta, baseline, weights=p_star)
        assert parts["delta"].abs().max() < 1e-5
        assert parts["vhat"][0].item() == pytest.approx(values[()].item(), abs=1e-5)
    # the forward recurrence recovers V*(s_t) along every path and V(s_T) = 0
    v = vimpo.implied_values(l_star, mask, torch.full((n,), values[()].item()), beta, tree.rewards)
    for i, y in enumerate(tree.leaves):
        for t in range(tree.depth):
            assert v[i, t].item() == pytest.approx(values[y[:t]].item(), abs=1e-5)
    assert v[:, -1].abs().max() < 1e-5


def random_batch(B=12, T=7, groups=3, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    return Batch(
        logp=torch.randn(B, T, generator=g) * scale,
        old_logp=torch.randn(B, T, generator=g) * scale,
        ref_logp=torch.randn(B, T, generator=g) * scale,
        mask=mask,
        rewards=(torch.rand(B, generator=g) < 0.5).float(),
        group_ids=torch.arange(B) % groups,
    )


def test_at_the_reference_policy_implied_is_zero_and_mc_is_dr_grpo():
    b = random_batch()
    lr = torch.zeros_like(b.mask)  # pi_old = pi_ref
    implied = vimpo.advantages(lr, b.mask, b.rewards, b.group_ids, 0.05, "implied")
    assert implied.abs().max() == 0
    mc = vimpo.advantages(lr, b.mask, b.rewards, b.group_ids, 0.05, "mc")
    dr = grpo.advantages(b.rewards, b.group_ids, scale="none").unsqueeze(1) * b.mask
    torch.testing.assert_close(mc, dr)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("baseline", ["mean", "soft"])
def test_implied_equals_mc_plus_old_terminal_residual(seed, baseline):
    b = random_batch(seed=seed)
    beta = 0.1
    old_lr = b.old_logp - b.ref_logp
    implied = vimpo.advantages(old_lr, b.mask, b.rewards, b.group_ids, beta, "implied", baseline=baseline)
    mc = vimpo.advantages(old_lr, b.mask, b.rewards, b.group_ids, beta, "mc", baseline=baseline)
    _, parts = vimpo.value_loss(old_lr, b.mask, b.rewards, b.group_ids, beta, baseline)
    torch.testing.assert_close(implied, (mc + parts["delta"].unsqueeze(1)) * b.mask, atol=1e-6, rtol=0)
    residual = vimpo.advantages(old_lr, b.mask, b.rewards, b.group_ids, beta, "residual", baseline=baseline)
    torch.testing.assert_close(residual, -parts["delta"].unsqueeze(1) * b.mask, atol=1e-6, rtol=0)


def test_value_loss_gradient_is_the_hand_derived_reinforce_step():
    b = random_batch(seed=3)
    beta = 0.2
    logp = b.logp.clone().requires_grad_(True)
    loss, parts = vimpo.value_loss(logp - b.ref_logp, b.mask, b.rewards, b.group_ids, beta)
    loss.backward()
    n = b.mask.shape[0]
    expected = 2 * beta * parts["delta"].unsqueeze(1) * b.mask / n
    torch.testing.assert_close(logp.grad, expected, atol=1e-7, rtol=1e-5)


def test_discounted_implied_advantage_matches_a_loop():
    b = random_batch(seed=4)
    lam, beta = 0.9, 0.05
    old_lr = b.old_logp - b.ref_logp
    adv = vimpo.advantages(old_lr, b.mask, b.rewards, b.group_ids, beta, "implied", lam=lam)
    B, T = b.mask.shape
    for i in range(B):
        for t in range(T):
            want = sum(lam ** (k - t) * beta * old_lr[i, k] * b.mask[i, k] for k in range(t, T)) * b.mask[i, t]
            assert adv[i, t].item() == pytest.approx(float(want), abs=1e-6)


def test_outcome_advantage_is_reward_minus_root_value():
    b = random_batch(seed=5)
    old_lr = b.old_logp - b.ref_logp
    adv = vimpo.advantages(old_lr, b.mask, b.rewards, b.group_ids, 0.05, "outcome")
    vhat = vimpo.root_value((old_lr * b.mask).sum(1), b.rewards, b.group_ids, 0.05)
    torch.testing.assert_close(adv, (b.rewards - vhat).unsqueeze(1) * b.mask)


def test_no_actor_ablation_trains_on_the_value_loss_alone():
    """advantage `none`: the actor term is zero, so the loss and its gradient are c_V L_V's."""
    b = random_batch(seed=7)
    algo = get("vimpo", beta=0.1, value_coef=2.0, advantage="none")
    assert torch.count_nonzero(algo.advantages(b)) == 0
    logp = b.logp.clone().requires_grad_(True)
    loss, stats = algo.loss(dataclasses.replace(b, logp=logp))
    loss.backward()
    assert stats["loss/actor"] == 0.0
    want = logp.detach().clone().requires_grad_(True)
    lv, _ = vimpo.value_loss(want - b.ref_logp, b.mask, b.rewards, b.group_ids, 0.1)
    (2.0 * lv).backward()
    torch.testing.assert_close(logp.grad, want.grad)


def test_vimpo_loss_combines_actor_and_value_terms():
    b = random_batch(seed=6)
    algo = get("vimpo", beta=0.1, value_coef=2.0)
    loss, stats = algo.loss(b)
    assert loss.item() == pytest.approx(stats["loss/actor"] + 2.0 * stats["loss/value"], rel=1e-5)
    lv, _ = vimpo.value_loss(b.logp - b.ref_logp, b.mask, b.rewards, b.group_ids, 0.1)
    assert stats["loss/value"] == pytest.approx(lv.item(), rel=1e-6)
    assert stats["vimpo/value_coef"] == 2.0 and stats["vimpo/value_scale"] == pytest.approx(0.4)


def test_left_out_responses_are_out_of_both_losses_and_vhat():
    """`Batch.include` (the truncation rule `mask`): L_V and Vhat are the ones of the kept responses."""
    b = random_batch(seed=7)
    keep = torch.rand(b.rewards.shape, generator=torch.Generator().manual_seed(1)) > 0.25
    algo = get("vimpo", beta=0.1)
    _, stats = algo.loss(Batch(**{**b.__dict__, "include": keep}))
    lv, parts = vimpo.value_loss(b.logp[keep] - b.ref_logp[keep], b.mask[keep], b.rewards[keep], b.group_ids[keep], 0.1)
    assert stats["loss/value"] == pytest.approx(lv.item(), rel=1e-6)
