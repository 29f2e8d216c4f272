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

    def rows_of(self, chosen: list[int]) -> torch.Tensor:
        """The row indices answering the prompts `chosen` (group ids), group after group in that order."""
        if not chosen:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([(self.group_ids == g).nonzero().squeeze(1) for g in chosen])

    def groups(self, chosen: list[int]) -> Rollouts:
        """The rows answering the prompts `chosen` (group ids, in that order), renumbered 0, 1, ..."""
        rows = self.rows_of(chosen)
        sizes = [int((self.group_ids == g).sum()) for g in chosen]
        return Rollouts(
            prompt_ids=self.prompt_ids[rows], prompt_mask=self.prompt_mask[rows],
            response_ids=self.response_ids[rows], response_mask=self.response_mask[rows],
            truncated=self.truncated[rows],
            group_ids=torch.arange(len(chosen)).repeat_interleave(torch.tensor(sizes, dtype=torch.long)),
            texts=[self.texts[i] for i in rows.tolist()], prompts=[self.prompts[i] for i in rows.tolist()],
            sample_logp=None if self.sample_logp is None else self.sample_logp[rows],
        )


def pad_right(x: torch.Tensor, width: int, value: float) -> torch.Tensor:
    """[B, L] -> [B, width], `value` appended on the right (responses)."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


def pad_left(x: torch.Tensor, width: int, value: float) -> torch.Tensor:
    """[B, L] -> [B, width], `value` prepended on the left (prompts)."""
    return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)


def concat_rollouts(parts: list[Rollouts], pad_token_id: int) -> Rollouts:
    """Batches one after the other, group ids continued: prompts re-padded on the left, responses on the right
    (the positions `logprobs.position_ids_from_mask` gives are unchanged by extra left padding)."""
    p_width = max(p.prompt_ids.shape[1] for p in parts)
    t_width = max(p.response_ids.shape[1] for p in parts)
    left = lambda x, v: pad_left(x, p_width, v)  # noqa: E731
    right = lambda x, v: pad_right(x, t_width, v)  # noqa: E731
    offsets = [0]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + (int(part.group_ids.max()) + 1 if len(part) else 0))
    logps = [p.sample_logp for p in parts]
    return Rollouts(
        prompt_ids=torch.cat([left(p.prompt_ids, pad_token_id) for p in parts]),
        prompt_mask=torch.cat([left(p.prompt_mask, 0) for p in parts]),
        response_ids=torch.cat([right(p.response_ids, pad_token_id) for p in parts]),
        response_mask=torch.cat([right(p.response_mask, 0) for p in parts]),
        truncated=torch.cat([p.truncated for p in parts]),
        group_ids=torch.cat([p.group_ids + off for p, off in zip(parts, offsets, strict=True)]),
        texts=[t for p in parts for t in p.texts],
        prompts=[t for p in parts for t in p.prompts],
        sample_logp=None if any(x is None for x in logps) else torch.cat([right(x, 0.0) for x in logps]),
    )


class Generator(Protocol):
    """Samples `params.n` responses per prompt from the current policy weights."""

    def generate(self, prompts: list[str], params: SamplingParams, seed: int | None = None) -> Rollouts: ...
