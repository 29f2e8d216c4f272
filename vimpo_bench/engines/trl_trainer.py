"""Our algorithms inside TRL's GRPOTrainer. TRL generates (transformers or vLLM colocate/server, with the
weight push after each optimizer step) and runs the optimizer under accelerate (DDP, DeepSpeed, FSDP);
everything a result depends on is ours, through the same functions as the native loop (engines/native.py):

    rollout     TRL's `_generate`, on the prompts the native loop would draw (`StepPromptSampler`)
    score       grader per process -> truncation rule -> noise over the whole step, seeded as `train.score`
    log-probs   pi_old and pi_ref at the sampling temperature, no gradient, eval mode (dropout is off in
                every forward, the update's too: zeroed at load, `models.disable_dropout`)
    advantages  `algo.advantages` once per step over whole groups, held fixed through the update
    update      `algo.loss` on microbatches of whole groups, shuffled per epoch as `train.ppo_update`
    log         `RLStepCallback` (trl_engine.py) at the end of each RL step
    checkpoint  `save_vb_checkpoint` in `checkpoints.py`'s layout; a resume goes through Trainer's own
                resume path (global step, data skip) with its load hooks reading that layout
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import torch
from accelerate.utils import gather, gather_object
from trl import GRPOTrainer
from trl.models.utils import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import add_fused_lm_head, pad

from vimpo_bench.algorithms import Batch
from vimpo_bench.algorithms.core import masked_mean
from vimpo_bench.rl.logprobs import position_ids_from_mask
from vimpo_bench.rl.loop import algorithm_at, group_orders, reward_metrics, rewards_of
from vimpo_bench.rl.reference import lr_factor
from vimpo_bench.rl.rewards import verifier_rewards
from vimpo_bench.rl.steps import eval_mode, prompt_special_tokens, step_seed
from vimpo_bench.rollout.base import Rollouts
from vimpo_bench.rollout.hf import seeded
from vimpo_bench.runs.checkpoints import load_weights, rng_state, save_checkpoint, set_rng_state
from vimpo_bench.runs.record import TrainingError


class StepPromptSampler(torch.utils.data.Sampler):
    """The prompts the native loop's `rl_step` draws at each step, laid out as TRL's RepeatSampler lays out a generation
    batch: each prompt `group_size` times in a row (a group), the step's block once per microbatch pass."""

    def __init__(self, pool_size: int, prompts: int, group_size: int, repeats: int, seed: int, steps: int):
        self.pool_size, self.prompts, self.group_size = pool_size, prompts, group_size
        self.repeats, self.seed, self.steps = repeats, seed, steps

    def __iter__(self):
        for step in range(self.steps):
            pick = torch.Generator().manual_seed(step_seed(self.seed, step, 0))
            chosen = torch.randperm(self.pool_size, generator=pick)[: self.prompts].tolist()
            for _ in range(self.repeats):
                for index in chosen:
                    yield from [index] * self.group_size

    def __len__(self) -> int:
        return self.steps * self.repeats * self.prompts * self.group_size


class VimpoGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose scoring, advantages and loss are vimpo-bench's (see the module docstring).

    `vb` carries the run: config, task, train_pool and reference (an unpatched copy of the policy); the
    algorithm of each RL step is `loop.algorithm_at`, as in the native loop."""

    def __init__(self, *, vb, **kwargs):
        self.vb = vb
        super().__init__(**kwargs)
        add_fused_lm_head(vb.reference, temperature=self.temperature, cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32)
        if self.is_deepspeed_enabled:
            self.vb_reference = prepare_deepspeed(vb.reference, self.accelerator)
        elif self.is_fsdp_enabled:
            self.vb_reference = prepare_fsdp(vb.reference, self.accelerator)
        else:
            self.vb_reference = self.accelerator.prepare_model(vb.reference, evaluation_mode=True)
        optim = vb.config.optim
        self.opt_steps_per_rl_step = optim.epochs * optim.minibatches
        self.step_stats: dict[str, list[float]] = defaultdict(list)
        self.vb_step: dict | None = None  # the latest step's batch and its scoring metrics (for the callback)
        self.vb_algo = None
        self.vb_resume: dict | None = None  # state.pt of the checkpoint a resumed run starts from
        self._pieces: list[dict] | None = None

    # -- data: the native loop's prompt draws ------------------------------------------------------
    def _get_train_sampler(self, dataset=None):
        c = self.vb.config
        return StepPromptSampler(len(self.train_dataset), c.rollout.prompts_per_step, c.rollout.group_size,
                                 self.num_iterations * self.args.steps_per_generation, c.run.seed, c.optim.steps)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The native loop's schedule (`reference.lr_factor`), not transformers' (whose warmup starts at 0)."""
        if self.lr_scheduler is None:
            optim = self.vb.config.optim
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer,
                lambda s: lr_factor(optim.lr_schedule, s, num_training_steps, optim.warmup_steps))
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _tokenize_prompts(self, prompts: list):
        """Rendered prompts tokenized as the native loop's generator does (`steps.prompt_special_tokens`):
        TRL's default adds BOS, a second one after a chat template's own."""
        if not isinstance(prompts[0], str):
            return super()._tokenize_prompts(prompts)
        add = prompt_special_tokens(self.vb.config, self.processing_class)
        return self.processing_class(text=prompts, add_special_tokens=add)["input_ids"], None, {}

    def rl_step(self) -> int:
        """0-based RL step in progress (one generation = one RL step)."""
        return self.state.global_step // self.opt_steps_per_rl_step

    # -- log-probs ----------------------------------------------------------------------------------
    def token_logps(self, model, inputs: dict, with_entropy: bool = False, chunk: int | None = None):
        """log pi(a_t | s_t) [B, T] (and entropy) at the sampling temperature, through TRL's fused LM head
        (no [B, T, V] logits), with the positions `generate` used (`logprobs.position_ids_from_mask`), 0 on
        padding. The caller sets no_grad and the mode."""
        prompt_mask, completion_mask = inputs["prompt_mask"], inputs["completion_mask"]
        T = inputs["completion_ids"].shape[1]
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([prompt_mask, completion_mask], dim=1).long()
        step = chunk or ids.shape[0]
        logps, entropies = [], []
        for start in range(0, ids.shape[0], step):
            rows = slice(start, start + step)
            labels = ids[rows].masked_fill(attention[rows] == 0, -100)
            labels[:, :-T] = -100
            with self.accelerator.autocast():
                out = model(input_ids=ids[rows], attention_mask=attention[rows],
                            position_ids=position_ids_from_mask(attention[rows]), labels=labels, fused_lm_head=True)
            logps.append(out.log_probs[:, -T:].float())
            if with_entropy:
                entropies.append(out.entropy[:, -T:].float())
        keep = completion_mask.bool()
        logp = torch.where(keep, torch.cat(logps), 0.0)
        entropy = torch.where(keep, torch.cat(entropies), 0.0) if with_entropy else None
        return logp, entropy

    # -- one RL step's batch: rollout, score, log-probs, advantages ---------------------------------
    def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
        config, device = self.vb.config, self.accelerator.device
        step, G = self.rl_step(), self.num_generations
        timer: dict[str, float] = {}
        started = time.perf_counter()

        # -- rollout: TRL generates (and pushes the weights into vLLM first) ------------------------
        # Seeded by run seed and step, as the native loop's, in a fork of the RNG: a resumed run draws the
        # same samples (transformers' sampler; vLLM keeps its own seed and state, see docs/scale.md).
        with seeded(step_seed(config.run.seed, step, 1), device):
            prompt_ids, completion_ids, _, texts, _, _, _, _ = self._generate([x["prompt"] for x in inputs])
        rows = len(completion_ids)
        problem_index = [x["problem"] for x in inputs]
        if any(problem_index[i] != problem_index[i - i % G] for i in range(rows)) or rows % G:
            raise TrainingError("a group of responses was split across processes or microbatches; "
                                "rollout.prompts_per_step must be a multiple of processes x minibatches x grad_accum")
        batch = {
            "prompt_ids": pad([torch.tensor(p) for p in prompt_ids], self._tokenizer.pad_token_id, "left").to(device),
            "prompt_mask": pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], 0, "left").to(device),
            "completion_ids": pad([torch.tensor(c) for c in completion_ids], self._tokenizer.pad_token_id).to(device),
            "completion_mask": pad([torch.ones(len(c), dtype=torch.long) for c in completion_ids], 0).to(device),
        }
        truncated = torch.tensor([not c or c[-1] not in self.eos_token_ids for c in completion_ids], device=device)
        timer["rollout"] = time.perf_counter() - started

        # -- scoring: grader here, then the truncation rule and the noise over the whole step -------
        # The same three functions as train.score, in the same order, with the noise drawn for the whole
        # step's rows in prompt order, so the draws do not depend on the number of processes.
        t = time.perf_counter()
        graded = verifier_rewards(self.vb.task, texts, [self.vb.train_pool[i] for i in problem_index]).to(device)
        lengths = batch["completion_mask"].sum(1)  # EOS counted, as the native loop's response_mask.sum(1)
        scored = rewards_of(config, gather(graded).cpu(), gather(truncated).cpu(), gather(lengths).cpu(), step)
        clean, rewards, include = scored.clean, scored.rewards, scored.include
        tokens = gather(torch.stack([batch["prompt_mask"].sum(), batch["completion_mask"].sum()])).sum().item()
        mine = slice(self.accelerator.process_index * rows, (self.accelerator.process_index + 1) * rows)
        timer["scoring"] = time.perf_counter() - t

        # -- log-probs of the sampled tokens under pi_old and pi_ref, no gradient, dropout off ------
        t = time.perf_counter()
        chunk = config.optim.logprob_microbatch
        with torch.no_grad(), eval_mode(self.model):
            old_logp, entropy = self.token_logps(self.model, batch, with_entropy=True, chunk=chunk)
            ref_logp, _ = self.token_logps(self.vb_reference, batch, chunk=chunk)
        timer["logprob"] = time.perf_counter() - t

        # -- advantages: once, over this process's whole groups, held fixed in the update ------------
        algo = self.vb_algo = algorithm_at(config, step)
        mask = batch["completion_mask"].float()
        full = Batch(logp=old_logp, old_logp=old_logp, ref_logp=ref_logp, mask=mask, rewards=rewards[mine].to(device),
                     group_ids=torch.arange(rows, device=device) // G,
                     include=None if include is None else include[mine].to(device))
        full = full.with_advantages(algo.advantages(full))

        self.vb_step = {
            "full": full, "clean": clean[mine], "algo": algo, "timer": timer, "tokens": tokens,
            "rollouts": Rollouts(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                 batch["completion_mask"], truncated, full.group_ids, texts,
                                 [x["prompt"] for x in inputs]),
            "metrics": reward_metrics(scored),
            "local": {"policy/entropy": masked_mean(entropy, mask).item(), "rollout/response_len": mask.sum(1).mean().item()},
        }
        return {**batch, "old_logp": old_logp, "ref_logp": ref_logp, "rewards": full.rewards,
                "group_ids": full.group_ids, "include": full.include, "advantages": full.advantages}

    def _prepare_inputs(self, generation_batch):
        """Generate once per RL step; hand out microbatches of whole groups (VIMPO's root value needs them)."""
        passes = self.args.steps_per_generation * self.num_iterations
        if self._step % passes == 0 or self._pieces is None:
            self._pieces = self._whole_group_pieces(self._generate_and_score_completions(generation_batch))
        return self._pieces[self._step % passes]

    def _whole_group_pieces(self, scored: dict) -> list[dict]:
        """epochs x (minibatches x grad_accum) pieces; group order shuffled per epoch as `train.ppo_update`."""
        group_ids = scored["group_ids"].cpu()
        pieces = []
        for order in group_orders(self.vb.config, self.rl_step(), torch.unique(group_ids)):
            for part in torch.tensor_split(order, self.args.steps_per_generation):
                rows = torch.isin(group_ids, part).nonzero().squeeze(1)
                pieces.append({k: None if v is None else v[rows.to(v.device)] for k, v in scored.items()})
        return pieces

    # -- update ---------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Train mode (Trainer sets it), dropout zeroed at load: the first minibatch's logp equals old_logp.
        logp, _ = self.token_logps(model, inputs)
        micro = Batch(logp=logp, old_logp=inputs["old_logp"], ref_logp=inputs["ref_logp"],
                      mask=inputs["completion_mask"].float(), rewards=inputs["rewards"], group_ids=inputs["group_ids"],
                      include=inputs["include"], advantages=inputs["advantages"])
        loss, stats = self.vb_algo.loss(micro)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at step {self.rl_step() + 1}; lower optim.lr or check the model")
        for key, value in stats.items():
            self.step_stats[key].append(value)
        # GRPOTrainer declares its loss already scaled for gradient accumulation; ours is scaled here.
        return loss / self.current_gradient_accumulation_steps

    def _clip_grad_norm(self, model):
        norm = super()._clip_grad_norm(model)
        value = float(norm)
        if not math.isfinite(value):
            raise TrainingError(f"gradient norm is {value} at step {self.rl_step() + 1}")
        self.step_stats["policy/grad_norm"].append(value)
        return norm

    # -- checkpoints ------------------------------------------------------------------------------------
    def save_vb_checkpoint(self, path: Path, step: int) -> None:
        """Save the run after RL step `step` in `checkpoints.py`'s layout; called on every process (weights
        under DeepSpeed/FSDP and every process's RNG state are gathered), written by the main one.

        state.pt adds to the native engine's: every process's RNG states, the last evaluation, the logged
        history; trainer_state.json is transformers' TrainerState, which Trainer's resume reads. Under
        DeepSpeed/FSDP the optimizer state is sharded and not gathered: the folder holds the policy to
        evaluate, not a state to resume (no COMPLETE)."""
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled
        weights = self.accelerator.get_state_dict(self.model) if sharded else None
        rng = gather_object([rng_state()])
        if self.accelerator.is_main_process:
            vb = self.vb
            save_checkpoint(path, vb.config, self.accelerator.unwrap_model(self.model), vb.reference,
                            None if sharded else self.optimizer, self.lr_scheduler, step, vb.initial, vb.tokenizer,
                            extra={"rng": rng, "last_eval": vb.last_eval, "history": vb.history},
                            files={"trainer_state.json": trainer_state_json(self.state)}, policy_weights=weights)
        self.accelerator.wait_for_everyone()

    # Trainer.train(resume_from_checkpoint=<our checkpoint>) calls these three at the points where its own
    # format is loaded: the weights before the model is wrapped, the optimizer and scheduler once they are
    # built, the RNG states once the data already trained on is skipped. Loading at those points (rather
    # than restoring after train() starts) keeps the resumed run bit-identical to an uninterrupted one.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        load_weights(Path(resume_from_checkpoint), self.accelerator.unwrap_model(self.model), self.vb.reference)

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is None:
            return
        self.optimizer.load_state_dict(self.vb_resume["optimizer"])
        self.lr_scheduler.load_state_dict(self.vb_resume["scheduler"])

    def _load_rng_state(self, checkpoint):
        if checkpoint is not None:
            set_rng_state(self.vb_resume["rng"][self.accelerator.process_index])


def trainer_state_json(state) -> str:
    """transformers' TrainerState as its `save_to_json` writes it."""
    return json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True) + "\n"
