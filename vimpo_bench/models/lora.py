"""LoRA through peft (`model.lora.*`), the same in both engines.

With `model.lora.r` > 0, `steps.load_starting_policy` wraps the starting policy in peft LoRA adapters
(`wrap`): W x + (alpha / r) B A x on `model.lora.target_modules`, every base weight frozen, B = 0 at the
start (so the wrapped policy computes what the starting model does), A drawn under the run's seed in a fork
of the RNG (the run's other draws are those of a full fine-tuning run). What changes, and why:

- pi_ref (`frozen_reference`): the base model without its adapters, whose tensors *are* the policy's frozen
  base weights (a second module tree over the same storage): it equals the starting policy (B = 0), costs no
  memory, and is a plain transformers model, so both engines compute its log-probs as for full fine-tuning.
  It stays equal to the start because nothing writes the base weights: the optimizer holds only the adapters,
  and a checkpoint's merged weights are computed aside (`merged_state_dict`), never merged in place.
- moving pi_ref (`ref.schedule` hard/ema) is refused at config time (`config_problem`): pi_ref would have
  to take the merged policy weights (base + B A) into tensors of its own; not built yet.
- dropout: `model.lora.dropout` must be 0, as every dropout in an RL forward (`models.disable_dropout`):
  PPO's ratio is exactly 1 on the first minibatch; TRL's `disable_dropout` would zero it anyway.
- optimizer: only the adapter parameters (`trainable_parameters`), so AdamW keeps state for them alone;
  gradient clipping (`optim.max_grad_norm`) and weight decay act on the adapters only.
- checkpoints (`checkpoints.py`): `policy/` holds the merged weights, a plain model that `vimpo-bench eval
  --model` loads like any other; `adapter/` holds the adapter (peft's `save_pretrained` layout), which a
  resume loads onto the rebuilt starting model (`load_adapter`): the weights the run trains are exactly
  restored, where reloading merged weights would not be (and would lose the adapter's optimizer state).
- the trl engine trains the same wrapped policy (a `PeftModel` handed to GRPOTrainer, whose `peft_config`
  path would wrap it a second time and build no pi_ref we could schedule). Refused with LoRA: an adapter on
  `lm_head` (TRL's fused LM head reads `lm_head.weight` directly and would never train it), vLLM rollouts
  (TRL pushes weights by merging the adapters into the base in place and unmerging them, which moves the
  frozen base, and pi_ref with it, by rounding error at each push) and, at start, DeepSpeed/FSDP (sharding
  the policy and a pi_ref that share tensors is not built).

What a config may ask of LoRA is checked at config time by `vimpo_bench.config.lora`. This module imports
peft only when LoRA is on.
"""

from __future__ import annotations

import copy
import itertools
import sys
from pathlib import Path

import torch

from vimpo_bench.config.lora import target_modules
from vimpo_bench.models import frozen_copy

ADAPTER = "default"  # peft's name for the one adapter


def wrap(model: torch.nn.Module, lora, seed: int) -> torch.nn.Module:
    """`model` with LoRA adapters per `lora` (a config.LoraConfig), or `model` itself when `lora.r` is 0.
    A is drawn from `seed` in a fork of the RNG (the same start on every run with this seed, the global RNG
    untouched); B = 0, so the wrapped model computes what `model` does."""
    if lora.r == 0:
        return model
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_modules(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, peft_config)
        except ValueError as exc:  # e.g. target modules that the model does not have
            raise ValueError(f"model.lora.target_modules: {str(exc).strip().splitlines()[0]}") from None


def is_lora(model) -> bool:
    """Whether `model` is a peft model (peft is imported once a model was wrapped; never imported here)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the optimizer updates: every parameter of a full fine-tuning policy (in `parameters()` order, so
    its optimizer state is laid out as before LoRA existed), the adapters of a LoRA one."""
    return [p for p in model.parameters() if p.requires_grad]


def frozen_reference(policy: torch.nn.Module) -> torch.nn.Module:
    """pi_ref at the start of a run, eval mode, no gradients: `models.frozen_copy` of a full fine-tuning policy;
    for a LoRA policy, the base model without adapters over the policy's own frozen base tensors (no copy of
    any weight)."""
    if not is_lora(policy):
        return frozen_copy(policy)
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = policy.get_base_model()
    shared = {id(t): t for t in itertools.chain(base.parameters(), base.buffers())}
    reference = copy.deepcopy(base, memo=shared)  # new modules, the same tensors
    for name, module in list(reference.named_modules()):
        if isinstance(module, BaseTunerLayer):
            reference.set_submodule(name, module.get_base_layer())
    reference.eval()
    reference.requires_grad_(False)
    return reference


@torch.no_grad()
def merged_state_dict(policy) -> dict[str, torch.Tensor]:
    """The LoRA policy's weights as a plain model's state dict: W + (alpha / r) B A for each adapted layer
    (peft's own delta, in the base weight's dtype), every other tensor as is. Computed aside: the policy's
    base weights, which pi_ref shares, are never touched."""
    from peft.tuners.lora import LoraLayer

    base = policy.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            if module.merged:
                raise ValueError(
                    f"{name}: its adapter is merged into the base weights; unmerge it before saving"
                )
            deltas[f"{name}.weight"] = module.get_delta_weight(ADAPTER)
    out = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        out[plain] = tensor + deltas.pop(plain).to(tensor.dtype) if plain in deltas else tensor
    if deltas:
        raise ValueError(f"no base weight for the adapters of {', '.join(sorted(deltas))}")
    return out


def save(policy, policy_dir: Path, adapter_dir: Path, policy_weights: dict | None = None) -> None:
    """A LoRA policy saved twice: merged into a plain model in `policy_dir` (what evaluation loads) and as its
    adapter in `adapter_dir` (what a resume loads)."""
    if policy_weights is not None:  # gathered from shards: LoRA under DeepSpeed/FSDP is refused at start (trl)
        raise ValueError("saving a LoRA policy from gathered (sharded) weights is not built yet")
    policy.get_base_model().save_pretrained(policy_dir, state_dict=merged_state_dict(policy))
    policy.save_pretrained(adapter_dir)


def load_adapter(policy, adapter_dir: Path) -> None:
    """The adapter saved by `save` into LoRA policy `policy` (built on the same starting model), in place;
    ValueError naming the folder when its tensors do not match the policy's adapters."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = next(policy.parameters()).device
    state = load_file(adapter_dir / "adapter_model.safetensors", device=str(device))
    result = set_peft_model_state_dict(policy, state, adapter_name=ADAPTER)
    expected = {k for k, p in policy.named_parameters() if p.requires_grad}
    missing = sorted(k for k in result.missing_keys if k in expected)
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{adapter_dir} does not fit this policy's adapters (missing {missing[:3]}, unexpected "
            f"{sorted(result.unexpected_keys)[:3]}); was the run saved with another model.lora?"
        )
