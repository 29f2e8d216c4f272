"""Per-token log-probabilities of responses under a causal LM: the one forward pass every loss needs.

Used under `torch.no_grad()` for the old and reference log-probs and with gradients for the update,
so that PPO ratios are exactly 1 at the first minibatch: positions follow the same convention as
transformers' `generate` with left padding (position = number of real tokens before, pads at 0).
The model's train/eval mode is the caller's choice.
"""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] 0/1 mask -> [B, L] positions: 0, 1, ... over real tokens; 0 on left padding.

    Matches `generate`: a left-padded prompt starts at position 0 and the response continues it.
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    # A peft wrapper (model.lora.r > 0) passes keyword arguments through to the model it wraps.
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _forward_chunk(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    with_entropy: bool,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward over [b, P + T]; returns logp [b, T] (and entropy [b, T]) in float32, unmasked."""
    T = response_ids.shape[1]
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    kwargs = {"logits_to_keep": T + 1} if _accepts_logits_to_keep(model) else {}
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **kwargs,
    ).logits
    # The logit at position j predicts token j + 1: the last P-1 .. P+T-2 positions score the response.
    logits = logits[:, -(T + 1) : -1].float()
    if temperature != 1.0:
        logits = logits / temperature
    log_probs = torch.log_softmax(logits, dim=-1)  # [b, T, V]
    logp = log_probs.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1) if with_entropy else None
    return logp, entropy


def token_logprobs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    with_entropy: bool = False,
    microbatch_size: int | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(a_t | s_t) for each response token, and optionally the entropy of pi(. | s_t).

    prompt_ids, prompt_mask      [B, P]  left-padded (as in `Rollouts`)
    response_ids, response_mask  [B, T]  right-padded; mask 1 on real tokens (EOS included)
    Returns (logp [B, T] float32, entropy [B, T] float32 or None), both 0 where response_mask is 0.

    Softmax runs in float32 whatever the model dtype. `temperature` divides the logits, for callers
    that sample at a temperature other than 1 and want the sampler's log-probs. `microbatch_size`
    rows per forward bound activation memory under `no_grad`; with gradients every chunk's graph is
    kept until backward, so it bounds only the logits' peak. Each chunk drops the columns that are
    padding in all its rows (positions come from the mask, so the result is unchanged).
    """
    B, T = response_ids.shape
    if B and int(prompt_mask.sum(dim=1).min()) == 0:
        raise ValueError(
            "token_logprobs: every row needs at least one prompt token (the first response token's context)"
        )
    device = next(model.parameters()).device
    step = microbatch_size or B
    logps, entropies = [], []
    for start in range(0, B, step):
        rows = slice(start, start + step)
        p_ids, p_mask = prompt_ids[rows].to(device), prompt_mask[rows].to(device)
        r_ids, r_mask = response_ids[rows].to(device), response_mask[rows].to(device)
        first = int((p_mask.sum(0) > 0).long().argmax())
        width = int((r_mask.sum(0) > 0).nonzero().max()) + 1 if r_mask.any() else 0
        if width == 0:
            logps.append(torch.zeros(r_ids.shape, device=device))
            entropies.append(torch.zeros(r_ids.shape, device=device) if with_entropy else None)
            continue
        logp, entropy = _forward_chunk(
            model,
            p_ids[:, first:],
            p_mask[:, first:],
            r_ids[:, :width],
            r_mask[:, :width],
            with_entropy,
            temperature,
        )
        keep = r_mask[:, :width].bool()
        logps.append(torch.nn.functional.pad(torch.where(keep, logp, 0.0), (0, T - width)))
        if with_entropy:
            entropies.append(torch.nn.functional.pad(torch.where(keep, entropy, 0.0), (0, T - width)))
    logp = torch.cat(logps)
    entropy = torch.cat(entropies) if with_entropy else None
    return logp, entropy
