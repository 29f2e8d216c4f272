"""What a config may ask of LoRA (`model.lora.*`), checked at config time; the adapters themselves are
`vimpo_bench.models.lora`, which says why each refusal below holds."""

from __future__ import annotations


def config_problem(config) -> str | None:
    """Why `config`'s `model.lora` cannot run (one line naming the keys), or None; config time."""
    lora = config.model.lora
    if lora.r == 0:
        return None
    if lora.dropout != 0:
        return (
            f"model.lora.dropout: must be 0, got {lora.dropout}: dropout is off in every RL forward "
            "(models.disable_dropout), so that PPO's first ratio is exactly 1"
        )
    if config.ref.schedule != "frozen":
        return (
            f"model.lora needs ref.schedule=frozen, got {config.ref.schedule}: with LoRA pi_ref is the base "
            "model (adapters off), and moving it to the merged policy is not built yet"
        )
    if config.rollout.backend == "vllm":
        return (
            "model.lora with rollout.backend=vllm is not built yet: TRL pushes weights to vLLM by merging the "
            "adapters into the frozen base in place, which moves it (and pi_ref) by rounding error each step"
        )
    targets = target_modules(lora.target_modules)
    if not targets:
        return "model.lora.target_modules: name at least one module, or all-linear"
    if config.run.engine == "trl" and "lm_head" in targets:
        return (
            "model.lora.target_modules: lm_head needs run.engine=native: TRL's fused LM head reads "
            "lm_head.weight directly, so an adapter there would never train"
        )
    return None


def target_modules(spec: str | list[str]) -> str | list[str]:
    """peft's `target_modules`: "all-linear", or a list of module names (a comma-separated string split)."""
    if isinstance(spec, str):
        return (
            spec.strip()
            if spec.strip() == "all-linear"
            else [n.strip() for n in spec.split(",") if n.strip()]
        )
    return list(spec)
