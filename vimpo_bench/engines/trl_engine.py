"""The `trl` training engine: `run(request)`, the entry `engines.start` calls, with TRL's GRPOTrainer driving
the loop (`trl_trainer.VimpoGRPOTrainer`) and `RLStepCallback` doing, at the end of each RL step, what the native
loop does after its update: move pi_ref, evaluate on the validation split, log, report progress.

One RL step = one generation = epochs x minibatches optimizer steps, each of grad_accum microbatches of
whole groups (the native loop's layout). Launch with `accelerate launch` for several processes; only the
main process opens the MLflow run and logs. Checkpoints are the native engine's (`checkpoints.py`), saved
by the callback; a resumed run continues through Trainer's resume path. See docs/scale.md.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from vimpo_bench import faults
from vimpo_bench import tasks as task_registry
from vimpo_bench.config import Config
from vimpo_bench.engines import trl_preflight
from vimpo_bench.models.lora import frozen_reference, is_lora
from vimpo_bench.rl.loop import seed_process
from vimpo_bench.rl.reference import is_ref_update_step
from vimpo_bench.rl.steps import (
    evaluate_heldout,
    load_starting_policy,
    log_advantage_profile,
    log_completions,
    make_generator,
    move_reference,
    render_prompt,
)
from vimpo_bench.runs.checkpoints import checkpoint_dir, checkpoint_due, load_state, saved_config
from vimpo_bench.runs.provenance import run_identity
from vimpo_bench.runs.record import (
    RunRequest,
    TrainingError,
    TrainResult,
    open_run,
    record_run,
    train_to_status,
)
from vimpo_bench.runs.tracking import NullTracker, Tracker


def run(request: RunRequest) -> TrainResult:
    """`engines.start` for run.engine=trl (same request and result): a new run, or `resume_run_id` continued
    from its last checkpoint with the config saved there."""
    config = request.config
    trl_preflight(config)
    args = trainer_args(config)  # sets up the process group under accelerate/torchrun
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    tracker: Tracker = NullTracker()
    owner = None
    try:
        # The main process opens (or reopens) the run; the others learn its id and checkpoint, or its error.
        shared, failure = [None, None, None], None
        if state.is_main_process:
            try:
                tracker, owner, checkpoint = open_run(config, request.resume_run_id, request.tags,
                                                      request.parent_run_id, request.tracking_uri)
                shared = [tracker.run_id, checkpoint and str(checkpoint), None]
            except Exception as exc:
                shared, failure = [None, None, str(exc)], exc
        if state.num_processes > 1:
            shared = broadcast_object_list(shared)
        if failure is not None:
            raise failure
        if shared[2] is not None:
            raise TrainingError(f"the main process failed: {shared[2]}")
        run_id, checkpoint = shared[0], shared[1] and Path(shared[1])
        if checkpoint is not None:
            config = saved_config(checkpoint)
            args = trainer_args(config)
        if request.run_started and state.is_main_process:
            request.run_started(run_id)
        return train_to_status(tracker, config.optim.steps, lambda: train(
            config, args, tracker, run_id, progress=request.progress, stop_after=request.stop_after,
            tags=request.tags, on_eval=request.on_eval, resume_from=checkpoint))
    finally:
        if owner is not None:
            owner.release()
        if state.num_processes > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # else gloo aborts at exit now and then


def trainer_args(config: Config):
    """GRPOConfig for `config`: one RL step = one generation batch of P x G responses."""
    from trl import GRPOConfig

    o, r = config.optim, config.rollout
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    pieces = processes * o.minibatches * o.grad_accum
    if r.prompts_per_step % pieces:
        raise TrainingError(f"rollout.prompts_per_step ({r.prompts_per_step}) must be a multiple of processes x "
                            f"optim.minibatches x optim.grad_accum ({pieces}) so that every microbatch holds whole groups")
    cuda = torch.cuda.is_available()
    return GRPOConfig(
        output_dir=str(Path(config.run.output_dir) / "trl"),
        seed=config.run.seed,
        use_cpu=not cuda,
        bf16=config.model.dtype == "bfloat16" and cuda,
        fp16=False,
        gradient_checkpointing=cuda and os.environ.get("VIMPO_BENCH_GRADIENT_CHECKPOINTING", "1") == "1",
        per_device_train_batch_size=r.prompts_per_step * r.group_size // pieces,
        gradient_accumulation_steps=o.grad_accum,
        steps_per_generation=o.minibatches * o.grad_accum,
        num_iterations=o.epochs,
        num_generations=r.group_size,
        max_completion_length=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=0,
        max_steps=o.steps * o.epochs * o.minibatches,
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        max_grad_norm=o.max_grad_norm,
        beta=0.0,  # pi_ref is ours (hard/ema schedules); TRL builds none
        # Dropout off in every RL forward (`models.disable_dropout`, already applied to the starting policy;
        # TRL's own pass zeroes nn.Dropout modules only).
        disable_dropout=True,
        shuffle_dataset=False,
        remove_unused_columns=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_vllm=r.backend == "vllm",
        vllm_mode=os.environ.get("VIMPO_BENCH_VLLM_MODE", "colocate"),
        vllm_server_base_url=os.environ.get("VIMPO_BENCH_VLLM_SERVER_URL"),
        vllm_gpu_memory_utilization=float(os.environ.get("VIMPO_BENCH_VLLM_GPU_MEMORY", "0.3")),
        vllm_importance_sampling_correction=False,  # our losses treat the samples as pi_old's (docs/scale.md)
    )


@dataclass
class EngineState:
    config: Config
    task: object
    train_pool: list
    heldout: list
    reference: torch.nn.Module
    tokenizer: object
    tracker: Tracker
    progress: object = None
    on_eval: object = None
    stop_after: int | None = None
    initial: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    checkpoint: Path | None = None  # where the run's checkpoint is saved (None: no saves, as in the parity test)
    start_step: int = 0  # RL steps done before this process started (a resumed run)
    logged_through: int = 0  # the last step the run's record already holds (a killed process logged it)

    def prompt_text(self, problem) -> str:
        return render_prompt(self.config, self.task, problem, self.tokenizer)


def train(config: Config, args, tracker: Tracker, run_id: str | None, progress=None, stop_after=None, tags=None,
          on_eval=None, resume_from: Path | None = None) -> TrainResult:
    """The RL loop on TRL's trainer; `resume_from` (a checkpoint) continues a run where it was saved.
    `stop_after` ends the call after that many more steps (checkpointed), as a kill would."""
    from accelerate import PartialState

    started = time.perf_counter()
    seed_process(config)
    state = PartialState()

    # -- setup: task, policy, the trainer ---------------------------------------------------------
    task = task_registry.get(config.task.name, **config.task.options)
    with state.main_process_first():  # the built-in model's warm start is cached once
        policy, tokenizer = load_starting_policy(config, progress)  # dropout zeroed (`models.disable_dropout`)
    # The machine and the starting weights' checksum, for the record and the summary (main process only:
    # hashing the weights reads all of them).
    identity = run_identity(policy) if state.is_main_process else {}
    if resume_from is None:
        record_run(tracker, config, task, {**(tags or {}), "vimpo.engine": "trl"}, identity)
    trainer, vb = make_trainer(config, args, policy, tokenizer, task, tracker, progress, on_eval)
    final_dir = checkpoint_dir(config, run_id)
    vb.checkpoint = final_dir
    if resume_from is not None:
        resume_state(trainer, vb, resume_from, tracker)
    vb.stop_after = None if stop_after is None else vb.start_step + stop_after

    # -- the loop: rollout -> score -> log-probs -> advantages -> update -> log, driven by TRL ------
    # A resumed run goes through Trainer's own resume (global step, data skipped, RNG restored after the
    # skip), reading our checkpoint layout through VimpoGRPOTrainer's load hooks (see there).
    trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    end_step = trainer.state.global_step // trainer.opt_steps_per_rl_step

    if state.is_main_process and end_step == config.optim.steps and config.run.log_checkpoint and tracker.run_id:
        tracker.log_artifact(final_dir / "policy", "checkpoint")
    state.wait_for_everyone()
    return TrainResult(tracker.run_id, end_step, vb.initial, vb.last_eval, time.perf_counter() - started,
                       str(final_dir), vb.history, identity)


def resume_state(trainer, vb: EngineState, checkpoint: Path, tracker: Tracker) -> None:
    """The loop state of `checkpoint` into `vb` (the trainer restores the rest when it starts, from the same
    state.pt); steps the record already holds are recomputed, not logged a second time."""
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        raise TrainingError("resuming a run.engine=trl run under DeepSpeed or FSDP is not built yet; resume it "
                            "with plain DDP (a launch without a DeepSpeed/FSDP config)")
    saved = load_state(checkpoint)
    processes = trainer.accelerator.num_processes
    if len(saved["rng"]) != processes:
        raise TrainingError(f"{checkpoint} was saved by {len(saved['rng'])} processes; resume it on as many "
                            f"(this launch has {processes})")
    trainer.vb_resume = saved
    vb.start_step, vb.initial, vb.last_eval = int(saved["step"]), saved["initial"], saved["last_eval"]
    vb.history = list(saved["history"])
    # A killed process may have logged steps past its last checkpoint. This one recomputes the same values
    # (draws are seeded by run seed and step; the checkpoint restores the rest), so they are not logged twice.
    vb.logged_through = tracker.last_step("perf/step_s") or 0


def make_trainer(config: Config, args, policy, tokenizer, task, tracker: Tracker | None = None, progress=None,
                 on_eval=None):
    """(VimpoGRPOTrainer, EngineState) for `policy`; pi_ref starts as a copy of it (a LoRA policy's: its base,
    adapters off, over the same tensors; TRL trains the `PeftModel` as it is, see vimpo_bench/models/lora.py)."""
    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback

    from vimpo_bench.engines.trl_trainer import VimpoGRPOTrainer

    if is_lora(policy) and sharded(args):
        raise TrainingError(LORA_SHARDED)  # before the trainer prepares a pi_ref that shares the policy's tensors
    tokenizer.padding_side = "left"
    policy.train()
    vb = EngineState(config, task, task.problems("train"), task.problems("validation", limit=config.eval.problems),
                     frozen_reference(policy), tokenizer, tracker or NullTracker(), progress, on_eval)
    dataset = Dataset.from_dict({"prompt": [vb.prompt_text(p) for p in vb.train_pool],
                                 "problem": list(range(len(vb.train_pool)))})
    callback = RLStepCallback(vb)
    trainer = VimpoGRPOTrainer(vb=vb, model=policy, reward_funcs=[_scored_by_the_engine], args=args,
                               train_dataset=dataset, processing_class=tokenizer, callbacks=[callback])
    for quiet in (PrinterCallback, ProgressCallback):  # library code never prints (house rule 4)
        trainer.remove_callback(quiet)
    callback.trainer = trainer
    if is_lora(policy) and (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        raise TrainingError(LORA_SHARDED)
    if config.ref.schedule != "frozen" and (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        raise TrainingError(f"ref.schedule={config.ref.schedule} under DeepSpeed or FSDP is not built yet for "
                            "run.engine=trl; use ref.schedule=frozen or plain DDP")
    return trainer, vb


LORA_SHARDED = ("model.lora under DeepSpeed or FSDP is not built yet for run.engine=trl (pi_ref shares the "
                "policy's frozen base tensors, which each would shard apart); use plain DDP or full fine-tuning")


def sharded(args) -> bool:
    """Whether Trainer will shard the model (DeepSpeed or FSDP), read from its arguments and accelerate's
    launch environment before the trainer exists."""
    fsdp_env = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")
    return args.deepspeed_plugin is not None or bool(args.fsdp_plugin_args) or fsdp_env


def _scored_by_the_engine(prompts, completions, **kwargs):
    """Placeholder reward function: TRL requires one, but VimpoGRPOTrainer scores with the task's grader."""
    raise TrainingError("rewards come from the task's grader inside VimpoGRPOTrainer")


class RLStepCallback(TrainerCallback):
    """What the native loop does after each update: move pi_ref, evaluate, log (main process), progress."""

    def __init__(self, vb: EngineState):
        self.vb = vb
        self.trainer = None
        self.step_started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        if self.vb.start_step == 0:  # a resumed run has its step-0 evaluation in the checkpoint
            self.vb.initial = self.vb.last_eval = self.evaluate(0)
            self.vb.tracker.log_metrics(self.vb.initial, step=0)
        self.step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        trainer, vb, config = self.trainer, self.vb, self.vb.config
        if state.global_step % trainer.opt_steps_per_rl_step:
            return control
        done = state.global_step // trainer.opt_steps_per_rl_step
        metrics = self.step_metrics(done)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        if not all(torch.isfinite(p).all() for p in policy.parameters()):
            raise TrainingError(f"the policy's parameters became non-finite at step {done}; lower optim.lr")
        if is_ref_update_step(config.ref.schedule, config.ref.every, done):
            reference = trainer.accelerator.unwrap_model(trainer.vb_reference)
            metrics.update(move_reference(config, policy, reference, trainer.vb_step))
        else:
            metrics["vimpo/ref_update"] = 0.0
        if (config.eval.every and done % config.eval.every == 0) or done == config.optim.steps:
            vb.last_eval = self.evaluate(done)
            metrics.update(vb.last_eval)
            log_advantage_profile(vb.tracker, trainer.vb_step, done)
            log_completions(vb.tracker, trainer.vb_step, done, vb.config.eval.completions_logged)
        if done > vb.logged_through:
            vb.tracker.log_metrics(metrics, step=done)
        vb.history.append({"step": done, **metrics})
        stopping = vb.stop_after is not None and done >= vb.stop_after
        if vb.checkpoint is not None and (checkpoint_due(config.run.checkpoint_every, done, config.optim.steps)
                                          or stopping):
            trainer.save_vb_checkpoint(vb.checkpoint, done)  # every process: the save is collective
        if vb.progress and state.is_world_process_zero:
            vb.progress("train", done, config.optim.steps, metrics)
        if vb.on_eval and "val/sampled_accuracy" in metrics:
            vb.on_eval(done, {k: v for k, v in metrics.items() if k.startswith("val/")})
        if stopping:
            control.should_training_stop = True
        faults.point("step")
        self.step_started = time.perf_counter()
        return control

    def step_metrics(self, done: int) -> dict:
        """The step's metrics under docs/metrics.md's names; per-process values averaged over processes."""
        trainer, info = self.trainer, self.trainer.vb_step
        local = {**{k: sum(v) / len(v) for k, v in trainer.step_stats.items()}, **info["local"]}
        trainer.step_stats.clear()
        keys = sorted(local)
        values = trainer.accelerator.reduce(torch.tensor([local[k] for k in keys], device=trainer.accelerator.device),
                                            reduction="mean")
        step_s = time.perf_counter() - self.step_started
        timer = info["timer"]
        metrics = {**info["metrics"], **dict(zip(keys, values.tolist(), strict=True)),
                   "vimpo/beta": info["algo"].beta, "policy/lr": trainer.lr_scheduler.get_last_lr()[0],
                   **{f"perf/{k}_s": v for k, v in timer.items()},
                   "perf/update_s": max(step_s - sum(timer.values()), 0.0), "perf/step_s": step_s,
                   "perf/tokens_per_s": info["tokens"] / step_s}
        if self.vb.config.algo_name == "vimpo":
            metrics["vimpo/value_coef"], metrics["vimpo/value_scale"] = info["algo"].c_v, info["algo"].effective_value_scale
        return metrics

    def evaluate(self, step: int) -> dict:
        """Validation accuracy with transformers' generate over the trainer's model, on the main process."""
        from trl.models.utils import unwrap_model_for_generation

        trainer, vb = self.trainer, self.vb
        out = {}
        hf = dataclasses.replace(vb.config, rollout=dataclasses.replace(vb.config.rollout, backend="hf"))
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model, torch.no_grad():
            if trainer.accelerator.is_main_process:
                generator = make_generator(hf, model, vb.tokenizer)
                out = evaluate_heldout(vb.config, generator, vb.task, vb.heldout, vb.prompt_text, step, vb.tracker)
        trainer.accelerator.wait_for_everyone()
        return out
