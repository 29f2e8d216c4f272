"""A tabular tree MDP for exact checks of the losses (tests/test_vimpo_math.py, tests/test_fixed_points.py)."""

import itertools
import math

import torch


class Tree:
    """A depth-D tree MDP with K actions per state: sequences y = (a_0..a_{D-1}), reward at the leaf.

    States are prefixes; the tabular policy has one logit row per internal state.
    """

    def __init__(self, depth=2, actions=3, rewards="binary", seed=0):
        g = torch.Generator().manual_seed(seed)
        self.depth, self.actions = depth, actions
        self.prefixes = [p for d in range(depth) for p in itertools.product(range(actions), repeat=d)]
        self.row = {p: i for i, p in enumerate(self.prefixes)}
        self.leaves = list(itertools.product(range(actions), repeat=depth))
        self.ref_logits = torch.randn(len(self.prefixes), actions, generator=g)
        if rewards == "binary":
            r = (torch.rand(len(self.leaves), generator=g) < 0.4).float()
            r[0], r[1] = 1.0, 0.0  # both outcomes present
        else:
            r = torch.rand(len(self.leaves), generator=g)
        self.rewards = r
        self.state_rows = torch.tensor([[self.row[y[:t]] for t in range(depth)] for y in self.leaves])
        self.leaf_actions = torch.tensor(self.leaves)

    def token_logp(self, logits):
        """[N leaves, D] log pi(a_t | s_t) for each leaf under the given logit table."""
        return torch.log_softmax(logits, dim=-1)[self.state_rows, self.leaf_actions]

    def sequence_p(self, logits):
        return self.token_logp(logits).sum(1).exp()

    def optimum(self, beta):
        """pi* ∝ pi_ref exp(R / beta) over sequences, and V* = beta log Z at the root."""
        ref = self.sequence_p(self.ref_logits)
        w = ref * torch.exp(self.rewards / beta)
        return w / w.sum(), beta * math.log(float(w.sum()))

    def optimal_logits(self, beta):
        """Token-level pi*(a|s) = pi_ref(a|s) exp((r + V*(s') - V*(s)) / beta), by backward induction.

        Returns (logits of pi*, dict of V*(s) per prefix, with V*(leaf) = 0 after the reward)."""
        values = {}
        logits = torch.zeros_like(self.ref_logits)
        for p in sorted(self.prefixes, key=len, reverse=True):
            ref = torch.log_softmax(self.ref_logits[self.row[p]], -1)
            if len(p) == self.depth - 1:
                future = torch.stack([self.rewards[self.leaves.index(p + (a,))] for a in range(self.actions)])
            else:
                future = torch.stack([values[p + (a,)] for a in range(self.actions)])
            values[p] = beta * torch.logsumexp(ref + future / beta, 0)
            logits[self.row[p]] = ref + future / beta
        return logits, values
