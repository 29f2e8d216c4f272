"""The vLLM rollout backend (GPU only; `pip install vimpo-bench[vllm]`). Imported lazily: nothing
else in the package imports vllm, so CPU installs never need it.

Same `Generator` protocol as `rollout.hf.HFGenerator`: prompts are tokenized here with the same
`add_special_tokens` rule and handed to vLLM as token ids, so both backends see identical prompt
tokens. Sampling is exactly temperature / top-p / top-k: the model's `generation_config.json`
defaults are not applied (`generation_config="vllm"`), matching the HF backend. A seeded call
passes the seed per request, so results do not depend on what the engine ran before.
"""

from __future__ import annotations

from typing import Any

import torch

from vimpo_bench.rollout.base import Rollouts, SamplingParams


def _pad(rows: list[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), max(width, 1)), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        if not r:
            continue
        sl = slice(ids.shape[1] - len(r), None) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


class VLLMGenerator:
    """`Generator` over a vLLM engine loaded from a model folder or hub id.

    engine_kwargs go to `vllm.LLM` (tensor_parallel_size, enable_prefix_caching, ...).
    return_sample_logp: also return the log-probs of the sampled tokens (vLLM's `logprobs=0`).
    """

    def __init__(
        self,
        model: str,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        seed: int = 0,
        add_special_tokens: bool = True,
        return_sample_logp: bool = False,
        **engine_kwargs: Any,
    ):
        from vllm import LLM

        self.llm = LLM(
            model=model,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            generation_config="vllm",
            **engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.add_special_tokens = add_special_tokens
        self.return_sample_logp = return_sample_logp
        self.pad_token_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )

    def _sampling(self, params: SamplingParams, seed: int | None):
        from vllm import SamplingParams as VllmSamplingParams

        greedy = params.temperature == 0
        return VllmSamplingParams(
            n=params.n,
            temperature=0.0 if greedy else float(params.temperature),
            top_p=1.0 if greedy else float(params.top_p),
            top_k=params.top_k if params.top_k > 0 and not greedy else -1,  # -1: off in every vLLM version
            min_p=0.0,
            repetition_penalty=1.0,
            max_tokens=params.max_new_tokens,
            seed=seed,
            logprobs=0 if self.return_sample_logp else None,
            skip_special_tokens=True,
        )

    def generate(self, prompts: list[str], params: SamplingParams, seed: int | None = None) -> Rollouts:
        """`params.n` responses per prompt, rows grouped by prompt (see `Rollouts`)."""
        if not prompts:
            raise ValueError("generate: no prompts")
        encoded = self.tokenizer(list(prompts), add_special_tokens=self.add_special_tokens)["input_ids"]
        requests = [{"prompt_token_ids": ids} for ids in encoded]
        outputs = self.llm.generate(requests, self._sampling(params, seed), use_tqdm=False)
        prompt_rows, response_rows, texts, truncated, logps = [], [], [], [], []
        for ids, output in zip(encoded, outputs, strict=True):
            for completion in output.outputs:
                prompt_rows.append(list(ids))
                response_rows.append(list(completion.token_ids))  # the EOS is kept when generated
                texts.append(completion.text)
                truncated.append(completion.finish_reason == "length")
                if self.return_sample_logp:
                    logps.append(
                        [
                            step[token].logprob
                            for step, token in zip(
                                completion.logprobs or [], completion.token_ids, strict=False
                            )
                        ]
                    )
        prompt_ids, prompt_mask = _pad(prompt_rows, self.pad_token_id, left=True)
        response_ids, response_mask = _pad(response_rows, self.pad_token_id, left=False)
        sample_logp = None
        if self.return_sample_logp:
            sample_logp = torch.zeros(response_ids.shape, dtype=torch.float32)
            for i, row in enumerate(logps):
                sample_logp[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
        return Rollouts(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            truncated=torch.tensor(truncated, dtype=torch.bool),
            group_ids=torch.arange(len(prompts)).repeat_interleave(params.n),
            texts=texts,
            prompts=[p for p in prompts for _ in range(params.n)],
            sample_logp=sample_logp,
        )
