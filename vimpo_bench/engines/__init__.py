"""Training engines, by name: `get(name)` -> an `Engine` that says what it supports and trains.

    result = engines.run(config, **options)   # what a notebook calls
    result = engines.start(request)           # what the train CLI, study cells and sweep trials call
                                              # (a runs.record.RunRequest)
    engine = engines.get(config.run.engine)
    problem = engine.check(config)      # one line naming the keys this engine cannot honour, or None
    result = engine.start(request)      # its training entry, imported only now (TRL is heavy)

`start` resumes a run on the engine its checkpoint was saved by, else trains on run.engine if that engine
can honour the config. `native` is the readable reference loop (native.py: CPU or one GPU, hf rollouts);
`trl` runs our algorithms inside TRL's GRPOTrainer (trl_engine.py, trl_trainer.py). Both call the same
engine-neutral step (vimpo_bench/rl). This module imports neither engine: each names its entry as
"module:function", so checking a config costs nothing and nothing here points up the house. `problem(config)`
is what every entry (train, study planning, sweeps) asks before a run is opened.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Engine:
    name: str
    summary: str
    entry: str
    """"module:function" of its `run(request: runs.record.RunRequest) -> runs.record.TrainResult`."""
    check: Callable[[object], str | None]
    """Why this engine cannot honour a config (one line naming the keys), or None: config time, no machine."""

    def start(self, request):
        module, function = self.entry.split(":")
        return getattr(importlib.import_module(module), function)(request)


ENGINES: dict[str, Engine] = {}


def register(engine: Engine) -> Engine:
    if engine.name in ENGINES:
        raise ValueError(f"engine name {engine.name!r} is taken")
    ENGINES[engine.name] = engine
    return engine


def names() -> list[str]:
    return list(ENGINES)


def get(name: str) -> Engine:
    if name not in ENGINES:
        raise ValueError(f"run.engine: {name!r} is not one of {', '.join(ENGINES)}")
    return ENGINES[name]


def problem(config) -> str | None:
    """The one line that refuses `config` on its engine (an unknown engine, or one it cannot honour), or None."""
    try:
        engine = get(config.run.engine)
    except ValueError as exc:
        return str(exc)
    return engine.check(config)


def run(config, **options):
    """Train with an MLflow run: `start(RunRequest(config, **options))` (see `runs.record.RunRequest` for the
    options: resume_run_id, tracking_uri, tags, parent_run_id, stop_after, progress, on_eval, run_started)."""
    from vimpo_bench.runs.record import RunRequest

    return start(RunRequest(config, **options))


def start(request):
    """Train as `request` asks: a new run on its engine, or `resume_run_id` continued from its last checkpoint.
    Returns the engine's `runs.record.TrainResult`."""
    # Here, not at the top: the schema pulls in torch and the run record MLflow; checking a config stays free.
    from vimpo_bench.config import ConfigError
    from vimpo_bench.runs.record import checkpoint_engine

    saved = request.resume_run_id and checkpoint_engine(Path(request.config.run.output_dir) / request.resume_run_id)
    if not saved:
        why = problem(request.config)
        if why:
            raise ConfigError(why)
    return get(saved or request.config.run.engine).start(request)


def native_config_problem(config) -> str | None:
    if config.rollout.backend == "vllm":
        return ("rollout.backend=vllm needs run.engine=trl (the native loop has no way to push updated weights into "
                "a vLLM engine; TRL's GRPOTrainer does)")
    return None


def trl_config_problem(config) -> str | None:
    if config.rollout.refill_rounds:
        return ("rollout.refill_rounds needs run.engine=native: TRL's GRPOTrainer generates each step's batch in "
                "one call and has no hook to draw more prompts")
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


register(Engine("native", "the readable reference loop: CPU or one GPU, transformers rollouts",
                "vimpo_bench.engines.native:run_native", native_config_problem))
register(Engine("trl", "our algorithms inside TRL's GRPOTrainer: accelerate, DeepSpeed/FSDP, vLLM rollouts",
                "vimpo_bench.engines.trl_engine:run", trl_config_problem))
