"""The fixed-point table of docs/algorithms.md, one test per row: VIMPO's full loss L_actor + c_V L_V,
trained with Adam on a tabular tree MDP with exact on-policy expectations, reaches the policy
pi*_{beta_eff} that algorithms/fixed_points.py predicts (max |p - p*| <= 0.03 over sequences), or runs to a
corner where the table says no fixed point exists.

Exact expectations: the batch is every leaf of the tree, each weighted by its probability under the
current policy. The real loss pieces run on it: `vimpo.advantages` and `vimpo.value_loss` take the
probabilities as weights, and the actor's per-token loss is scaled row by row by N p(y) so that each
aggregation's mean over the N rows is the expectation under pi (token-mean and seq-mean-token-mean then
weigh a response 1/T, seq-sum 1, seq-mean-token-sum-norm 1/norm_len: the table's w).
"""

import pytest
import torch
from tabular import Tree

from vimpo_bench.algorithms import get, vimpo
from vimpo_bench.algorithms.core import aggregate, ppo_clip_loss
from vimpo_bench.algorithms.fixed_points import effective_beta

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BETA = 0.5  # large enough that pi*_beta is far from both pi_ref and the argmax of R: rows differ visibly


def expected_actor_loss(tree, lp, ref_lp, kind, agg, norm_len=None):
    """L_actor under exact on-policy expectations (rho = 1): the real advantage, clip and aggregation, each
    row's per-token loss scaled by N p(y). Returns (loss, p) with p the detached sequence probabilities."""
    n, depth = lp.shape
    p = lp.sum(1).exp().detach()
    adv = vimpo.advantages((lp - ref_lp).detach(), torch.ones(n, depth), tree.rewards, torch.zeros(n), BETA, kind,
                           weights=p)
    per_token, _, _ = ppo_clip_loss(lp, lp.detach(), adv, 0.2, 0.2)
    return aggregate(per_token * (n * p).unsqueeze(1), torch.ones(n, depth), agg, norm_len), p


def train_tabular(kind, agg, depth, value_scale, steps=2500, lr=0.05, norm_len=None, seed=None):
    """Adam on the expected full loss; returns (tree, final theta)."""
    tree = Tree(depth=depth, actions=3, rewards="graded", seed=depth if seed is None else seed)
    theta = tree.ref_logits.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    ref_lp = tree.token_logp(tree.ref_logits)
    n = len(tree.leaves)
    mask = torch.ones(n, depth)
    group = torch.zeros(n)
    c_v = value_scale / (2 * BETA)
    for _ in range(steps):
        lp = tree.token_logp(theta)  # on-policy: pi_old is the policy now, rho = 1
        actor, p = expected_actor_loss(tree, lp, ref_lp, kind, agg, norm_len)
        value, _ = vimpo.value_loss(lp - ref_lp, mask, tree.rewards, group, BETA, "mean", weights=p)
        optimizer.zero_grad()
        (actor + c_v * value).backward()
        optimizer.step()
    return tree, theta.detach()


def distance_to_optimum(tree, theta, beta):
    p_star, _ = tree.optimum(beta)
    return (tree.sequence_p(theta) - p_star).abs().max().item()


# (advantage, aggregation, response length T, s = 2 beta c_V, norm_len): every row of the table, at two
# or three lengths, and at the default s = 0.5 where it matters.
CONVERGING = [
    (kind, agg, depth, 1.0, None)
    for kind in ("soft_rtg", "residual", "none", "mc", "outcome", "implied")
    for agg in ("token-mean", "seq-sum")
    for depth in (2, 3)
    if not (kind == "implied" and agg == "seq-sum")  # s = 1 = w: no fixed point (below)
] + [
    ("implied", "seq-sum", 2, 2.0, None),             # s > w = 1: beta (1 - 1/2)
    ("implied", "token-mean", 4, 0.5, None),          # the default s: beta (1 - 1/(4 * 0.5)) = beta / 2
    ("implied", "seq-mean-token-mean", 3, 1.0, None),
    ("implied", "seq-mean-token-sum-norm", 2, 1.0, 4),  # w = 1/4
    ("mc", "seq-mean-token-sum-norm", 2, 1.0, 4),
    ("soft_rtg", "seq-sum", 4, 0.5, None),
    ("residual", "token-mean", 4, 0.5, None),
]


@pytest.mark.parametrize("kind,agg,depth,value_scale,norm_len", CONVERGING,
                         ids=[f"{k}-{a}-T{d}-s{s}" for k, a, d, s, _ in CONVERGING])
def test_the_full_loss_reaches_the_predicted_fixed_point(kind, agg, depth, value_scale, norm_len):
    predicted = effective_beta(kind, agg, BETA, value_scale, depth, norm_len)
    assert predicted is not None
    tree, theta = train_tabular(kind, agg, depth, value_scale, norm_len=norm_len)
    assert distance_to_optimum(tree, theta, predicted) <= 0.03
    if predicted != BETA:  # and the row is not pi*_beta: the prediction is what separates them
        assert distance_to_optimum(tree, theta, BETA) > 0.03


@pytest.mark.parametrize("agg,depth,value_scale", [("seq-sum", 2, 1.0), ("seq-sum", 3, 0.5),
                                                   ("token-mean", 2, 0.5)])
def test_implied_without_a_fixed_point_ascends_the_kl_to_a_corner(agg, depth, value_scale):
    """w >= s: the actor's KL ascent is at least the value loss's pull; the policy goes deterministic."""
    assert effective_beta("implied", agg, BETA, value_scale, depth) is None
    tree, theta = train_tabular("implied", agg, depth, value_scale)
    p = tree.sequence_p(theta)
    p_star, _ = tree.optimum(BETA)
    kl = lambda q: (q * (q.log() - tree.sequence_p(tree.ref_logits).log())).sum().item()  # noqa: E731
    assert p.max().item() > 0.95
    assert kl(p) > 2 * kl(p_star)


def test_implied_actor_gradient_is_kl_ascent_and_soft_rtg_is_the_regularized_return():
    """The table's middle column, exactly: -grad L_actor (rho = 1, seq-sum) for implied is +beta grad KL;
    for soft_rtg and residual it is grad(E[R] - beta KL); for mc and outcome grad E[R]."""
    tree = Tree(depth=3, actions=3, rewards="graded", seed=5)
    torch.manual_seed(0)
    theta = (tree.ref_logits + 0.5 * torch.randn_like(tree.ref_logits)).requires_grad_(True)
    ref_lp = tree.token_logp(tree.ref_logits)

    def objective_gradient(reward_weight, kl_weight):
        """grad of reward_weight * E[R] - kl_weight * KL(pi || pi_ref), exact."""
        t = theta.detach().clone().requires_grad_(True)
        lp = tree.token_logp(t)
        p = lp.sum(1).exp()
        objective = reward_weight * (p * tree.rewards).sum() - kl_weight * (p * (lp - ref_lp).sum(1)).sum()
        return torch.autograd.grad(objective, t)[0]

    def actor_gradient(kind):
        actor, _ = expected_actor_loss(tree, tree.token_logp(theta), ref_lp, kind, "seq-sum")
        return -torch.autograd.grad(actor, theta)[0]

    expected = {
        "implied": -objective_gradient(0.0, BETA),  # + beta grad KL
        "soft_rtg": objective_gradient(1.0, BETA),
        "residual": objective_gradient(1.0, BETA),
        "mc": objective_gradient(1.0, 0.0),
        "outcome": objective_gradient(1.0, 0.0),
        "none": torch.zeros_like(theta),
    }
    for kind, grad in expected.items():
        torch.testing.assert_close(actor_gradient(kind), grad, atol=1e-5, rtol=1e-4, msg=kind)


def test_soft_rtg_is_return_minus_root_value_minus_the_kl_to_go():
    torch.manual_seed(1)
    l_old = torch.randn(4, 5)
    mask = torch.tensor([[1.0] * 5, [1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 5])
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    group = torch.tensor([0, 0, 1, 1])
    beta = 0.1
    adv = vimpo.advantages(l_old, mask, rewards, group, beta, kind="soft_rtg")
    vhat = vimpo.root_value((l_old * mask).sum(1), rewards, group, beta)
    for i in range(4):
        length = int(mask[i].sum())
        for t in range(length):
            expected = rewards[i] - vhat[i] - beta * l_old[i, t:length].sum()
            assert adv[i, t].item() == pytest.approx(expected.item(), abs=1e-5)
        assert adv[i, length:].abs().sum() == 0
    residual = vimpo.advantages(l_old, mask, rewards, group, beta, kind="residual")
    torch.testing.assert_close(adv[:, 0], residual[:, 0])  # at t = 0 the two readings agree


def test_a_vimpo_combination_without_a_fixed_point_is_refused_and_a_biased_one_warned_about(tmp_path):
    """In one line, before any run: from a config, a study file and the train CLI alike (the algorithm class
    itself builds any combination: measurements such as an actor term alone, c_V = 0, need it)."""
    import subprocess
    import sys

    from vimpo_bench.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="no fixed point.*KL grows without bound"):
        load_config(None, ["algo.advantage=implied", "algo.agg=seq-sum", "algo.value_scale=0.5"])
    load_config(None, ["algo.advantage=implied", "algo.agg=seq-sum", "algo.value_scale=2.0"])  # s > 1: beta / 2
    get("vimpo", advantage="implied", agg="seq-sum", value_coef=0.0)
    with pytest.raises(ConfigError, match="no fixed point"):  # 4 tokens x s 0.2 <= 1: no length has one
        load_config(None, ["algo.advantage=implied", "rollout.max_new_tokens=4", "algo.value_scale=0.2"])
    with pytest.warns(UserWarning, match=r"beta_eff = beta \(1 - w / s\) with w = 1/T.*0.04643 for 28-token"):
        load_config(None, ["algo.advantage=implied", "algo.agg=token-mean"])
    with pytest.warns(UserWarning, match=r"beta_eff = beta s / \(s \+ w\)"):
        load_config(None, ["algo.advantage=mc", "algo.agg=token-mean"])
    cli = subprocess.run([sys.executable, "-m", "vimpo_bench", "train", "--set", "algo.advantage=implied",
                          "--set", "algo.agg=seq-sum"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert cli.returncode == 2
    assert "no fixed point" in cli.stderr and "Traceback" not in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
