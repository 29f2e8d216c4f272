"""The generator protocol: prompts in, sampled token ids and masks out.

Backends (transformers here, vLLM on a GPU) return the same `Rollouts`, so the trainer and the
evaluator do not know which one produced a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings. temperature 0 means greedy; top_k 0 disables top-k (never the HF default 50)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32
    n: int = 1


@dataclass
class Rollouts:
    """A batch of B = len(prompts) * n responses, grouped: rows [i*n, (i+1)*n) answer prompt i.

    Shapes (P = longest prompt, T = longest response, both padded):
      prompt_ids      [B, P]  left-padded prompt token ids
      prompt_mask     [B, P]  1 on real prompt tokens
      response_ids    [B, T]  right-padded response token ids (EOS included when generated)
      response_mask   [B, T]  1 on response tokens (EOS included), 0 on padding
      truncated       [B]     bool: no EOS within max_new_tokens
      group_ids       [B]     long: index of the prompt each response answers
      sample_logp     [B, T]  float32 log-probs of the sampled tokens under the sampling policy, or None
    texts: the decoded responses (EOS and padding stripped); prompts: the B prompt strings.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    truncated: torch.Tensor
    group_ids: torch.Tensor
    texts: list[str]
    prompts: list[str]
    sample_logp: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.texts)


class Generator(Protocol):
    """Samples `params.n` responses per prompt from the current policy weights."""

    def generate(self, prompts: list[str], params: SamplingParams, seed: int | None = None) -> Rollouts: ...
