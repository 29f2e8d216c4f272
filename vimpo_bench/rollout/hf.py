"""The transformers rollout backend: `model.generate` with a KV cache, left-padded prompt batches.

The sampling distribution is exactly softmax(logits / temperature), cut by top-k / top-p when
asked, and nothing else: the generation config is built here with every other logits processor
neutral (no repetition penalty, no min length, ...), so defaults shipped in a checkpoint's
`generation_config.json` (Qwen's top_k=20 and repetition_penalty=1.05, the global top_k=50) never
change what is sampled, and `token_logprobs` at temperature 1 reproduces the sampler's log-probs.

Seeding: transformers' `generate` takes no `torch.Generator`, so a seeded call runs inside
`torch.random.fork_rng` on the model's device: it seeds the forked global RNG, samples, and
restores the RNG state on exit. Same seed -> same rollouts; the caller's RNG stream is untouched.
A call with `seed=None` draws from (and advances) the global RNG.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from vimpo_bench.rollout.base import Rollouts, SamplingParams, pad_left, pad_right


def validate_params(params: SamplingParams) -> None:
    """ValueError naming the bad field."""
    if params.n < 1:
        raise ValueError(f"sampling: n must be >= 1, got {params.n}")
    if params.max_new_tokens < 1:
        raise ValueError(f"sampling: max_new_tokens must be >= 1, got {params.max_new_tokens}")
    if params.temperature < 0:
        raise ValueError(f"sampling: temperature must be >= 0 (0 = greedy), got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"sampling: top_p must be in (0, 1], got {params.top_p}")
    if params.top_k < 0:
        raise ValueError(f"sampling: top_k must be >= 0 (0 = off), got {params.top_k}")


def generation_config(
    params: SamplingParams, eos_token_ids: list[int], pad_token_id: int, output_scores: bool
) -> GenerationConfig:
    """An explicit config: every field that could reshape the distribution is set to its neutral value."""
    if params.temperature == 0:
        # Greedy uses no warpers; sampling flags are left unset (setting them only draws warnings).
        sampling: dict = {"do_sample": False}
    else:
        sampling = {
            "do_sample": True,
            "temperature": float(params.temperature),
            "top_p": float(params.top_p),
            "top_k": int(params.top_k),  # explicit: 0 is off, while unset would mean 50 (or the checkpoint's)
            "min_p": 0.0,
            "typical_p": 1.0,
            "epsilon_cutoff": 0.0,
            "eta_cutoff": 0.0,
        }
    return GenerationConfig(
        **sampling,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_length=0,
        num_beams=1,
        num_return_sequences=1,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=eos_token_ids,
        pad_token_id=pad_token_id,
        use_cache=True,
        return_dict_in_generate=True,
        output_scores=output_scores,
    )


def left_pad(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [B, P], mask [B, P]) left-padded to the longest row P."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def response_masks(
    response_ids: torch.Tensor, eos_token_ids: list[int], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each row after its first EOS.

    response_ids [B, T] as generated -> (ids [B, T] with pad after the first EOS, mask [B, T] long:
    1 up to and including the first EOS, truncated [B] bool: the row has no EOS).
    """
    is_eos = torch.isin(response_ids, torch.tensor(eos_token_ids, device=response_ids.device))
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS strictly before t
    mask = (eos_before == 0).long()
    ids = response_ids.masked_fill(mask == 0, pad_token_id)
    return ids, mask, ~is_eos.any(dim=1)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the CPU RNG (and `device`'s CUDA RNG) inside a fork that restores them on exit."""
    if seed is None:
        yield
        return
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's EOS plus any the model's generation config stops on (chat models have several)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an EOS token")
    return sorted(ids)


class HFGenerator:
    """`Generator` over a transformers causal LM.

    prompt_batch_size: at most this many prompts (times `n` rows) per `generate` call, to bound
      memory; None = all at once. Rows and their RNG draws follow the prompt order either way, but
      a different microbatching draws different samples for the same seed.
    return_sample_logp: also return the sampler's log-probs of the sampled tokens
      (log_softmax of the processed scores; for greedy, of the raw logits). Costs a [rows, V]
      float tensor per step, so it is off by default.
    add_special_tokens: passed to the tokenizer for prompts (True adds BOS where the tokenizer does).

    The returned tensors live on the CPU (as a vLLM backend's would); callers move them.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompt_batch_size: int | None = None,
        return_sample_logp: bool = False,
        add_special_tokens: bool = True,
    ):
        if prompt_batch_size is not None and prompt_batch_size < 1:
            raise ValueError(f"prompt_batch_size must be >= 1 or None, got {prompt_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_batch_size = prompt_batch_size
        self.return_sample_logp = return_sample_logp
        self.add_special_tokens = add_special_tokens
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.eos_token_ids = eos_token_ids(model, tokenizer)

    def generate(self, prompts: list[str], params: SamplingParams, seed: int | None = None) -> Rollouts:
        """`params.n` responses per prompt, rows grouped by prompt (see `Rollouts`)."""
        validate_params(params)
        if not prompts:
            raise ValueError("generate: no prompts")
        encoded = self.tokenizer(list(prompts), add_special_tokens=self.add_special_tokens)["input_ids"]
        empty = [p for p, ids in zip(prompts, encoded, strict=True) if not ids]
        if empty:
            raise ValueError(f"generate: prompt {empty[0]!r} encodes to no tokens")
        device = next(self.model.parameters()).device
        step = self.prompt_batch_size or len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            with seeded(seed, device):
                parts = [
                    self._generate_batch(encoded[i : i + step], params, device)
                    for i in range(0, len(prompts), step)
                ]
        finally:
            self.model.train(was_training)
        return self._assemble(parts, prompts, params.n)

    def _generate_batch(self, encoded: list[list[int]], params: SamplingParams, device: torch.device) -> dict:
        """One `generate` call for a few prompts, each repeated n times; tensors back on the CPU."""
        prompt_ids, prompt_mask = left_pad(encoded, self.pad_token_id)
        prompt_ids = prompt_ids.repeat_interleave(params.n, dim=0).to(device)
        prompt_mask = prompt_mask.repeat_interleave(params.n, dim=0).to(device)
        config = generation_config(params, self.eos_token_ids, self.pad_token_id, self.return_sample_logp)
        out = self.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
        raw = out.sequences[:, prompt_ids.shape[1] :]
        response_ids, response_mask, truncated = response_masks(raw, self.eos_token_ids, self.pad_token_id)
        part = {
            "prompt_ids": prompt_ids.cpu(),
            "prompt_mask": prompt_mask.cpu(),
            "response_ids": response_ids.cpu(),
            "response_mask": response_mask.cpu(),
            "truncated": truncated.cpu(),
        }
        if self.return_sample_logp:
            scores = torch.stack(out.scores, dim=1).float()  # [rows, T, V], processed by the warpers
            logp = torch.log_softmax(scores, dim=-1).gather(-1, raw.unsqueeze(-1)).squeeze(-1)
            part["sample_logp"] = torch.where(response_mask.bool(), logp, 0.0).cpu()
        return part

    def _assemble(self, parts: list[dict], prompts: list[str], n: int) -> Rollouts:
        """Concatenate microbatches, re-padding prompts on the left and responses on the right."""
        p_width = max(p["prompt_ids"].shape[1] for p in parts)
        t_width = max(p["response_ids"].shape[1] for p in parts)
        cat = torch.cat
        response_ids = cat([pad_right(p["response_ids"], t_width, self.pad_token_id) for p in parts])
        response_mask = cat([pad_right(p["response_mask"], t_width, 0) for p in parts])
        sample_logp = None
        if self.return_sample_logp:
            sample_logp = cat([pad_right(p["sample_logp"], t_width, 0.0) for p in parts])
        texts = self.tokenizer.batch_decode(
            [ids[mask.bool()].tolist() for ids, mask in zip(response_ids, response_mask, strict=True)],
            skip_special_tokens=True,
        )
        return Rollouts(
            prompt_ids=cat([pad_left(p["prompt_ids"], p_width, self.pad_token_id) for p in parts]),
            prompt_mask=cat([pad_left(p["prompt_mask"], p_width, 0) for p in parts]),
            response_ids=response_ids,
            response_mask=response_mask,
            truncated=cat([p["truncated"] for p in parts]),
            group_ids=torch.arange(len(prompts)).repeat_interleave(n),
            texts=texts,
            prompts=[p for p in prompts for _ in range(n)],
            sample_logp=sample_logp,
        )
