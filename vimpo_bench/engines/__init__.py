"""Training engines beside the native loop (`vimpo_bench.train`).

`trl` runs our algorithms inside TRL's GRPOTrainer (`trl_engine.py`, `trl_trainer.py`); this module
holds what is checked before anything heavy is imported: what the engine cannot honour (config time)
and what the machine lacks (start time).
"""

from __future__ import annotations

import importlib.util


def trl_config_problem(config) -> str | None:
    """Why the trl engine cannot honour `config` (one line naming the keys), or None."""
    pieces = config.optim.minibatches * config.optim.grad_accum
    if config.rollout.prompts_per_step % pieces:
        return (f"run.engine=trl splits each step's groups evenly over optim.minibatches x optim.grad_accum "
                f"({pieces}) microbatches; rollout.prompts_per_step ({config.rollout.prompts_per_step}) must be a "
                "multiple of it")
    return None


def trl_preflight(config) -> None:
    """Fail in one line before a run is opened when this machine cannot train `config` on the trl engine."""
    if importlib.util.find_spec("trl") is None:
        raise RuntimeError('run.engine=trl needs TRL: pip install -e ".[trl]"')
    if config.rollout.backend == "vllm":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("rollout.backend=vllm needs a CUDA GPU and none is visible; use rollout.backend=hf "
                               "on this machine")
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError('rollout.backend=vllm needs vLLM: pip install -e ".[vllm]"')
